/**
 * The idle policy's notices as JupyterLab notifications: before a kernel is
 * shut down (with when), and afterwards what happened and how much GPU memory
 * came back. Each notice is shown once per page.
 */
import { Notification } from '@jupyterlab/apputils';

import type { UsageModel } from './model';
import { unseenNotices } from './notices';

export class IdleNotifier {
  /**
   * @param onShutdown called when the policy has shut a kernel down, so the
   * rest of JupyterLab (the file browser's running marks, the running
   * kernels count) hears of it now rather than at its next poll.
   */
  constructor(
    private model: UsageModel,
    private openPanel: () => void,
    private label: string,
    private onShutdown: () => void = () => undefined
  ) {
    model.changed.connect(this.update, this);
  }

  update(): void {
    for (const shown of unseenNotices(this.model.report, this._seen)) {
      const kernel = shown.notice.kernel_id;
      if (shown.replacesWarning && this._open.has(kernel)) {
        Notification.dismiss(this._open.get(kernel));
        this._open.delete(kernel);
      }
      const options = {
        autoClose: shown.sticky ? (false as const) : 8000,
        actions: [{ label: this.label, callback: () => this.openPanel() }]
      };
      const id = Notification[shown.level](shown.notice.message, options);
      if (shown.level === 'warning') {
        this._open.set(kernel, id);
      }
      if (shown.endsKernel) {
        this.onShutdown();
      }
    }
  }

  dispose(): void {
    this.model.changed.disconnect(this.update, this);
  }

  private _seen = new Set<string>();
  private _open = new Map<string, string>();
}
