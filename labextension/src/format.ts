/**
 * How the slice's figures are written for people: pure functions, shared by
 * the status bar and the panel, and unit-tested without a browser.
 */
import type { DeviceUsage, KernelUsage, UsageReport } from './types';

const KiB = 1024;
const MiB = KiB * 1024;
const GiB = MiB * 1024;

/** The fraction of its VRAM limit at which a device is shown in the warning colour. */
export const DEFAULT_WARNING_RATIO = 0.9;

/** Strings the caller translates; the default is English. */
export type Translate = (text: string, ...args: unknown[]) => string;
const english: Translate = (text, ...args) =>
  text.replace(/%(\d+)/g, (_, i: string) => String(args[Number(i) - 1]));

/** A number with at most one decimal, without a trailing ".0". */
export function decimal(value: number): string {
  const rounded = Math.round(value * 10) / 10;
  return Number.isInteger(rounded) ? String(rounded) : rounded.toFixed(1);
}

/** The unit a pair of figures is written in: the larger one's. */
export function memoryUnit(bytes: number): [string, number] {
  if (bytes >= GiB) {
    return ['GiB', GiB];
  }
  if (bytes >= MiB) {
    return ['MiB', MiB];
  }
  return ['KiB', KiB];
}

/** "3.1 GiB", "512 MiB", "0 B". */
export function formatBytes(bytes: number): string {
  if (bytes <= 0) {
    return '0 B';
  }
  if (bytes < KiB) {
    return `${bytes} B`;
  }
  const [unit, size] = memoryUnit(bytes);
  return `${decimal(bytes / size)} ${unit}`;
}

/** "3.1 / 8 GiB": used and limit in the limit's unit; "3.1 GiB" without a limit. */
export function formatMemoryPair(used: number, limit: number | null): string {
  if (limit === null) {
    return formatBytes(used);
  }
  const [unit, size] = memoryUnit(Math.max(limit, used));
  return `${decimal(used / size)} / ${decimal(limit / size)} ${unit}`;
}

/** "27%" from a ratio; whole percents, and "<1%" for a little above nothing. */
export function formatPercent(ratio: number): string {
  const percent = ratio * 100;
  if (percent > 0 && percent < 0.5) {
    return '<1%';
  }
  return `${Math.round(percent)}%`;
}

/** "27% / 30%", or "27%" without a cap. */
export function formatComputePair(used: number, cap: number | null): string {
  return cap === null ? formatPercent(used) : `${formatPercent(used)} / ${formatPercent(cap)}`;
}

/** "42 s", "3 min", "2 h 5 min"; "—" when not known. */
export function formatDuration(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds)) {
    return '—';
  }
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) {
    return `${s} s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)} min`;
  }
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return m ? `${h} h ${m} min` : `${h} h`;
}

/**
 * A chart tick's local time of day, "14:05:30", from Unix seconds. The
 * charts span a few minutes, so the date would only repeat itself; uPlot's
 * default two-line label also put it half outside the chart at its left edge.
 */
export function clockLabel(seconds: number): string {
  const t = new Date(seconds * 1000);
  const two = (n: number): string => String(n).padStart(2, '0');
  return `${two(t.getHours())}:${two(t.getMinutes())}:${two(t.getSeconds())}`;
}

/** The share of its VRAM limit a device holds, or null without a limit. */
export function memoryFraction(device: DeviceUsage): number | null {
  if (device.memory_limit_bytes === null || device.memory_limit_bytes <= 0) {
    return null;
  }
  return device.memory_used_bytes / device.memory_limit_bytes;
}

/** True when a device holds at least `threshold` of its VRAM limit. */
export function nearLimit(device: DeviceUsage, threshold = DEFAULT_WARNING_RATIO): boolean {
  const fraction = memoryFraction(device);
  return fraction !== null && fraction >= threshold;
}

/** What the status bar shows, and whether in the warning colour. */
export interface StatusSummary {
  text: string;
  title: string;
  warning: boolean;
}

/** One device as the status bar writes it: "3.1 / 8 GiB · 27% / 30%". */
export function deviceSummary(device: DeviceUsage): string {
  return (
    `${formatMemoryPair(device.memory_used_bytes, device.memory_limit_bytes)} · ` +
    formatComputePair(device.compute_used_ratio, device.compute_cap_ratio)
  );
}

/** The status bar's text for a report (or for no report: the request failed). */
export function statusSummary(
  report: UsageReport | null,
  error: string | null = null,
  threshold = DEFAULT_WARNING_RATIO,
  trans: Translate = english
): StatusSummary {
  if (report === null) {
    return {
      text: trans('GPU ?'),
      title: trans('The GPU slice could not be read: %1', error ?? trans('no answer yet')),
      warning: false
    };
  }
  switch (report.status) {
    case 'no_slice':
      return { text: trans('no GPU slice'), title: report.message, warning: false };
    case 'region_error':
      return { text: trans('GPU: slice unreadable'), title: report.message, warning: true };
    case 'no_usage_yet': {
      const limits = report.slice?.limits ?? [];
      const parts = limits.map(limit => {
        const memory = formatMemoryPair(0, limit.memory_limit_bytes);
        return `${memory} · ${formatComputePair(0, limit.compute_cap_ratio)}`;
      });
      const label = parts.length > 1 ? parts.map((p, i) => `GPU${i} ${p}`).join(' | ') : `GPU ${parts[0] ?? ''}`;
      return { text: label.trim(), title: report.message, warning: false };
    }
    default: {
      const devices = report.devices;
      if (devices.length === 0) {
        return { text: trans('GPU'), title: report.message, warning: false };
      }
      const text =
        devices.length === 1
          ? `GPU ${deviceSummary(devices[0])}`
          : devices.map((d, i) => `GPU${i} ${deviceSummary(d)}`).join(' | ');
      const warning = devices.some(d => nearLimit(d, threshold));
      const title = devices
        .map(d => {
          const name = d.name ? `${d.name} ` : '';
          return trans('%1%2: VRAM %3, compute %4 over the last second', name, d.uuid,
            formatMemoryPair(d.memory_used_bytes, d.memory_limit_bytes),
            formatComputePair(d.compute_used_ratio, d.compute_cap_ratio));
        })
        .join('\n');
      return { text, title: warning ? `${title}\n${trans('Near the VRAM limit')}` : title, warning };
    }
  }
}

/** A kernel's row label: its notebook's file name, else its kernel id (short), else its identity. */
export function kernelLabel(kernel: KernelUsage): string {
  if (kernel.path) {
    const parts = kernel.path.split('/');
    return parts[parts.length - 1] || kernel.path;
  }
  if (kernel.kernel_id) {
    return kernel.kernel_id.slice(0, 8);
  }
  return kernel.identity || `pid ${kernel.pid}`;
}

/** A kernel's VRAM and compute summed over its devices; `driver` is null unless the driver knows every device's. */
export function kernelTotals(kernel: KernelUsage): { memory: number; compute: number; driver: number | null } {
  return kernel.devices.reduce<{ memory: number; compute: number; driver: number | null }>(
    (acc, d) => ({
      memory: acc.memory + d.memory_used_bytes,
      compute: acc.compute + d.compute_used_ratio,
      driver: acc.driver === null || d.driver_memory_used_bytes === null ? null : acc.driver + d.driver_memory_used_bytes
    }),
    { memory: 0, compute: 0, driver: kernel.devices.length ? 0 : null }
  );
}
