/**
 * The side panel: per device, live charts of VRAM and compute over the last
 * minutes (uPlot) and the figures; below, the slice's kernels with their
 * notebooks, what each uses, how long each has been idle, and buttons to
 * re-divide a kernel or shut it down (its memory returns to the slice).
 */
import { Dialog, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { TranslationBundle } from '@jupyterlab/translation';
import { Widget } from '@lumino/widgets';
import uPlot from 'uplot';

import { setKernelSlice } from './api';
import {
  clockLabel,
  formatBytes,
  formatComputePair,
  formatDuration,
  formatMemoryPair,
  formatPercent,
  kernelLabel,
  kernelTotals,
  nearLimit,
  statusSummary
} from './format';
import type { UsageModel } from './model';
import { idleSummary } from './notices';
import type { DeviceUsage, KernelUsage } from './types';

/** What the panel needs from the application. */
export interface PanelActions {
  shutdownKernel(kernelId: string): Promise<void>;
}

const GiB = 1024 ** 3;

/** A theme colour from JupyterLab's CSS variables, so the charts follow light and dark themes. */
function cssColor(name: string, fallback: string): string {
  const value = getComputedStyle(document.body).getPropertyValue(name).trim();
  return value || fallback;
}

class DeviceView {
  readonly node: HTMLElement;

  constructor(readonly uuid: string, private trans: TranslationBundle) {
    this.node = document.createElement('section');
    this.node.className = 'jp-vgpu-device';
    this.node.dataset.uuid = uuid;
    this._title = document.createElement('h3');
    this._figures = document.createElement('div');
    this._figures.className = 'jp-vgpu-figures';
    this._memoryChart = this.chartHost('jp-vgpu-chart-memory', trans.__('VRAM (GiB); dashed: the slice\'s limit'));
    this._computeChart = this.chartHost('jp-vgpu-chart-compute', trans.__('compute (%); dashed: the slice\'s cap'));
    this.node.append(this._title, this._figures, this._memoryChart, this._computeChart);
  }

  render(device: DeviceUsage, times: number[], memory: number[], compute: number[], width: number,
    warningRatio: number): void {
    this._title.textContent = device.name ? `${device.name} · ${device.uuid}` : device.uuid;
    this._figures.textContent = this.trans.__('VRAM %1 · compute %2 over the last second',
      formatMemoryPair(device.memory_used_bytes, device.memory_limit_bytes),
      formatComputePair(device.compute_used_ratio, device.compute_cap_ratio));
    this.node.classList.toggle('jp-vgpu-warning', nearLimit(device, warningRatio));

    const limitGiB = device.memory_limit_bytes === null ? null : device.memory_limit_bytes / GiB;
    const capPercent = device.compute_cap_ratio === null ? null : device.compute_cap_ratio * 100;
    const memoryData: uPlot.AlignedData = [
      times, memory.map(b => b / GiB), times.map(() => limitGiB)
    ];
    const computeData: uPlot.AlignedData = [
      times, compute.map(r => r * 100), times.map(() => capPercent)
    ];
    if (!this._memoryPlot || this._width !== width) {
      this.destroyCharts();
      this._width = width;
      this._memoryPlot = this.chart(this._memoryChart, this.trans.__('VRAM (GiB)'), width, memoryData,
        limitGiB ?? 1);
      this._computePlot = this.chart(this._computeChart, this.trans.__('compute (%)'), width, computeData, 100);
    } else {
      this._memoryPlot.setData(memoryData);
      this._computePlot?.setData(computeData);
    }
  }

  private chartHost(className: string, caption: string): HTMLDivElement {
    const host = document.createElement('div');
    host.className = `jp-vgpu-chart ${className}`;
    const label = document.createElement('div');
    label.className = 'jp-vgpu-chart-caption';
    label.textContent = caption;
    host.appendChild(label);
    return host;
  }

  /** Charts are remade on a theme change, with the new theme's colours. */
  destroyCharts(): void {
    this._memoryPlot?.destroy();
    this._computePlot?.destroy();
    this._memoryPlot = this._computePlot = null;
  }

  private chart(host: HTMLElement, label: string, width: number, data: uPlot.AlignedData, top: number): uPlot {
    const text = cssColor('--jp-ui-font-color1', '#333');
    const grid = cssColor('--jp-border-color2', '#ddd');
    const used = cssColor('--jp-brand-color1', '#1976d2');
    const limit = cssColor('--jp-warn-color0', '#e65100');
    const axis = { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const options: uPlot.Options = {
      width,
      height: 120,
      legend: { show: false }, // the caption above says what is drawn
      cursor: { show: false },
      scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(max, top) * 1.05] } },
      axes: [{ ...axis, space: 64, values: (_u, ticks) => ticks.map(clockLabel) }, { ...axis, size: 44 }],
      series: [
        {},
        { label, stroke: used, fill: `${used}33`, width: 2, value: (_u, v) => (v === null ? '—' : v.toFixed(2)) },
        { label: this.trans.__('limit'), stroke: limit, dash: [6, 4], width: 1.5,
          value: (_u, v) => (v === null ? '—' : v.toFixed(2)) }
      ]
    };
    return new uPlot(options, data, host);
  }

  private _title: HTMLHeadingElement;
  private _figures: HTMLDivElement;
  private _memoryChart: HTMLDivElement;
  private _computeChart: HTMLDivElement;
  private _memoryPlot: uPlot | null = null;
  private _computePlot: uPlot | null = null;
  private _width = 0;
}

export class VgpuPanel extends Widget {
  constructor(private model: UsageModel, private trans: TranslationBundle, private actions: PanelActions) {
    super();
    this.id = 'hami-vgpu-panel';
    this.addClass('jp-vgpu-panel');
    this.title.caption = trans.__('GPU slice');
    this._summary = document.createElement('p');
    this._summary.className = 'jp-vgpu-summary';
    this._idle = document.createElement('p');
    this._idle.className = 'jp-vgpu-idle-summary';
    this._devices = document.createElement('div');
    this._devices.className = 'jp-vgpu-devices';
    const heading = document.createElement('h3');
    heading.textContent = trans.__('Kernels in the slice');
    this._table = document.createElement('table');
    this._table.className = 'jp-vgpu-kernels';
    const head = this._table.createTHead().insertRow();
    for (const name of [trans.__('Notebook'), trans.__('VRAM'), trans.__('Compute'), trans.__('Idle')]) {
      const th = document.createElement('th');
      th.textContent = name;
      head.appendChild(th);
    }
    this._body = this._table.createTBody();
    this.node.append(this._summary, this._devices, heading, this._table, this._idle);
    model.changed.connect(this.render, this);
  }

  warningRatio = 0.9;

  /** Remakes the charts with the current theme's colours. */
  themeChanged(): void {
    this._views.forEach(view => view.destroyCharts());
    this.render();
  }

  protected onAfterShow(): void {
    this.render();
  }

  protected onResize(): void {
    this.render();
  }

  render(): void {
    if (!this.isVisible) {
      return; // drawn when shown
    }
    const report = this.model.report;
    const summary = statusSummary(report, this.model.error, this.warningRatio,
      (text, ...args) => this.trans.__(text, ...(args as string[])));
    this._summary.textContent = report && report.status === 'ok' ? summary.text : summary.title;
    this.node.dataset.status = report?.status ?? 'unavailable';
    this.renderDevices();
    this.renderKernels(report?.kernels ?? []);
    this._idle.textContent = idleSummary(report, formatBytes, s => formatDuration(s),
      (text, ...args) => this.trans.__(text, ...(args as string[]))) ?? '';
  }

  private renderDevices(): void {
    const devices = this.model.report?.devices ?? [];
    const width = Math.max(200, (this.node.clientWidth || 320) - 24);
    const seen = new Set<string>();
    for (const device of devices) {
      seen.add(device.uuid);
      let view = this._views.get(device.uuid);
      if (!view) {
        view = new DeviceView(device.uuid, this.trans);
        this._views.set(device.uuid, view);
        this._devices.appendChild(view.node);
      }
      const s = this.model.history.series(device.uuid);
      view.render(device, s.times, s.memory, s.compute, width, this.warningRatio);
    }
    for (const [uuid, view] of this._views) {
      if (!seen.has(uuid)) {
        view.destroyCharts();
        view.node.remove();
        this._views.delete(uuid);
      }
    }
  }

  private renderKernels(kernels: KernelUsage[]): void {
    this._body.textContent = '';
    if (kernels.length === 0) {
      const cell = this._body.insertRow().insertCell();
      cell.colSpan = 4;
      cell.className = 'jp-vgpu-empty';
      cell.textContent = this.trans.__('No kernel uses the GPU yet.');
      return;
    }
    for (const kernel of kernels) {
      const row = this._body.insertRow();
      row.className = 'jp-vgpu-kernel';
      row.dataset.kernelId = kernel.kernel_id ?? '';
      const totals = kernelTotals(kernel);
      const name = row.insertCell();
      name.className = 'jp-vgpu-kernel-name';
      const label = document.createElement('div');
      label.append(...breakableName(kernelLabel(kernel)));
      name.appendChild(label);
      name.title = [kernel.path, kernel.kernel_id ?? kernel.identity, `pid ${kernel.pid}`, kernel.kernel_name]
        .filter(Boolean).join('\n');
      const cap = kernel.devices.find(d => d.memory_limit_bytes !== null)?.memory_limit_bytes ?? null;
      const vram = row.insertCell();
      vram.append(cap === null ? formatBytes(totals.memory) : formatMemoryPair(totals.memory, cap));
      if (totals.driver !== null) {
        // What the driver attributes to the process, as nvidia-smi shows it.
        const driver = document.createElement('div');
        driver.className = 'jp-vgpu-driver';
        driver.textContent = this.trans.__('driver: %1', formatBytes(totals.driver));
        vram.appendChild(driver);
      }
      vram.title = this.trans.__('Charged to the slice: %1; the GPU driver (nvidia-smi) attributes: %2',
        formatBytes(totals.memory), totals.driver === null ? this.trans.__('unknown') : formatBytes(totals.driver));
      row.insertCell().textContent = formatPercent(totals.compute);
      // Idle: since the kernel last executed something, and since it last launched GPU work.
      const idle = row.insertCell();
      idle.className = 'jp-vgpu-idle';
      const gpuIdle = kernel.launches ? formatDuration(kernel.gpu_idle_seconds) : this.trans.__('never');
      idle.append(formatDuration(kernel.idle_seconds), document.createElement('br'),
        this.trans.__('GPU: %1', gpuIdle));
      idle.title = this.trans.__('Last executed %1 ago; last launched GPU work: %2', formatDuration(kernel.idle_seconds),
        kernel.launches ? this.trans.__('%1 ago', gpuIdle) : this.trans.__('never'));
      if (kernel.idle) {
        // Idle past the policy's threshold: the memory it holds is idle memory.
        row.classList.add('jp-vgpu-kernel-idle');
        const mark = document.createElement('div');
        mark.className = 'jp-vgpu-idle-mark';
        mark.textContent = kernel.reclaim_at
          ? this.trans.__('idle: shut down at %1', new Date(kernel.reclaim_at * 1000).toLocaleTimeString())
          : this.trans.__('idle');
        idle.appendChild(mark);
      }
      if (kernel.kernel_id) {
        const actions = document.createElement('div');
        actions.className = 'jp-vgpu-actions';
        name.appendChild(actions);
        const id = kernel.kernel_id;
        actions.append(
          this.button(this.trans.__('Re-divide'), 'jp-vgpu-redivide', () => this.redivide(id, kernelLabel(kernel))),
          this.button(this.trans.__('Shut down'), 'jp-vgpu-shutdown', () => this.shutdown(id, kernelLabel(kernel)))
        );
      }
    }
  }

  private button(label: string, className: string, onClick: () => void): HTMLButtonElement {
    const button = document.createElement('button');
    button.className = `jp-vgpu-button ${className}`;
    button.textContent = label;
    button.addEventListener('click', onClick);
    return button;
  }

  private async shutdown(kernelId: string, label: string): Promise<void> {
    const answer = await showDialog({
      title: this.trans.__('Shut down the kernel of %1?', label),
      body: this.trans.__('Its variables are lost; its GPU memory returns to the slice.'),
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: this.trans.__('Shut Down') })]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await this.actions.shutdownKernel(kernelId);
    } catch (reason) {
      await showErrorMessage(this.trans.__('Kernel not shut down'), String(reason));
    }
    await this.model.refreshNow();
  }

  private async redivide(kernelId: string, label: string): Promise<void> {
    const body = new RedivideBody(this.trans);
    const answer = await showDialog({
      title: this.trans.__('Re-divide the slice for %1', label),
      body,
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: this.trans.__('Apply') })]
    });
    if (!answer.button.accept || !answer.value) {
      return;
    }
    try {
      await setKernelSlice(kernelId, answer.value);
    } catch (reason) {
      await showErrorMessage(this.trans.__('Not re-divided'), reason instanceof Error ? reason.message : String(reason));
    }
    await this.model.refreshNow();
  }

  dispose(): void {
    this.model.changed.disconnect(this.render, this);
    this._views.forEach(view => view.destroyCharts());
    super.dispose();
  }

  private _summary: HTMLParagraphElement;
  private _idle: HTMLParagraphElement;
  private _devices: HTMLDivElement;
  private _table: HTMLTableElement;
  private _body: HTMLTableSectionElement;
  private _views = new Map<string, DeviceView>();
}

/** The re-divide dialog's form: a VRAM cap and a compute share; empty fields are left as they are. */
class RedivideBody extends Widget implements Dialog.IBodyWidget<{ memory?: string; cores?: string }> {
  constructor(trans: TranslationBundle) {
    super();
    this.addClass('jp-vgpu-redivide-form');
    this._memory = this.field(trans.__('VRAM cap (e.g. 2GiB; 0 for the slice\'s)'), 'memory');
    this._cores = this.field(trans.__('Compute share in % (e.g. 20; 0 for the slice\'s)'), 'cores');
  }

  getValue(): { memory?: string; cores?: string } {
    const value: { memory?: string; cores?: string } = {};
    if (this._memory.value.trim()) {
      value.memory = this._memory.value.trim();
    }
    if (this._cores.value.trim()) {
      value.cores = this._cores.value.trim();
    }
    return value;
  }

  private field(label: string, name: string): HTMLInputElement {
    const wrapper = document.createElement('label');
    wrapper.textContent = label;
    const input = document.createElement('input');
    input.className = 'jp-mod-styled';
    input.name = name;
    wrapper.appendChild(input);
    this.node.appendChild(wrapper);
    return input;
  }

  private _memory: HTMLInputElement;
  private _cores: HTMLInputElement;
}

/**
 * A notebook's name with line-break opportunities after "/", ".", "_" and "-":
 * the sidebar's narrow table then wraps "analysis." / "ipynb" rather than
 * inside a word.
 */
function breakableName(text: string): Node[] {
  return text.split(/(?<=[/._-])/).flatMap((part, i) =>
    i === 0 ? [document.createTextNode(part)] : [document.createElement('wbr'), document.createTextNode(part)]
  );
}
