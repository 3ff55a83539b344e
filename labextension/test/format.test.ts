import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  clockLabel,
  deviceSummary,
  formatBytes,
  formatComputePair,
  formatDuration,
  formatMemoryPair,
  formatPercent,
  kernelLabel,
  kernelTotals,
  nearLimit,
  statusSummary
} from '../src/format';
import type { DeviceUsage, KernelUsage, UsageReport } from '../src/types';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

function device(used: number, limit: number | null, compute = 0.27, cap: number | null = 0.3): DeviceUsage {
  return {
    uuid: 'GPU-face0000-1020-3040-5060-708090a0b0c0', name: 'Fake GPU',
    memory_used_bytes: used, memory_limit_bytes: limit, compute_used_ratio: compute, compute_cap_ratio: cap
  };
}

function report(devices: DeviceUsage[], status: UsageReport['status'] = 'ok', message = ''): UsageReport {
  return {
    version: 1, time: 1000, status, message, devices, kernels: [],
    slice: { region: '/tmp/r', policy: 'default', limits: [{ index: 0, memory_limit_bytes: 8 * GiB, compute_cap_ratio: 0.3 }] }
  };
}

test('the status bar writes used / limit and compute / cap', () => {
  const summary = statusSummary(report([device(3.1 * GiB, 8 * GiB)]));
  assert.equal(summary.text, 'GPU 3.1 / 8 GiB · 27% / 30%');
  assert.equal(summary.warning, false);
  assert.match(summary.title, /Fake GPU GPU-face0000/);
});

test('several devices are written one after the other', () => {
  const summary = statusSummary(report([device(GiB, 8 * GiB), device(512 * MiB, 8 * GiB, 0.05, null)]));
  assert.equal(summary.text, 'GPU0 1 / 8 GiB · 27% / 30% | GPU1 0.5 / 8 GiB · 5%');
});

test('the warning colour starts at 90% of the VRAM limit', () => {
  assert.equal(statusSummary(report([device(0.89 * 8 * GiB, 8 * GiB)])).warning, false);
  const near = statusSummary(report([device(0.9 * 8 * GiB, 8 * GiB)]));
  assert.equal(near.warning, true);
  assert.match(near.title, /Near the VRAM limit/);
  // On any device, and with another threshold.
  assert.equal(statusSummary(report([device(0, 8 * GiB), device(7.5 * GiB, 8 * GiB)])).warning, true);
  assert.equal(statusSummary(report([device(6 * GiB, 8 * GiB)]), null, 0.75).warning, true);
  // No limit: never near it.
  assert.equal(nearLimit(device(100 * GiB, null)), false);
});

test('no slice, no usage yet, an unreadable region and a failed request each say so', () => {
  assert.equal(statusSummary(report([], 'no_slice', 'no GPU slice for this server')).text, 'no GPU slice');
  const idle = statusSummary(report([], 'no_usage_yet', 'no GPU memory used yet'));
  assert.equal(idle.text, 'GPU 0 / 8 GiB · 0% / 30%');
  const broken = statusSummary(report([], 'region_error', 'the shared region /tmp/r is corrupted'));
  assert.equal(broken.text, 'GPU: slice unreadable');
  assert.equal(broken.title, 'the shared region /tmp/r is corrupted');
  assert.equal(broken.warning, true);
  const failed = statusSummary(null, '404 Not Found');
  assert.equal(failed.text, 'GPU ?');
  assert.match(failed.title, /404 Not Found/);
});

test('sizes are written in the larger figure\'s unit with at most one decimal', () => {
  assert.equal(formatMemoryPair(532 * MiB, GiB), '0.5 / 1 GiB');
  assert.equal(formatMemoryPair(200 * MiB, 256 * MiB), '200 / 256 MiB');
  assert.equal(formatMemoryPair(3 * GiB, null), '3 GiB');
  assert.equal(formatMemoryPair(9 * GiB, 8 * GiB), '9 / 8 GiB'); // over a lowered limit
  assert.equal(formatBytes(0), '0 B');
  assert.equal(formatBytes(1536 * MiB), '1.5 GiB');
  assert.equal(formatBytes(64 * MiB), '64 MiB');
  assert.equal(deviceSummary(device(GiB + 0.04 * GiB, 2 * GiB, 0, null)), '1 / 2 GiB · 0%');
});

test('percents and durations', () => {
  assert.equal(formatPercent(0.274), '27%');
  assert.equal(formatPercent(0.001), '<1%');
  assert.equal(formatPercent(0), '0%');
  assert.equal(formatComputePair(0.5, 0.5), '50% / 50%');
  assert.equal(formatDuration(null), '—');
  assert.equal(formatDuration(42.7), '42 s');
  assert.equal(formatDuration(185), '3 min');
  assert.equal(formatDuration(2 * 3600 + 5 * 60), '2 h 5 min');
});

test('a kernel is named by its notebook, else its kernel id', () => {
  const kernel: KernelUsage = {
    kernel_id: '3f2a1b9c-5d6e-4f70-8a9b-0c1d2e3f4a5b', identity: '3f2a1b9c-5d6e-4f70-8a9b-0c1d2e3f4a5b', pid: 42,
    kernel_name: 'gpu-4g', path: 'work/train.ipynb', session_type: 'notebook', execution_state: 'idle',
    idle_seconds: 3, gpu_idle_seconds: null, launches: 0,
    devices: [
      { uuid: 'a', memory_used_bytes: 100, memory_limit_bytes: null, driver_memory_used_bytes: 104, compute_used_ratio: 0.1, compute_cap_ratio: null, launches: 0 },
      { uuid: 'b', memory_used_bytes: 50, memory_limit_bytes: null, driver_memory_used_bytes: 52, compute_used_ratio: 0.2, compute_cap_ratio: null, launches: 0 }
    ]
  };
  assert.equal(kernelLabel(kernel), 'train.ipynb');
  assert.equal(kernelLabel({ ...kernel, path: null }), '3f2a1b9c');
  assert.equal(kernelLabel({ ...kernel, path: null, kernel_id: null, identity: 'batch-job' }), 'batch-job');
  const totals = kernelTotals(kernel);
  assert.equal(totals.memory, 150);
  assert.equal(totals.driver, 156);
  // Unknown on one device: unknown in all (never a partial sum shown as the driver's).
  const partial = { ...kernel, devices: [kernel.devices[0], { ...kernel.devices[1], driver_memory_used_bytes: null }] };
  assert.equal(kernelTotals(partial).driver, null);
  assert.ok(Math.abs(totals.compute - 0.3) < 1e-9);
});

test('chart ticks are the time of day alone, zero-padded', () => {
  const at = new Date(2026, 11, 4, 9, 5, 7).getTime() / 1000; // local time
  assert.equal(clockLabel(at), '09:05:07');
  assert.equal(clockLabel(at + 3600 * 13 + 60 * 54 + 52), '22:59:59');
});
