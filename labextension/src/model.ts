import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { requestAPI } from './handler';
import { ICluster, IRun, IState } from './tokens';

/**
 * The clusters and runs of this server, polled from `/dtrain/state` with back-off on errors.
 */
export class DtrainModel {
  constructor(interval: number) {
    this._poll = new Poll<void, Error, 'standby'>({
      auto: true,
      factory: () => this._fetch(),
      frequency: { interval, backoff: true, max: 60 * 1000 },
      name: 'dtrain-magics:state',
      standby: 'when-hidden'
    });
  }

  /** Emitted after every poll, successful or not. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get clusters(): ICluster[] {
    return this._state.clusters;
  }

  get runs(): IRun[] {
    return this._state.runs;
  }

  /** The last error of the server API, or `null` when it answered. */
  get error(): string | null {
    return this._error;
  }

  /** The cluster of a kernel, if it has one. */
  clusterOf(kernelId: string | undefined): ICluster | undefined {
    return this._state.clusters.find(c => c.kernel_id === kernelId);
  }

  /** Milliseconds between polls while the server answers. */
  set interval(value: number) {
    this._poll.frequency = { ...this._poll.frequency, interval: value };
  }

  /** Poll now. */
  refresh(): Promise<void> {
    return this._poll.refresh();
  }

  /** Interrupt a run (its kernel is interrupted, as the notebook's stop button does). */
  async stopRun(runId: string): Promise<void> {
    await requestAPI(`runs/${encodeURIComponent(runId)}/stop`, {
      method: 'POST'
    });
    await this.refresh();
  }

  /** Stop or restart the cluster of a kernel. */
  async clusterAction(
    kernelId: string,
    action: 'stop' | 'restart'
  ): Promise<void> {
    await requestAPI(`clusters/${encodeURIComponent(kernelId)}/${action}`, {
      method: 'POST'
    });
    await this.refresh();
  }

  dispose(): void {
    this._poll.dispose();
  }

  private async _fetch(): Promise<void> {
    try {
      this._state = await requestAPI<IState>('state');
      this._error = null;
    } catch (error) {
      this._error = (error as Error).message;
      throw error; // the poll backs off
    } finally {
      this._changed.emit();
    }
  }

  private _poll: Poll<void, Error, 'standby'>;
  private _state: IState = { clusters: [], runs: [] };
  private _error: string | null = null;
  private _changed = new Signal<this, void>(this);
}
