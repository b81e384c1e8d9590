"""Run one cell on every rank: prepare the ranks, execute, watch, stop them all on failure.

One async implementation (``run`` wraps it). While the ranks run, the runner sleeps until a
message for it arrives (``aio.Wakeup``), a view asks to be refreshed, or a deadline passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import Any

from ..cluster.launchers import LaunchSpec, get_launcher
from ..cluster.mpiexec_output import OutputFollower
from ..cluster.training_cluster import Report, TrainingCluster, quiet
from ..cluster.where import ask as ask_where
from ..config.options import RunOptions, format_ranks
from ..errors import BadOptions, RunInterrupted
from ..store import kernel_state
from ..store.records import RunStore, new_run_id
from .aio import Wakeup, run_sync
from .broadcasts import settle_broadcasts
from .cell_syntax import check_cell_syntax
from .death import DeathReader
from .gate import RunGate
from .outcome import (
    STATUS_OF_STOP,
    RunResult,
    exit_reason,
    first_failure,
    raise_for_result,
    retryable,
)
from .record import RunRecorder
from .replicas import check_replicas_code
from .script import Script
from .starting import ensure_cluster
from .state import RunState
from .stopping import follow, stop_ranks
from .transfer import collect_push, pull
from .view import RunView, ViewFactory, no_view
from .watch import RankWatch
from .where import WhereWatch

SETTLE = 0.25  # seconds the other ranks get to report after one fails, before the interrupt


class DistributedRunner:
    """Runs cells on a ``TrainingCluster``, showing each run in a view and recording it.

    Parameters
    ----------
    cluster
        The cluster to run on; started or resized as each cell's options require.
    grace
        Seconds the ranks get to stop after an interrupt before the cluster is restarted.
    """

    def __init__(self, cluster: TrainingCluster, grace: float = 10.0) -> None:
        self.cluster = cluster
        self.grace = grace
        self._stop_requested = False
        self.gate = RunGate()  # busy while a cell runs; what waits for it to end
        self._wake: Wakeup | None = None
        self._where: WhereWatch | None = None

    def request_stop(self) -> None:
        """Stop the running cell (Stop buttons): interrupt its ranks, or its cluster's start."""
        self._stop_requested = True
        self.cluster.abort_start.set()  # cleared as a start begins: it stops only this one
        if self._wake is not None:
            self._wake.set()

    def request_where(self) -> None:
        """Ask every rank where it is (the dashboard's button); the answer goes to the run."""
        if self._where is not None:
            self._where.request()
        if self._wake is not None:
            self._wake.set()

    def run(
        self, code: str | Script, options: RunOptions, namespace: dict[str, Any], **kwargs: Any
    ) -> RunResult:
        """Run ``code`` on every rank, blocking; see ``run_async``."""
        return run_sync(self.run_async(code, options, namespace, **kwargs))

    async def run_async(
        self,
        code: str | Script,
        options: RunOptions,
        namespace: dict[str, Any],
        *,
        spec: LaunchSpec | None = None,
        view: ViewFactory = no_view,
        report: Report = quiet,
        info: dict[str, Any] | None = None,
        notes: list[str] | None = None,
    ) -> RunResult:
        """Run ``code`` (a cell, or a ``Script``) on every rank, or on ``options.ranks``.

        Raises ``SyntaxError`` before anything is sent, ``BadOptions`` for names that cannot be
        pushed or pulled and ranks the cluster lacks, ``RankError`` if a rank fails,
        ``RunTimeoutError`` past ``options.timeout`` and ``RunInterrupted`` on a Stop.
        """
        script = code if isinstance(code, Script) else None
        if script is not None:
            code = script.code(options)
        assert isinstance(code, str)
        if not code.strip():
            raise BadOptions(
                "the cell is empty: put the code to run on every rank below %%distributed."
            )
        check_cell_syntax(code)
        values = collect_push(namespace, options.push)
        spec = spec or LaunchSpec(launcher=options.launcher)
        size = options.layout.ranks
        subset = options.subset(size)
        if not get_launcher(spec.launcher).owns_processes:  # the running cluster decides
            if options.max_restarts:
                raise BadOptions(
                    f"--max-restarts restarts a cluster started here, and the {spec.launcher} "
                    "launcher connects to one started elsewhere: use --max-restarts 0 with it."
                )
            await ensure_cluster(self.cluster, options.layout, spec, report)
            size = len(self.cluster.engines)
            subset = options.subset(size)
        ranks = list(subset) if subset is not None else list(range(size))
        run_id = new_run_id()
        state = RunState(
            run_id,
            ranks,
            {
                "backend": options.backend,
                "device": options.device,
                "launcher": spec.launcher,
                "nodes": options.nodes,
                "procs_per_node": options.procs_per_node,
                "cell": code if script is None else f"%distributed {script.command}",
                **({"script": script.command} if script is not None else {}),
                **({"ranks": format_ranks(ranks), "size": size} if subset is not None else {}),
                **({"max_restarts": options.max_restarts} if options.max_restarts else {}),
                **kernel_state.identity(),
                **(info or {}),
            },
            RunStore(run_id, ranks),
        )
        for note in notes or ():
            state.add_note(note)
        recorder = RunRecorder(state)
        self._stop_requested = False
        state.ask_where = self.request_where
        run_view = view(state, self.request_stop)
        result: RunResult | None = None
        error: BaseException | None = None
        self.gate.enter()
        try:

            def starting(message: str) -> None:
                report(message)
                state.set_status("starting cluster", message)
                recorder.save()
                self.cluster.publish_state("starting", run_id)
                run_view.refresh(force=True)

            attempt = functools.partial(
                self._attempt, code, ranks, values, options, state, run_view, recorder
            )
            await ensure_cluster(self.cluster, options.layout, spec, starting, run_view.refresh)
            result = await attempt()
            while retryable(result, len(state.attempts), options.max_restarts):
                if self._stop_requested:
                    break
                state.restart(exit_reason(result, options.timeout), result.failing_rank)
                recorder.save()
                run_view.refresh(force=True)
                result = None  # a restart that does not start ends the run with its error
                await ensure_cluster(self.cluster, options.layout, spec, starting, run_view.refresh)
                result = await attempt()
            result.restarts = len(state.attempts)
            owned = self.cluster.owns_processes
            if result.restarted and not self.cluster.running and owned:  # for a retry not made
                await ensure_cluster(self.cluster, options.layout, spec, starting, run_view.refresh)
            if script is not None:
                self.cluster.backends.resume_next = True  # it may have shut Horovod down
            if result.status == "succeeded" and options.check_replicas is not None:
                checked = await self._check_replicas(ranks, options, state, run_view, recorder)
                result = result if checked.status == "succeeded" else checked
            if result.status == "succeeded" and options.pull:
                result.pulled = pull(self.cluster.rank_view(ranks[0]), options.pull, ranks[0])
                namespace.update(result.pulled)
        except BaseException as e:
            error = e
            raise
        finally:
            recorder.finish(result, options.timeout, error)
            self.cluster.publish_state()
            run_view.close()
            self.gate.leave()
        raise_for_result(result, options.timeout)
        return result

    async def _attempt(
        self,
        code: str,
        ranks: list[int],
        values: dict[str, Any],
        options: RunOptions,
        state: RunState,
        view: RunView,
        recorder: RunRecorder,
    ) -> RunResult:
        """Run the cell once on the started cluster: initialise the backend, push, execute."""
        if self._stop_requested:  # as the cluster started: the cell does not run
            raise RunInterrupted("stopped as the cluster started; the cell did not run.")
        self.cluster.prepare_ranks((options.backend, options.device, options.procs_per_node))
        if values:
            self.cluster.view(ranks).push(values)
        state.info["device"] = self.cluster.device or options.device
        state.info["versions"] = self.cluster.backends.versions
        state.set_status("running")
        self.cluster.publish_state("busy", state.id)
        retry = len(state.attempts) < options.max_restarts
        return await self._execute(
            code, ranks, options.timeout, state, view, recorder, options.where_after, retry
        )

    async def _check_replicas(
        self,
        ranks: list[int],
        options: RunOptions,
        state: RunState,
        view: RunView,
        recorder: RunRecorder,
    ) -> RunResult:
        """``--check-replicas``: compare the models on every rank after the cell."""
        state.set_status("running", "checking that the replicas agree (--check-replicas)")
        checked = await self._execute(
            check_replicas_code(options.check_replicas or ()),
            ranks,
            options.timeout,
            state,
            view,
            recorder,
            options.where_after,
        )
        state.set_status("running")
        return checked

    async def _execute(
        self,
        code: str,
        ranks: list[int],
        timeout: float | None,
        state: RunState,
        view: RunView,
        recorder: RunRecorder,
        where_after: float | None = None,
        retry: bool = False,
    ) -> RunResult:
        """Execute ``code`` on ``ranks`` (some of them, if the state's info says: their
        collectives fail); on a failure, timeout or interrupt stop them all. With ``retry``, a
        cluster that lost a rank is stopped, not started again: the run's next attempt does."""
        client = self.cluster.client
        backends = self.cluster.backends
        some = state.info.get("ranks")
        engines = [self.cluster.engine_id(r) for r in ranks]
        where = self._where = WhereWatch(
            lambda: ask_where(client, engines, ranks),
            state.set_where,
            where_after,
            lambda: state.active_at,
        )
        mpiexec = OutputFollower(self.cluster.mpiexec_output_files())  # held open from here
        try:
            wake = self._wake = Wakeup(client)  # last: what it sets up, the finally undoes
        except BaseException:
            mpiexec.close()
            self._where = None
            raise
        try:
            started = time.monotonic()
            if some:
                backends.hold(self.cluster.view(), started)
            metadata = backends.cell_metadata(started, some)
            ars = dict(zip(ranks, client.execute_on(engines, code, metadata), strict=True))
            others = [r for r in range(len(self.cluster.engines)) if r not in ars]

            def end_wait(notice: dict[str, Any]) -> None:
                if not notice["ended"]:  # only the ranks out of it can (torch.distributed)
                    backends.abandon(self.cluster.view(others + notice["done"]))

            watch = RankWatch(
                ars,
                state,
                view,
                recorder,
                mpiexec,
                self.cluster.engines_exited,
                where,
                on_stuck=end_wait,
            )
            deadline = started + timeout if timeout else None
            try:
                stop = await follow(watch, wake, deadline, True, lambda: self._stop_requested)
            except (KeyboardInterrupt, asyncio.CancelledError):
                stop = "interrupted"
            restarted, death = False, None
            if stop is not None:
                state.set_status("stopping", f"{stop}: interrupting every rank")
                view.refresh(force=True)
                died = bool(watch.died)
                reader = DeathReader(self.cluster, watch)
                if died:
                    death = await reader.read()
                start_again = not (died and retry and not self._stop_requested)
                if stop == "failed" and not died:  # the others may be failing too, just now
                    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):  # Stop
                        await follow(watch, wake, time.monotonic() + SETTLE, False)
                restarted = await stop_ranks(
                    self.cluster, watch, wake, self.grace, died, start_again
                )
                if restarted and watch.died:  # Hydra's statuses come as its job is stopped
                    death = reader.after_stop(death)
                elif watch.died:  # a rank's error came first (gloo: "reset by peer")
                    death = await reader.read()
            if stop is None and watch.stuck:  # a collective's wait was ended, and caught
                restarted = await stop_ranks(self.cluster, watch, wake, self.grace)
            watch.drain()
            stop = settle_broadcasts(self.cluster, watch, restarted) or stop  # settle always
            backends.first_done = watch.first_done or time.monotonic()
            if death is not None:
                watch.blame(*death)
            outcomes = [watch.outcomes[r] for r in ranks]
            result = RunResult(
                STATUS_OF_STOP[stop], outcomes, time.monotonic() - started, restarted=restarted
            )
            result.failing_rank = death[0] if death is not None else first_failure(outcomes)
            result.started_elsewhere = not self.cluster.owns_processes
            return result
        finally:
            mpiexec.close()
            wake.close()
            self._wake = self._where = None
            state.ask_where = None
