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
        out.push({ notice, level: 'warning', sticky: true, replacesWarning: false });
        break;
      case 'shutdown':
        out.push({ notice, level: 'success', sticky: true, replacesWarning: true });
        break;
      default:
        out.push({ notice, level: 'info', sticky: false, replacesWarning: true });
    }
  }
  return out;
}
