import assert from 'node:assert/strict';
import { test } from 'node:test';

import { UsageHistory } from '../src/history';
import type { UsageReport } from '../src/types';

function at(time: number, used: Record<string, number>): UsageReport {
  return {
    version: 1, time, status: 'ok', message: '', slice: null, kernels: [],
    devices: Object.entries(used).map(([uuid, bytes]) => ({
      uuid, name: null, memory_used_bytes: bytes, memory_limit_bytes: null,
      compute_used_ratio: bytes / 1000, compute_cap_ratio: null
    }))
  };
}

test('keeps each device\'s samples in order', () => {
  const history = new UsageHistory(60);
  history.add(at(10, { a: 100, b: 5 }));
  history.add(at(11, { a: 200, b: 6 }));
  assert.deepEqual(history.series('a'), { times: [10, 11], memory: [100, 200], compute: [0.1, 0.2] });
  assert.deepEqual(history.series('b').memory, [5, 6]);
  assert.deepEqual(history.devices(), ['a', 'b']);
});

test('a report seen twice, or an older one, is not added again', () => {
  const history = new UsageHistory(60);
  history.add(at(10, { a: 100 }));
  history.add(at(10, { a: 100 }));
  history.add(at(9, { a: 50 }));
  assert.deepEqual(history.series('a').times, [10]);
});

test('drops samples older than the window, and devices with none left', () => {
  const history = new UsageHistory(5);
  history.add(at(0, { a: 1, gone: 1 }));
  history.add(at(3, { a: 2 }));
  history.add(at(8, { a: 3 }));
  assert.deepEqual(history.series('a').times, [3, 8]);
  assert.deepEqual(history.devices(), ['a']);
  assert.deepEqual(history.series('gone'), { times: [], memory: [], compute: [] });
  // A shorter window applies from the next report.
  history.windowSeconds = 1;
  history.add(at(9, { a: 4 }));
  assert.deepEqual(history.series('a').times, [8, 9]);
});
