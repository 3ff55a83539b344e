/**
 * The status-bar item: "GPU 3.1 / 8 GiB · 27% / 30%", in the warning colour
 * near the VRAM limit, "no GPU slice" when there is none; a click opens the panel.
 */
import { TranslationBundle } from '@jupyterlab/translation';
import { Widget } from '@lumino/widgets';

import { DEFAULT_WARNING_RATIO, statusSummary } from './format';
import type { UsageModel } from './model';

export class VgpuStatus extends Widget {
  constructor(
    private model: UsageModel,
    private trans: TranslationBundle,
    private onOpen: () => void
  ) {
    super();
    this.addClass('jp-vgpu-status');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this._text = document.createElement('span');
    this._text.className = 'jp-vgpu-status-text';
    this.node.appendChild(this._text);
    this.node.addEventListener('click', () => this.onOpen());
    this.node.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        this.onOpen();
      }
    });
    model.changed.connect(this.render, this);
    this.render();
  }

  /** The fraction of the VRAM limit from which the item turns to the warning colour. */
  warningRatio = DEFAULT_WARNING_RATIO;

  /** Redraws from the model's latest report (small and cheap: at once, not on the next frame). */
  render(): void {
    const summary = statusSummary(this.model.report, this.model.error, this.warningRatio,
      (text, ...args) => this.trans.__(text, ...(args as string[])));
    this._text.textContent = summary.text;
    this.node.title = `${summary.title}\n${this.trans.__('Click for the GPU slice panel')}`;
    this.toggleClass('jp-vgpu-warning', summary.warning);
    this.node.dataset.status = this.model.report?.status ?? 'unavailable';
  }

  dispose(): void {
    this.model.changed.disconnect(this.render, this);
    super.dispose();
  }

  private _text: HTMLSpanElement;
}
