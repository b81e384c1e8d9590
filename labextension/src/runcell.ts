import { CodeCell } from '@jupyterlab/cells';
import { NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { OutputArea } from '@jupyterlab/outputarea';

import { ISettings } from './tokens';

const MAGIC = '%%distributed';
const LOAD_EXTENSION =
  "get_ipython().extension_manager.load_extension('dtrain_magics')";

/** The `%%distributed` line for the configured defaults (0 leaves a value to the kernel). */
export function magicLine(settings: ISettings): string {
  const flags = [MAGIC];
  if (settings.nodes > 0) {
    flags.push(`--nodes ${settings.nodes}`);
  }
  if (settings.procsPerNode > 0) {
    flags.push(`--procs-per-node ${settings.procsPerNode}`);
  }
  return flags.join(' ');
}

/**
 * Whether a cell's source already starts with `%%distributed`, after blank lines (which
 * IPython drops before it looks for a cell magic).
 */
export function hasMagic(source: string): boolean {
  return /^([ \t]*\r?\n)*%%distributed(\s|$)/.test(source);
}

/**
 * Run the active code cell on every rank.
 *
 * The cell's source is sent under a `%%distributed` line and its outputs (the dashboard) go to
 * the cell; the cell itself is left unchanged unless `insertMagic` is set.
 */
export async function runCellDistributed(
  panel: NotebookPanel,
  settings: ISettings
): Promise<void> {
  const notebook = panel.content;
  const cell = notebook.activeCell;
  if (!cell || cell.model.type !== 'code') {
    throw new Error('Select a code cell to run it distributed.');
  }
  const sessionContext = panel.sessionContext;
  const kernel = sessionContext.session?.kernel;
  if (!kernel) {
    throw new Error(
      'The notebook has no kernel: start one, then run the cell again.'
    );
  }
  const loaded = await kernel.requestExecute({
    code: LOAD_EXTENSION,
    silent: true,
    store_history: false
  }).done;
  if (loaded.content.status !== 'ok') {
    throw new Error(
      "This notebook's kernel cannot load dtrain_magics: install dtrain-magics in the kernel's environment."
    );
  }
  const source = cell.model.sharedModel.getSource();
  if (!hasMagic(source) && settings.insertMagic) {
    cell.model.sharedModel.setSource(`${magicLine(settings)}\n${source}`);
  }
  if (hasMagic(cell.model.sharedModel.getSource())) {
    await NotebookActions.runCells(notebook, [cell], sessionContext);
    return;
  }
  const codeCell = cell as CodeCell;
  codeCell.model.trusted = true; // the user ran it, as CodeCell.execute does
  codeCell.model.executionCount = null;
  // as CodeCell.execute does: the prompt shows [*] and the "edited since run" marker clears
  codeCell.model.executionState = 'running';
  try {
    const reply = await OutputArea.execute(
      `${magicLine(settings)}\n${source}`,
      codeCell.outputArea,
      sessionContext,
      { cellId: cell.model.id }
    );
    const content = reply?.content;
    codeCell.model.executionCount =
      content && 'execution_count' in content ? content.execution_count : null;
  } finally {
    codeCell.model.executionState = 'idle';
  }
}
