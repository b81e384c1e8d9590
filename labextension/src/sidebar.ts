import { showErrorMessage } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { DtrainModel } from './model';
import { ACTIVE_RUN, ICluster, IRun } from './tokens';

/** Opens a notebook at the cell that started a run. */
export type OpenCell = (path: string, cellId: string | null) => Promise<void>;

/**
 * The "Distributed training" sidebar: clusters with Stop/Restart, runs with progress and Stop.
 */
export class DtrainSidebar extends Widget {
  constructor(model: DtrainModel, openCell: OpenCell) {
    super();
    this._model = model;
    this._openCell = openCell;
    this.addClass('dtrain-Sidebar');
    this.title.caption = 'Distributed training';
    model.changed.connect(this._render, this);
    this._render();
  }

  dispose(): void {
    this._model.changed.disconnect(this._render, this);
    super.dispose();
  }

  private _render(): void {
    const node = this.node;
    node.textContent = '';
    node.appendChild(
      element('h2', 'dtrain-Sidebar-title', 'Distributed training')
    );
    if (this._model.error) {
      node.appendChild(
        element('div', 'dtrain-Sidebar-error', `Server: ${this._model.error}`)
      );
    }
    node.appendChild(element('h3', 'dtrain-Sidebar-heading', 'Clusters'));
    const clusters = this._model.clusters;
    if (!clusters.length) {
      node.appendChild(
        element(
          'div',
          'dtrain-Sidebar-empty',
          'No cluster: run a %%distributed cell to start one.'
        )
      );
    }
    for (const cluster of clusters) {
      node.appendChild(this._cluster(cluster));
    }
    node.appendChild(element('h3', 'dtrain-Sidebar-heading', 'Runs'));
    const runs = this._model.runs;
    if (!runs.length) {
      node.appendChild(element('div', 'dtrain-Sidebar-empty', 'No runs yet.'));
    }
    for (const run of runs) {
      node.appendChild(this._run(run));
    }
  }

  private _cluster(cluster: ICluster): HTMLElement {
    const row = element('div', 'dtrain-Cluster');
    row.dataset.kernelId = cluster.kernel_id;
    row.dataset.state = cluster.state;
    row.dataset.clusterId = cluster.cluster_id ?? '';
    const head = element('div', 'dtrain-Row-head');
    const name = element('span', 'dtrain-Row-name', notebookName(cluster.path));
    name.title = cluster.path || 'no notebook';
    head.appendChild(name);
    head.appendChild(badge(cluster.state));
    row.appendChild(head);
    row.appendChild(
      element(
        'div',
        'dtrain-Row-detail',
        `${cluster.launcher} · ${clusterText(cluster)}`
      )
    );
    const actions = element('div', 'dtrain-Row-actions');
    if (cluster.state !== 'stopped') {
      actions.appendChild(
        button('Stop', 'Stop this cluster', () =>
          this._model.clusterAction(cluster.kernel_id, 'stop')
        )
      );
      actions.appendChild(
        button('Restart', 'Restart this cluster', () =>
          this._model.clusterAction(cluster.kernel_id, 'restart')
        )
      );
    }
    row.appendChild(actions);
    return row;
  }

  private _run(run: IRun): HTMLElement {
    const row = element('div', 'dtrain-Run');
    row.dataset.runId = run.id;
    row.dataset.status = run.status;
    row.title = run.path
      ? `Open ${run.path} at the cell of this run`
      : 'The notebook of this run is not open in this server';
    const head = element('div', 'dtrain-Row-head');
    const name = element(
      'span',
      'dtrain-Row-name',
      notebookName(run.path ?? '')
    );
    name.title = run.path ?? 'no notebook';
    head.appendChild(name);
    head.appendChild(badge(run.status));
    row.appendChild(head);
    row.appendChild(element('div', 'dtrain-Run-where', runPlace(run)));
    const bar = document.createElement('progress');
    bar.className = 'dtrain-Run-progress';
    bar.max = 1;
    if (run.progress !== null) {
      bar.value = run.progress;
    } else if (!ACTIVE_RUN.includes(run.status)) {
      bar.value = run.status === 'succeeded' ? 1 : 0;
    }
    row.appendChild(bar);
    row.appendChild(element('div', 'dtrain-Row-detail', runText(run)));
    const metrics = Object.entries(run.latest_metrics)
      .slice(0, 4)
      .map(([name, value]) => `${name} ${formatNumber(value)}`)
      .join(' · ');
    if (metrics) {
      row.appendChild(element('div', 'dtrain-Run-metrics', metrics));
    }
    if (run.failing_rank !== null || run.failure) {
      const rank =
        run.failing_rank !== null ? `rank ${run.failing_rank}: ` : '';
      row.appendChild(
        element('div', 'dtrain-Run-failure', `${rank}${run.failure}`)
      );
    }
    if (run.live && ACTIVE_RUN.includes(run.status)) {
      const actions = element('div', 'dtrain-Row-actions');
      actions.appendChild(
        button('Stop', 'Interrupt every rank of this run', () =>
          this._model.stopRun(run.id)
        )
      );
      row.appendChild(actions);
    }
    row.addEventListener('click', event => {
      if ((event.target as HTMLElement).closest('button') || !run.path) {
        return;
      }
      void this._openCell(run.path, run.cell_id);
    });
    return row;
  }

  private _model: DtrainModel;
  private _openCell: OpenCell;
}

function element(tag: string, className: string, text = ''): HTMLElement {
  const node = document.createElement(tag);
  node.className = className;
  if (text) {
    node.textContent = text;
  }
  return node;
}

function badge(state: string): HTMLElement {
  const node = element('span', 'dtrain-Badge', state);
  node.dataset.state = state;
  return node;
}

function button(
  label: string,
  title: string,
  action: () => Promise<void>
): HTMLButtonElement {
  const node = document.createElement('button');
  node.className = 'jp-Button jp-mod-styled jp-mod-reject dtrain-Button';
  node.textContent = label;
  node.title = title;
  node.addEventListener('click', async event => {
    event.stopPropagation();
    node.disabled = true;
    try {
      await action();
    } catch (error) {
      await showErrorMessage(`${label} failed`, error as Error);
    } finally {
      node.disabled = false;
    }
  });
  return node;
}

/** "1 rank", "2 ranks". */
export function plural(n: number, noun: string): string {
  return n === 1 ? `${n} ${noun}` : `${n} ${noun}s`;
}

/** Seconds as the dashboard shows them: "9 s", "1:15". */
export function duration(seconds: number): string {
  const whole = Math.floor(seconds);
  if (whole < 60) {
    return `${whole} s`;
  }
  const rest = whole % 60;
  return `${Math.floor(whole / 60)}:${rest < 10 ? '0' : ''}${rest}`;
}

/** "2 ranks · idle" and the like. */
export function clusterText(cluster: ICluster): string {
  if (cluster.state === 'stopped') {
    return 'stopped';
  }
  return `${plural(cluster.ranks, 'rank')} · ${cluster.state}`;
}

/** Where a run came from: "cell [3] · started 14:02:31". */
function runPlace(run: IRun): string {
  const parts = [];
  if (run.execution_count !== null) {
    parts.push(`cell [${run.execution_count}]`);
  }
  if (run.started !== null) {
    parts.push(`started ${new Date(run.started * 1000).toLocaleTimeString()}`);
  }
  return parts.join(' · ');
}

function runText(run: IRun): string {
  const parts = [plural(run.ranks, 'rank')];
  if (run.backend) {
    parts.push(run.backend);
  }
  if (run.elapsed !== null) {
    parts.push(duration(run.elapsed));
  }
  if (run.progress !== null) {
    parts.push(`${Math.round(run.progress * 100)}%`);
  }
  if (run.eta !== null && ACTIVE_RUN.includes(run.status)) {
    parts.push(`ETA ${duration(run.eta)}`);
  }
  return parts.join(' · ');
}

function notebookName(path: string): string {
  return path ? (path.split('/').pop() ?? path) : '(no notebook)';
}

function formatNumber(value: number): string {
  return Math.abs(value) >= 100 || Number.isInteger(value)
    ? value.toFixed(0)
    : value.toPrecision(3);
}
