import assert from 'node:assert/strict';
import { test } from 'node:test';

import { idleSummary, unseenNotices } from '../src/notices';
import type { IdleNotice, UsageReport } from '../src/types';

function notice(id: string, kind: IdleNotice['kind'], time: number): IdleNotice {
  return {
    id, kind, time, kernel_id: 'k1', path: 'a.ipynb', memory_bytes: 1 << 30, freed_bytes: kind === 'shutdown' ? 1 << 30 : null,
    deadline: kind === 'warning' ? time + 300 : null, source: 'server', message: `${kind} ${id}`
  };
}

function report(notices: IdleNotice[]): UsageReport {
  return {
    version: 1, time: 0, status: 'ok', message: '', slice: null, devices: [], kernels: [],
    idle: { policy: { action: 'shutdown', idle_after_seconds: 60, min_memory_bytes: 0, grace_seconds: 300 },
      memory_bytes: 0, devices: {}, notices }
  };
}

test('each notice is shown once, oldest first', () => {
  const seen = new Set<string>();
  const first = unseenNotices(report([notice('b', 'shutdown', 20), notice('a', 'warning', 10)]), seen);
  assert.deepEqual(first.map(d => d.notice.id), ['a', 'b']);
  assert.deepEqual(unseenNotices(report([notice('a', 'warning', 10), notice('b', 'shutdown', 20)]), seen), []);
  assert.deepEqual(unseenNotices(report([notice('c', 'kept', 30)]), seen).map(d => d.notice.id), ['c']);
});

test('a warning stays; the outcome replaces it', () => {
  const [warning, done, kept] = unseenNotices(
    report([notice('a', 'warning', 1), notice('b', 'shutdown', 2), notice('c', 'kept', 3)]), new Set());
  assert.equal(warning.level, 'warning');
  assert.equal(warning.sticky, true);
  assert.equal(warning.replacesWarning, false);
  assert.equal(done.level, 'success');
  assert.equal(done.sticky, true);
  assert.equal(done.replacesWarning, true);
  assert.equal(kept.level, 'info');
  assert.equal(kept.sticky, false);
  const [failed] = unseenNotices(report([notice('d', 'failed', 4)]), new Set());
  assert.deepEqual([failed.level, failed.sticky, failed.replacesWarning], ['warning', true, true]);
});

test('only a shutdown ends the kernel (JupyterLab looks up its running sessions again)', () => {
  const shown = unseenNotices(report([notice('a', 'warning', 1), notice('b', 'shutdown', 2), notice('c', 'kept', 3),
    notice('d', 'failed', 4), notice('e', 'idle', 5)]), new Set());
  assert.deepEqual(shown.map(d => [d.notice.kind, d.endsKernel]),
    [['warning', false], ['shutdown', true], ['kept', false], ['failed', false], ['idle', false]]);
});

test('no report, or a server without the policy, shows nothing', () => {
  assert.deepEqual(unseenNotices(null, new Set()), []);
  const old: UsageReport = { ...report([]), idle: undefined };
  assert.deepEqual(unseenNotices(old, new Set()), []);
});

test('the idle line of the panel follows the policy', () => {
  const bytes = (n: number): string => `${n / (1 << 20)} MiB`;
  const duration = (s: number): string => `${s} s`;
  const r = report([]);
  assert.equal(idleSummary(r, bytes, duration), 'No kernel has been idle for 60 s or more; those holding 0 MiB or more are shut down 300 s after a warning.');
  r.idle!.memory_bytes = 216 << 20;
  r.idle!.policy = { ...r.idle!.policy, action: 'warn', min_memory_bytes: 1 << 30 };
  assert.equal(idleSummary(r, bytes, duration), '216 MiB held by kernels idle for 60 s or more; you are warned about those holding 1024 MiB or more.');
  r.idle!.policy.action = 'off';
  assert.equal(idleSummary(r, bytes, duration), '216 MiB held by kernels idle for 60 s or more.');
  assert.equal(idleSummary(null, bytes, duration), null);
});
