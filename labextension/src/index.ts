/**
 * hami-jupyter-vgpu: this Jupyter server's GPU slice, live in JupyterLab.
 *
 * A status-bar item with the slice's VRAM and compute per device, and a side
 * panel with charts and the slice's kernels. Both read the server extension
 * (hami_kernel.serverext) through one polling model.
 */
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, IThemeManager } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';
import { LabIcon } from '@jupyterlab/ui-components';

import { DEFAULT_WARNING_RATIO } from './format';
import { UsageModel } from './model';
import { IdleNotifier } from './notifier';
import { VgpuPanel } from './panel';
import { VgpuStatus } from './statusbar';

const PLUGIN_ID = 'hami-jupyter-vgpu:plugin';

namespace CommandIDs {
  export const openPanel = 'vgpu:open-panel';
  export const refresh = 'vgpu:refresh';
}

const gpuIcon = new LabIcon({
  name: 'hami-jupyter-vgpu:gpu',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="#616161"><path d="M7 5h10a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H7a2 2 0 0 1-2-2V7a2 2 0 0 1 2-2zm1 3v8h8V8z"/>' +
    '<path d="M9 1h2v3H9zm4 0h2v3h-2zM9 20h2v3H9zm4 0h2v3h-2zM1 9h3v2H1zm0 4h3v2H1zm19-4h3v2h-3zm0 4h3v2h-3z"/></g></svg>'
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: "This server's GPU slice: VRAM and compute in the status bar and a side panel.",
  autoStart: true,
  optional: [IStatusBar, ILabShell, ISettingRegistry, ITranslator, ICommandPalette, IThemeManager],
  activate: (
    app: JupyterFrontEnd,
    statusBar: IStatusBar | null,
    labShell: ILabShell | null,
    settingRegistry: ISettingRegistry | null,
    translator: ITranslator | null,
    palette: ICommandPalette | null,
    themeManager: IThemeManager | null
  ) => {
    const trans = (translator ?? nullTranslator).load('hami_jupyter');
    const model = new UsageModel({ interval: 1000, historySeconds: 300 });
    const panel = new VgpuPanel(model, trans, {
      shutdownKernel: id => app.serviceManager.kernels.shutdown(id)
    });
    panel.title.icon = gpuIcon;

    app.commands.addCommand(CommandIDs.openPanel, {
      label: trans.__('Show the GPU Slice Panel'),
      caption: trans.__('VRAM and compute of this server\'s GPU slice, and its kernels'),
      icon: gpuIcon,
      execute: () => {
        if (!panel.isAttached) {
          if (labShell) {
            labShell.add(panel, 'right', { rank: 900 });
          } else {
            app.shell.add(panel, 'right');
          }
        }
        app.shell.activateById(panel.id);
      }
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: trans.__('Refresh the GPU Slice Usage'),
      execute: () => model.refreshNow()
    });
    palette?.addItem({ command: CommandIDs.openPanel, category: trans.__('GPU') });
    palette?.addItem({ command: CommandIDs.refresh, category: trans.__('GPU') });

    const status = new VgpuStatus(model, trans, () => void app.commands.execute(CommandIDs.openPanel));
    statusBar?.registerStatusItem(PLUGIN_ID, { item: status, align: 'left', rank: 100 });

    themeManager?.themeChanged.connect(() => panel.themeChanged());

    // The idle-memory policy's warnings and results, as notifications.
    new IdleNotifier(
      model,
      () => void app.commands.execute(CommandIDs.openPanel),
      trans.__('Show GPU Panel'),
      () => {
        // JupyterLab polls its sessions and kernels every 10 s or so: without
        // this the shut-down notebook would look running until then.
        void app.serviceManager.sessions.refreshRunning();
        void app.serviceManager.kernels.refreshRunning();
      }
    );

    if (settingRegistry) {
      const apply = (settings: ISettingRegistry.ISettings): void => {
        model.interval = settings.get('refreshInterval').composite as number;
        model.history.windowSeconds = (settings.get('historyMinutes').composite as number) * 60;
        const ratio = (settings.get('warningPercent').composite as number) / 100;
        status.warningRatio = panel.warningRatio = ratio || DEFAULT_WARNING_RATIO;
        status.render();
      };
      void settingRegistry.load(PLUGIN_ID).then(settings => {
        apply(settings);
        settings.changed.connect(apply);
      });
    }
  }
};

export default plugin;
