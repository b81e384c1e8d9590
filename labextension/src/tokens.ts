/**
 * The command ids of the extension.
 */
export namespace CommandIDs {
  /** Run the active cell on every rank under `%%distributed`. */
  export const runCell = 'dtrain-magics:run-cell-distributed';
  /** Show the "Distributed training" sidebar. */
  export const openSidebar = 'dtrain-magics:open-sidebar';
}

/** The plugin id, also the key of its settings. */
export const PLUGIN_ID = 'dtrain-magics:plugin';

/**
 * A run's status. The same union as `RunStatus` in `dtrain_magics/store/schema.py` (a test
 * checks the two lists match); `lost` is the server's word for a run whose kernel exited.
 */
export type RunStatus =
  | 'starting cluster'
  | 'running'
  | 'stopping'
  | 'succeeded'
  | 'failed'
  | 'interrupted'
  | 'timed out'
  | 'lost';

/** How one rank's part of a run stands or ended (`RankStatus` in schema.py). */
export type RankStatus =
  'running' | 'ok' | 'error' | 'interrupted' | 'died' | 'killed';

/** A kernel's cluster as the sidebar shows it (`ClusterState` in schema.py). */
export type ClusterState = 'starting' | 'idle' | 'busy' | 'stopped' | 'broken';

/** The statuses of a run that is still going on (`ACTIVE_RUN` in schema.py). */
export const ACTIVE_RUN: RunStatus[] = [
  'starting cluster',
  'running',
  'stopping'
];

/** A kernel's cluster, as `GET /dtrain/clusters` lists it. */
export interface ICluster {
  kernel_id: string;
  kernel_pid: number;
  path: string;
  launcher: string;
  cluster_id: string | null;
  state: ClusterState;
  ranks: number;
  nodes: number;
  procs_per_node: number;
  engines_registered?: number;
  run_id?: string | null;
  updated: number;
}

/** A run, as `GET /dtrain/runs` lists it. */
export interface IRun {
  id: string;
  status: RunStatus;
  message: string;
  started: number | null;
  ended: number | null;
  elapsed: number | null;
  eta: number | null;
  ranks: number;
  progress: number | null;
  latest_metrics: { [name: string]: number };
  throughput: { [name: string]: number };
  failing_rank: number | null;
  failure: string;
  backend: string | null;
  device: string | null;
  launcher: string | null;
  kernel_id: string | null;
  cell_id: string | null;
  /** The execution count of the cell that started the run, as its prompt shows it. */
  execution_count: number | null;
  path: string | null;
  live: boolean;
}

/** The answer of `GET /dtrain/state`. */
export interface IState {
  clusters: ICluster[];
  runs: IRun[];
}

/** The extension's settings (schema/plugin.json). */
export interface ISettings {
  nodes: number;
  procsPerNode: number;
  pollInterval: number;
  insertMagic: boolean;
}

export const DEFAULT_SETTINGS: ISettings = {
  nodes: 0,
  procsPerNode: 0,
  pollInterval: 750,
  insertMagic: false
};
