/**
 * Which of the idle policy's notices the user has not been shown yet, and how
 * each is shown: pure, so it is unit-tested without a browser.
 */
import type { IdleNotice, UsageReport } from './types';

export type NoticeLevel = 'warning' | 'success' | 'info';

export interface NoticeDisplay {
  notice: IdleNotice;
  level: NoticeLevel;
  /** Stays until the user closes it (an announced shutdown, and what came back). */
  sticky: boolean;
  /** Close the earlier notification about the same kernel first (its warning is settled). */
  replacesWarning: boolean;
  /** The kernel is gone: what JupyterLab shows as running should be looked up again. */
  endsKernel: boolean;
}

/** The notices of `report` not in `seen`, oldest first, with how to show each; adds them to `seen`. */
export function unseenNotices(report: UsageReport | null, seen: Set<string>): NoticeDisplay[] {
  const out: NoticeDisplay[] = [];
  const notices = [...(report?.idle?.notices ?? [])].sort((a, b) => a.time - b.time);
  for (const notice of notices) {
    if (seen.has(notice.id)) {
      continue;
    }
    seen.add(notice.id);
    switch (notice.kind) {
      case 'warning':
      case 'idle':
        out.push({ notice, level: 'warning', sticky: true, replacesWarning: false, endsKernel: false });
        break;
      case 'shutdown':
        out.push({ notice, level: 'success', sticky: true, replacesWarning: true, endsKernel: true });
        break;
      case 'failed':
        out.push({ notice, level: 'warning', sticky: true, replacesWarning: true, endsKernel: false });
        break;
      default:
        out.push({ notice, level: 'info', sticky: false, replacesWarning: true, endsKernel: false });
    }
  }
  return out;
}

/** Strings the caller translates; the default is English. */
export type Translate = (text: string, ...args: unknown[]) => string;
const english: Translate = (text, ...args) =>
  text.replace(/%(\d+)/g, (_, i: string) => String(args[Number(i) - 1]));

/**
 * The panel's line about idle memory, such as "216 MiB held by kernels idle
 * for 1 h or more; they are shut down 5 min after a warning", or null when the
 * server has no idle policy.
 */
export function idleSummary(
  report: UsageReport | null,
  formatBytes: (bytes: number) => string,
  formatDuration: (seconds: number) => string,
  t: Translate = english
): string | null {
  const idle = report?.idle;
  if (!idle) {
    return null;
  }
  const policy = idle.policy;
  const after = formatDuration(policy.idle_after_seconds);
  const held = idle.memory_bytes
    ? t('%1 held by kernels idle for %2 or more', formatBytes(idle.memory_bytes), after)
    : t('No kernel has been idle for %1 or more', after);
  switch (policy.action) {
    case 'shutdown':
      return t('%1; those holding %2 or more are shut down %3 after a warning.', held,
        formatBytes(policy.min_memory_bytes), formatDuration(policy.grace_seconds));
    case 'warn':
      return t('%1; you are warned about those holding %2 or more.', held, formatBytes(policy.min_memory_bytes));
    default:
      return t('%1.', held);
  }
}
