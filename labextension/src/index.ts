import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, showErrorMessage } from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import { DtrainModel } from './model';
import { runCellDistributed } from './runcell';
import { DtrainSidebar } from './sidebar';
import { ClusterStatus } from './statusbar';
import { CommandIDs, DEFAULT_SETTINGS, ISettings, PLUGIN_ID } from './tokens';

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<g class="jp-icon3" fill="#616161">
<circle cx="5" cy="5" r="3"/><circle cx="19" cy="5" r="3"/><circle cx="5" cy="19" r="3"/><circle cx="19" cy="19" r="3"/>
<path d="M10 8.5 16 12l-6 3.5z"/>
</g></svg>`;

/** The extension's icon: four ranks around a run arrow. */
export const dtrainIcon = new LabIcon({
  name: 'dtrain-magics:icon',
  svgstr: ICON_SVG
});

/**
 * The sidebar of clusters and runs, the run-cell-distributed command and the status bar item.
 */
const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'Clusters and runs of dtrain-magics in a sidebar; run the active cell distributed.',
  autoStart: true,
  requires: [INotebookTracker, IDocumentManager],
  optional: [ICommandPalette, ISettingRegistry, IStatusBar, ILabShell],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    docManager: IDocumentManager,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null,
    statusBar: IStatusBar | null,
    labShell: ILabShell | null
  ) => {
    const settings: ISettings = { ...DEFAULT_SETTINGS };
    const model = new DtrainModel(settings.pollInterval);

    const openCell = async (path: string, cellId: string | null) => {
      const widget = docManager.openOrReveal(path);
      if (!(widget instanceof NotebookPanel)) {
        return;
      }
      await widget.context.ready;
      const notebook = widget.content;
      const index = notebook.widgets.findIndex(c => c.model.id === cellId);
      if (index >= 0) {
        notebook.activeCellIndex = index;
        await notebook.scrollToItem(index);
      }
    };
    const sidebar = new DtrainSidebar(model, openCell);
    sidebar.id = 'dtrain-magics-sidebar';
    sidebar.title.icon = dtrainIcon;
    app.shell.add(sidebar, 'left', { rank: 600 });

    app.commands.addCommand(CommandIDs.openSidebar, {
      label: 'Show Distributed Training',
      execute: () => app.shell.activateById(sidebar.id)
    });
    app.commands.addCommand(CommandIDs.runCell, {
      label: 'Run Cell Distributed',
      caption: 'Run the active cell on every rank under %%distributed',
      icon: args => (args.toolbar ? dtrainIcon : undefined),
      isEnabled: () => tracker.activeCell?.model.type === 'code',
      execute: async () => {
        const panel = tracker.currentWidget;
        if (!panel) {
          return;
        }
        try {
          await runCellDistributed(panel, settings);
        } catch (error) {
          await showErrorMessage('Run Cell Distributed', error as Error);
        }
        void model.refresh();
      }
    });
    palette?.addItem({
      command: CommandIDs.runCell,
      category: 'Distributed Training'
    });
    palette?.addItem({
      command: CommandIDs.openSidebar,
      category: 'Distributed Training'
    });
    tracker.activeCellChanged.connect(() =>
      app.commands.notifyCommandChanged(CommandIDs.runCell)
    );

    if (statusBar) {
      const item = new ClusterStatus(model, tracker, () =>
        app.shell.activateById(sidebar.id)
      );
      statusBar.registerStatusItem('dtrain-magics:status', {
        item,
        align: 'left',
        rank: 5,
        isActive: () => labShell === null || tracker.currentWidget !== null
      });
    }

    if (settingRegistry) {
      const apply = (loaded: ISettingRegistry.ISettings) => {
        Object.assign(settings, loaded.composite as Partial<ISettings>);
        model.interval = settings.pollInterval;
      };
      settingRegistry
        .load(PLUGIN_ID)
        .then(loaded => {
          apply(loaded);
          loaded.changed.connect(apply);
        })
        .catch(reason =>
          console.error('dtrain-magics: could not load settings', reason)
        );
    }
  }
};

export default plugin;
