/**
 * The live usage: polls the server extension, keeps the latest report and
 * the recent history, and tells the status bar and the panel when it changes.
 * No polling while the browser tab is hidden.
 */
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { fetchUsage } from './api';
import { UsageHistory } from './history';
import type { UsageReport } from './types';

export class UsageModel {
  constructor(options: UsageModel.IOptions = {}) {
    this._fetch = options.fetch ?? (() => fetchUsage());
    this.history = new UsageHistory(options.historySeconds ?? 300);
    this._poll = new Poll({
      auto: true,
      factory: () => this.refresh(),
      frequency: { interval: options.interval ?? 1000, backoff: true, max: 30 * 1000 },
      name: 'hami-jupyter-vgpu:usage',
      standby: 'when-hidden'
    });
  }

  readonly history: UsageHistory;

  get report(): UsageReport | null {
    return this._report;
  }

  /** Why the last request failed, or null. */
  get error(): string | null {
    return this._error;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Milliseconds between requests while the tab is visible. */
  set interval(ms: number) {
    this._poll.frequency = { ...this._poll.frequency, interval: Math.max(ms, 200) };
  }

  /** Asks now, whatever the schedule (after a shut-down or a re-division). */
  async refreshNow(): Promise<void> {
    await this._poll.refresh();
    await this._poll.tick;
  }

  async refresh(): Promise<void> {
    try {
      const report = await this._fetch();
      this._report = report;
      this._error = null;
      this.history.add(report);
    } catch (reason) {
      this._report = null;
      this._error = reason instanceof Error ? reason.message : String(reason);
      this._changed.emit();
      throw reason; // the poll backs off
    }
    this._changed.emit();
  }

  dispose(): void {
    this._poll.dispose();
    Signal.clearData(this);
  }

  private _fetch: () => Promise<UsageReport>;
  private _poll: Poll;
  private _report: UsageReport | null = null;
  private _error: string | null = null;
  private _changed = new Signal<this, void>(this);
}

export namespace UsageModel {
  export interface IOptions {
    interval?: number;
    historySeconds?: number;
    fetch?: () => Promise<UsageReport>;
  }
}
