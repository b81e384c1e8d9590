"""Run one cell on every rank: prepare the ranks, execute, watch, stop them all on failure."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import kernel_state, records
from .cluster import Report, TrainingCluster, _quiet
from .dashboard import Dashboard, make_dashboard
from .deaths import cause_of_death, mpiexec_output
from .errors import RankError, RunInterrupted, RunTimeoutError
from .launchers import LaunchSpec
from .options import BadOptions, RunOptions
from .records import RunRecord, RunStore, new_run_id
from .run_state import RunState
from .stalls import OutputFollower, stalled_ranks

T = TypeVar("T")
CELL_FILENAME = "<distributed cell>"


@dataclass
class RankOutcome:
    """How one rank's execution ended."""

    rank: int
    status: str  # ok | error | interrupted | died | killed
    error: str = ""  # "ValueError: boom"
    traceback: str = ""


@dataclass
class RunResult:
    """What a run did: overall status, each rank's outcome, wall time, pulled values."""

    status: str  # succeeded | failed | interrupted | timed out
    ranks: list[RankOutcome]
    wall_time: float
    failing_rank: int | None = None
    restarted: bool = False
    pulled: dict[str, Any] = field(default_factory=dict)


class DistributedRunner:
    """Runs cells on a ``TrainingCluster``, showing a live dashboard and recording each run.

    Parameters
    ----------
    cluster
        The cluster to run on; started or resized as each cell's options require.
    grace
        Seconds the ranks get to stop after an interrupt before the cluster is restarted.
    """

    def __init__(self, cluster: TrainingCluster, grace: float = 10.0, poll: float = 0.1) -> None:
        self.cluster = cluster
        self.grace = grace
        self.poll = poll
        self._stop_requested = False

    # -- the whole run -----------------------------------------------------------------------

    def run(
        self,
        code: str,
        options: RunOptions,
        namespace: dict[str, Any],
        report: Report = _quiet,
        widget: bool = True,
        spec: LaunchSpec | None = None,
        info: dict[str, Any] | None = None,
    ) -> RunResult:
        """Run ``code`` on every rank, blocking; see ``run_async``."""
        return drive(
            self.run_async(
                code, options, namespace, report, widget, sleep=SyncPause, spec=spec, info=info
            )
        )

    async def run_async(
        self,
        code: str,
        options: RunOptions,
        namespace: dict[str, Any],
        report: Report = _quiet,
        widget: bool = True,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        info: dict[str, Any] | None = None,
        spec: LaunchSpec | None = None,
    ) -> RunResult:
        """Run ``code`` on every rank; raise ``RankError`` if a rank fails.

        Raises ``SyntaxError`` before anything is sent, ``BadOptions`` for names that cannot be
        pushed or pulled, ``RunTimeoutError`` past ``options.timeout`` and ``RunInterrupted``
        on a kernel interrupt or the dashboard's Stop button.
        """
        options.validate()
        if not code.strip():
            raise BadOptions(
                "the cell is empty: put the code to run on every rank below %%distributed."
            )
        compile(code, CELL_FILENAME, "exec")
        values = collect_push(namespace, options.push)
        spec = spec or LaunchSpec(launcher=options.launcher)
        ranks = options.layout.ranks
        if spec.launcher == "profile":  # the running cluster decides how many ranks there are
            self.cluster.ensure(options.layout, report, spec)
            ranks = len(self.cluster.engines)
        run_id = new_run_id()
        store = RunStore(run_id, ranks)
        state = RunState(
            run_id,
            ranks,
            {
                "backend": options.backend,
                "device": options.device,
                "launcher": options.launcher,
                "nodes": options.nodes,
                "procs_per_node": options.procs_per_node,
                "cell": code,
                **kernel_state.identity(),
                **(info or {}),
            },
            store,
        )
        self._stop_requested = False
        dashboard = make_dashboard(state, self.request_stop, widget)
        result: RunResult | None = None
        try:

            def starting(message: str) -> None:
                report(message)
                state.set_status("starting cluster", message)
                store.write_summary(state.summary())
                self.cluster.publish_state("starting", run_id)
                dashboard.refresh(force=True)

            try:
                await self._ensure_cluster(options, starting, spec, sleep)
            except (KeyboardInterrupt, asyncio.CancelledError):
                raise RunInterrupted(
                    "interrupted while the cluster was starting: it was stopped and none of its "
                    "processes are left; the next cell starts a new one."
                ) from None
            self.prepare(options)
            if values:
                self.cluster.view().push(values)
            state.info["device"] = self.cluster.device or options.device
            state.set_status("running", "")
            self.cluster.publish_state("busy", run_id)
            result = await self._execute(code, options.timeout, state, dashboard, sleep)
            if result.status == "succeeded" and options.pull:
                result.pulled = self.pull(options.pull)
                namespace.update(result.pulled)
        finally:
            self._finish(state, result, options)
            self.cluster.publish_state()
            dashboard.close()
            store.close()
        raise_for_result(result, options.timeout)
        return result

    async def _ensure_cluster(
        self,
        options: RunOptions,
        report: Report,
        spec: LaunchSpec,
        sleep: Callable[[float], Awaitable[Any]],
    ) -> None:
        """Start or resize the cluster; in a kernel, in a worker thread the cell awaits.

        Awaiting keeps a kernel interrupt deliverable during the start: it sets the cluster's
        ``abort_start``, the start stops what it launched, and the interrupt propagates.
        """
        if sleep is SyncPause:  # plain IPython: Ctrl-C interrupts the start directly
            self.cluster.ensure(options.layout, report, spec)
            return
        messages: queue.SimpleQueue[str] = queue.SimpleQueue()
        failure: list[BaseException] = []

        def start() -> None:
            try:
                self.cluster.ensure(options.layout, messages.put, spec)
            except BaseException as e:  # re-raised in the notebook's thread
                failure.append(e)

        worker = threading.Thread(target=start, name="dtrain-start", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                while not messages.empty():
                    report(messages.get())  # widgets are updated from this (the main) thread
                await sleep(self.poll)
        except (KeyboardInterrupt, asyncio.CancelledError):
            self.cluster.abort_start.set()
            worker.join(timeout=60)
            raise KeyboardInterrupt from None
        while not messages.empty():
            report(messages.get())
        if failure:
            raise failure[0]

    def request_stop(self) -> None:
        """Ask the running cell to interrupt every rank (the dashboard's Stop button)."""
        self._stop_requested = True

    # -- steps -------------------------------------------------------------------------------

    def prepare(self, options: RunOptions, timeout: float = 120.0) -> None:
        """Initialise the backend and bind the per-rank names, unless already done."""
        state = (options.backend, options.device, options.procs_per_node)
        if self.cluster.backend_state == state:
            return
        from .rank.setup import init_rank

        self.cluster.backend_state = None
        view = self.cluster.view()
        ar = view.apply_async(
            init_rank,
            options.backend,
            options.device,
            options.procs_per_node,
            options.launcher == "local",
        )
        try:
            described = ar.get(timeout=timeout)
        except TimeoutError:
            self.cluster.stop()
            raise RankError(
                f"initialising {options.backend} did not finish on every rank within "
                f"{timeout:.0f} s; the cluster was stopped and the next cell starts a new one."
            ) from None
        except Exception as e:
            message = _first_remote_error(e)
            if "--device cuda" in message:
                raise BadOptions(message) from None
            raise RankError(f"initialising {options.backend} failed: {message}") from None
        self.cluster.backend_state = state
        self.cluster.device = ", ".join(sorted({d["device"] for d in described}))

    async def _execute(
        self,
        code: str,
        timeout: float | None,
        state: RunState,
        dashboard: Dashboard,
        sleep: Callable[[float], Awaitable[Any]],
    ) -> RunResult:
        """Execute ``code`` on every rank; on a failure, timeout or interrupt stop all ranks."""
        client = self.cluster.client
        ranks = range(len(self.cluster.engines))
        started = time.monotonic()
        ars = {
            r: client[self.cluster.engine_id(r)].execute(code, silent=False, block=False)
            for r in ranks
        }
        watch = _Watch(ars, state, dashboard, OutputFollower(self.cluster))
        deadline = started + timeout if timeout else None
        try:
            stop = await self._watch(watch, sleep, deadline, stop_on_failure=True)
        except (KeyboardInterrupt, asyncio.CancelledError):
            stop = "interrupted"
        restarted = False
        death = None
        if stop is not None:
            state.set_status("stopping", f"{stop}: interrupting every rank")
            dashboard.refresh(force=True)
            if watch.died:
                death = await self._cause_of_death(watch, sleep)
            restarted = await self._stop_ranks(watch, sleep, restart=bool(watch.died))
        watch.drain()
        if death is not None:
            watch.blame(*death)
        outcomes = watch.outcomes
        result = RunResult(
            status={
                None: "succeeded",
                "failed": "failed",
                "timeout": "timed out",
                "interrupted": "interrupted",
            }[stop],
            ranks=[outcomes[r] for r in ranks],
            wall_time=time.monotonic() - started,
            restarted=restarted,
        )
        result.failing_rank = next(
            (
                o.rank
                for o in sorted(result.ranks, key=_failure_order)
                if o.status in ("error", "died")
            ),
            None,
        )
        if death is not None:
            result.failing_rank = death[0]
        return result

    async def _cause_of_death(
        self, watch: _Watch, sleep: Callable[[float], Awaitable[Any]], wait: float = 5.0
    ) -> tuple[int, str] | None:
        """``(rank, cause)`` from mpiexec's report of the rank that died, if it makes one."""
        deadline = time.monotonic() + wait
        while True:
            try:
                death = cause_of_death(mpiexec_output(self.cluster))
            except OSError:
                return None
            if death is not None or time.monotonic() >= deadline:
                return death
            watch.poll(interrupted=True)
            await sleep(self.poll)

    def pull(self, names: tuple[str, ...]) -> dict[str, Any]:
        """Copy ``names`` from rank 0's namespace."""
        view = self.cluster.client[self.cluster.engine_id(0)]
        missing = view.apply_sync(_missing_names, list(names))
        if missing:
            raise BadOptions(
                f"--pull: rank 0 does not define {', '.join(missing)}; assign it in the cell "
                "or drop it from --pull."
            )
        try:
            values = view.pull(list(names), block=True)
        except Exception as e:
            raise BadOptions(
                f"--pull: could not copy {', '.join(names)} from rank 0: {_first_remote_error(e)}"
            ) from None
        return dict(zip(names, values, strict=True))

    # -- watching and stopping ---------------------------------------------------------------

    async def _watch(
        self,
        watch: _Watch,
        sleep: Callable[[float], Awaitable[Any]],
        deadline: float | None,
        stop_on_failure: bool,
        interrupted: bool = False,
    ) -> str | None:
        """Collect outcomes until every rank is done (None), a rank fails, or the deadline."""
        while True:
            failed = watch.poll(interrupted)
            if stop_on_failure and failed:
                return "failed"
            if watch.done:
                return None
            if stop_on_failure and self._stop_requested:
                return "interrupted"
            if deadline is not None and time.monotonic() >= deadline:
                return "timeout"
            await sleep(self.poll)

    async def _stop_ranks(
        self, watch: _Watch, sleep: Callable[[float], Awaitable[Any]], restart: bool = False
    ) -> bool:
        """Interrupt every running rank, then reset the backend; restart the cluster if the
        ranks do not come back, or at once with ``restart`` (a rank died: MPI aborts the job).
        Returns True if the cluster was restarted."""
        pending = watch.pending
        responsive = not restart
        if pending and responsive and self.cluster.running:
            try:
                self.cluster.interrupt(pending)
                await self._watch(
                    watch,
                    sleep,
                    time.monotonic() + self.grace,
                    stop_on_failure=False,
                    interrupted=True,
                )
            except (KeyboardInterrupt, asyncio.CancelledError):  # a second interrupt: stop waiting
                pass
            except Exception:
                responsive = False
        watch.kill_pending()
        if (
            responsive
            and all(o.status != "killed" for o in watch.outcomes.values())
            and self._reset()
        ):
            return False
        layout = self.cluster.layout
        self.cluster.stop()
        if layout is not None:
            self.cluster.start(layout)
        return True

    def _reset(self, timeout: float = 30.0) -> bool:
        """Reset the backend on every rank after an aborted cell; False if that failed."""
        if not self.cluster.running:
            return False
        from .rank.setup import reset_rank

        try:
            self.cluster.view().apply_async(reset_rank).get(timeout=timeout)
            return True
        except Exception:
            return False

    def _finish(self, state: RunState, result: RunResult | None, options: RunOptions) -> None:
        """Close the run's state and record, whatever happened."""
        if result is None:
            status, reason = "failed", "the run did not start (see the error below)"
            state.finish(status, failure=reason)
        else:
            status, reason = result.status, _exit_reason(result, options.timeout)
            failing = next((o for o in result.ranks if o.rank == result.failing_rank), None)
            state.finish(
                status,
                result.failing_rank,
                failing.error if failing else "",
                failing.traceback if failing else "",
            )
        state.store.write_summary(state.summary()) if state.store else None
        records.add(
            RunRecord(
                id=state.id,
                status=status,
                exit_reason=reason,
                wall_time=state.elapsed,
                ranks=state.summary()["ranks"],
                options=dict(state.info),
                dir=state.store.dir if state.store else Path(),
                failing_rank=state.failing_rank,
                log_paths=dict(state.store.log_paths) if state.store else {},
            )
        )


class _Watch:
    """The per-rank results of one execution, pumped into the run state and dashboard."""

    def __init__(
        self,
        ars: dict[int, Any],
        state: RunState,
        dashboard: Dashboard,
        mpiexec: OutputFollower | None = None,
    ) -> None:
        self.ars = ars
        self.state = state
        self.dashboard = dashboard
        self.mpiexec = mpiexec
        self._stall_checked = self._saved = time.monotonic()
        self.outcomes: dict[int, RankOutcome] = {}
        self._seen = {(r, name): 0 for r in ars for name in ("stdout", "stderr")}
        self._seq = dict.fromkeys(ars, 0)

    @property
    def pending(self) -> list[int]:
        return [r for r in self.ars if r not in self.outcomes]

    @property
    def done(self) -> bool:
        return len(self.outcomes) == len(self.ars)

    def poll(self, interrupted: bool) -> bool:
        """Take new output and telemetry; record finished ranks. True if a rank failed now."""
        failed = False
        for r in self.pending:
            ar = self.ars[r]
            if ar.ready():
                with contextlib.suppress(Exception):
                    ar.wait_for_output(timeout=2)
                self._pump(r)
                outcome = self.outcomes[r] = _outcome(r, ar, interrupted)
                self.state.finish_rank(r, outcome.status, outcome.error)
                failed = failed or outcome.status in ("error", "died")
            else:
                self._pump(r)
        self._check_stalls()
        self.dashboard.refresh()
        self._save_summary()
        return failed

    def _save_summary(self, every: float = 1.0) -> None:
        """Keep ``run.json`` current (the lab extension's sidebar reads it) about once a second."""
        now = time.monotonic()
        if self.state.store is None or now - self._saved < every:
            return
        self._saved = now
        with contextlib.suppress(OSError):
            self.state.store.write_summary(self.state.summary())

    def _check_stalls(self, every: float = 1.0) -> None:
        """Surface Horovod's stall warnings (they go to mpiexec's output, not to the cell)."""
        now = time.monotonic()
        if self.mpiexec is None or now - self._stall_checked < every:
            return
        self._stall_checked = now
        for rank in stalled_ranks(self.mpiexec.new_text()):
            self.state.add_stall(rank)

    def drain(self) -> None:
        for r in self.ars:
            self._pump(r)
        self.dashboard.refresh(force=True)

    @property
    def died(self) -> list[int]:
        return [r for r, o in self.outcomes.items() if o.status == "died"]

    def blame(self, rank: int, cause: str) -> None:
        """``rank`` died of ``cause``; the ranks that ended with it were stopped by MPI."""
        for r, o in list(self.outcomes.items()):
            if r == rank:
                self.outcomes[r] = RankOutcome(r, "died", cause)
                self.state.finish_rank(r, "died", cause)
            elif o.status in ("died", "killed"):
                self.outcomes[r] = RankOutcome(r, "interrupted", f"stopped when rank {rank} died")
                self.state.finish_rank(r, "interrupted", f"stopped when rank {rank} died")

    def kill_pending(self) -> None:
        for r in self.pending:
            self.outcomes[r] = RankOutcome(r, "killed", "did not stop after an interrupt")
            self.state.finish_rank(r, "killed", "did not stop after an interrupt")

    def _pump(self, r: int) -> None:
        # the metadata dict the client's receiving thread fills in (``ar[key]`` would also wait
        # on the result's events, three times per rank and poll)
        metadata = self.ars[r].metadata
        for name in ("stdout", "stderr"):
            text = metadata.get(name) or ""
            seen = self._seen[(r, name)]
            if len(text) > seen:
                self._seen[(r, name)] = len(text)
                self.state.add_output(r, text[seen:], name)
        data = metadata.get("data") or {}
        while True:
            payload = data.pop(f"dtrain-{self._seq[r]}", None)
            if payload is None:
                break
            self._seq[r] += 1
            self.state.add_telemetry(r, payload)


class SyncPause:
    """What ``drive`` sleeps on: ``await SyncPause(seconds)`` outside an event loop."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __await__(self) -> Generator[SyncPause, None, None]:
        yield self


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that only awaits ``SyncPause``, blocking; Ctrl-C is thrown into it."""
    value: Any = None
    throw: BaseException | None = None
    while True:
        try:
            pause = coro.throw(throw) if throw is not None else coro.send(value)
        except StopIteration as stop:
            return stop.value
        throw = None
        try:
            time.sleep(pause.seconds)
        except KeyboardInterrupt as e:
            throw = e


def _exit_reason(result: RunResult, timeout: float | None) -> str:
    if result.status == "succeeded":
        return "every rank finished"
    if result.status == "interrupted":
        return "interrupted by the user"
    if result.status == "timed out":
        return f"ran past --timeout {timeout:g} s"
    failing = next(o for o in result.ranks if o.rank == result.failing_rank)
    if failing.status == "died":
        return f"rank {failing.rank} died ({failing.error})"
    return f"rank {failing.rank} failed: {failing.error}"


def raise_for_result(result: RunResult | None, timeout: float | None) -> None:
    """Turn a non-successful result into the error the notebook shows."""
    assert result is not None
    restart_note = (
        " The ranks did not stop, so the cluster was restarted; rank namespaces were reset."
        if result.restarted
        else ""
    )
    if result.status == "succeeded":
        return
    failing = next((o for o in result.ranks if o.rank == result.failing_rank), None)
    if result.restarted and failing is not None and failing.status == "died":
        restart_note = (
            " MPI ends the whole job when one rank dies, so the cluster was restarted; "
            "rank namespaces were reset."
        )
    if result.status == "interrupted":
        raise RunInterrupted(f"interrupted: every rank was stopped.{restart_note}")
    if result.status == "timed out":
        raise RunTimeoutError(
            f"the cell ran past --timeout {timeout:g} s and every rank was interrupted."
            f"{restart_note}"
        )
    assert failing is not None
    others = [o.rank for o in result.ranks if o.status in ("interrupted", "killed")]
    stopped = ""
    if others:
        stopped = (
            f" Rank {others[0]} was interrupted."
            if len(others) == 1
            else (f" Ranks {_ranks(others)} were interrupted.")
        )
    if failing.status == "died":
        summary = f"rank {failing.rank} died ({failing.error}).{stopped}{restart_note}"
    else:
        summary = f"rank {failing.rank} failed with {failing.error}.{stopped}{restart_note}"
    raise RankError(summary, failing.rank, failing.traceback)


def collect_push(namespace: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The values of ``names`` from the notebook, checked to be defined and serialisable."""
    from ipyparallel.serialize import serialize_object

    values = {}
    for name in names:
        if name not in namespace:
            raise BadOptions(f"--push: {name} is not defined in the notebook; define it first.")
        try:
            serialize_object(namespace[name])
        except Exception as e:
            raise BadOptions(
                f"--push: {name} cannot be sent to the ranks ({type(e).__name__}: {e})."
            ) from None
        values[name] = namespace[name]
    return values


def _missing_names(names: list[str]) -> list[str]:
    """Runs on a rank: which of ``names`` its namespace lacks."""
    from IPython import get_ipython

    ns = get_ipython().user_ns
    return [n for n in names if n not in ns]


def _outcome(rank: int, ar: Any, interrupted: bool) -> RankOutcome:
    from ipyparallel.error import EngineError, RemoteError

    try:
        ar.get(0)
        return RankOutcome(rank, "ok")
    except RemoteError as e:
        if e.ename == "EngineError":  # the engine process went away while running the cell
            return RankOutcome(rank, "died", "its engine process exited")
        if e.ename == "KeyboardInterrupt":
            return RankOutcome(rank, "interrupted", "KeyboardInterrupt")
        error = f"{e.ename}: {e.evalue}" if e.evalue else str(e.ename)
        return RankOutcome(rank, "error", error, _remote_traceback(e))
    except EngineError as e:
        return RankOutcome(rank, "died", str(e).strip() or "its engine exited")
    except Exception as e:  # e.g. the cluster went away
        status = "interrupted" if interrupted else "died"
        return RankOutcome(rank, status, f"{type(e).__name__}: {e}")


def _remote_traceback(e: Any) -> str:
    tb = e.traceback
    if isinstance(tb, list):
        tb = "\n".join(tb)
    return str(tb or "")


def _first_remote_error(e: BaseException) -> str:
    """``ename: evalue`` of the first remote error inside ``e``."""
    inner = getattr(e, "elist", None)
    if inner:
        ename, evalue = inner[0][0], inner[0][1]
        return f"{ename}: {evalue}" if ename not in ("RuntimeError",) else str(evalue)
    ename = getattr(e, "ename", None)
    if ename:
        return str(e.evalue) if ename == "RuntimeError" else f"{ename}: {e.evalue}"  # type: ignore[attr-defined]
    return f"{type(e).__name__}: {e}"


def _failure_order(o: RankOutcome) -> tuple[int, int]:
    return (0 if o.status == "error" else 1, o.rank)


def _ranks(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks))
