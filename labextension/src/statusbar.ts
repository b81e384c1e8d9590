import { INotebookTracker } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { DtrainModel } from './model';
import { clusterText } from './sidebar';

/**
 * The status bar item: the cluster state of the active notebook's kernel; a click opens the
 * sidebar.
 */
export class ClusterStatus extends Widget {
  constructor(
    model: DtrainModel,
    tracker: INotebookTracker,
    onClick: () => void
  ) {
    super();
    this._model = model;
    this._tracker = tracker;
    this.addClass('dtrain-StatusItem');
    this.node.title = 'Distributed training: click to open the sidebar';
    this.node.addEventListener('click', onClick);
    model.changed.connect(this.update, this);
    tracker.currentChanged.connect(this.update, this);
    this.update();
  }

  /** The text shown, e.g. "dtrain: 2 ranks · idle". */
  get text(): string {
    const kernelId =
      this._tracker.currentWidget?.sessionContext.session?.kernel?.id;
    const cluster = this._model.clusterOf(kernelId);
    return cluster ? `dtrain: ${clusterText(cluster)}` : 'dtrain: no cluster';
  }

  update(): void {
    this.node.textContent = this.text;
  }

  dispose(): void {
    this._model.changed.disconnect(this.update, this);
    this._tracker.currentChanged.disconnect(this.update, this);
    super.dispose();
  }

  private _model: DtrainModel;
  private _tracker: INotebookTracker;
}
