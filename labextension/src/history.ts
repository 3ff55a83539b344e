/**
 * The last minutes of each device's figures, for the panel's charts.
 */
import type { UsageReport } from './types';

/** One device's samples as uPlot takes them: times (s), VRAM used (bytes), compute used (ratio). */
export interface Series {
  times: number[];
  memory: number[];
  compute: number[];
}

export class UsageHistory {
  /** Keep `windowSeconds` of samples per device. */
  constructor(public windowSeconds = 300) {}

  /** Adds a report's figures (a report seen twice is added once) and drops what is too old. */
  add(report: UsageReport): void {
    if (report.time <= this._last) {
      return;
    }
    this._last = report.time;
    for (const device of report.devices) {
      let series = this._series.get(device.uuid);
      if (!series) {
        series = { times: [], memory: [], compute: [] };
        this._series.set(device.uuid, series);
      }
      series.times.push(report.time);
      series.memory.push(device.memory_used_bytes);
      series.compute.push(device.compute_used_ratio);
    }
    this.trim(report.time);
  }

  series(uuid: string): Series {
    return this._series.get(uuid) ?? { times: [], memory: [], compute: [] };
  }

  devices(): string[] {
    return [...this._series.keys()];
  }

  private trim(now: number): void {
    const oldest = now - this.windowSeconds;
    for (const [uuid, s] of this._series) {
      let drop = 0;
      while (drop < s.times.length && s.times[drop] < oldest) {
        drop++;
      }
      if (drop === s.times.length) {
        this._series.delete(uuid);
        continue;
      }
      if (drop) {
        s.times.splice(0, drop);
        s.memory.splice(0, drop);
        s.compute.splice(0, drop);
      }
    }
  }

  private _last = -Infinity;
  private _series = new Map<string, Series>();
}
