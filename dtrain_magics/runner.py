"""Run one cell on every rank: prepare the ranks, execute, watch, stop them all on failure."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .cluster import Report, TrainingCluster, _quiet
from .errors import RankError, RunInterrupted, RunTimeoutError
from .options import BadOptions, RunOptions
from .output import RankOutputPrinter

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
    """Runs cells on a ``TrainingCluster``.

    Parameters
    ----------
    cluster
        The cluster to run on; started or resized as each cell's options require.
    grace
        Seconds the ranks get to stop after an interrupt before the cluster is restarted.
    """

    def __init__(self, cluster: TrainingCluster, grace: float = 10.0, poll: float = 0.05) -> None:
        self.cluster = cluster
        self.grace = grace
        self.poll = poll

    # -- the whole run -----------------------------------------------------------------------

    def run(
        self,
        code: str,
        options: RunOptions,
        namespace: dict[str, Any],
        report: Report = _quiet,
        printer: RankOutputPrinter | None = None,
    ) -> RunResult:
        """Run ``code`` on every rank; raise ``RankError`` if a rank fails.

        Raises ``SyntaxError`` before anything is sent, ``BadOptions`` for names that cannot be
        pushed or pulled, ``RunTimeoutError`` past ``options.timeout`` and ``RunInterrupted``
        on a kernel interrupt.
        """
        options.validate()
        if not code.strip():
            raise BadOptions(
                "the cell is empty: put the code to run on every rank below %%distributed."
            )
        compile(code, CELL_FILENAME, "exec")
        values = collect_push(namespace, options.push)
        self.cluster.ensure(options.layout, report)
        self.prepare(options)
        if values:
            self.cluster.view().push(values)
        printer = printer or RankOutputPrinter()
        result = self.execute(code, options.timeout, printer)
        if result.status == "succeeded" and options.pull:
            result.pulled = self.pull(options.pull)
            namespace.update(result.pulled)
        raise_for_result(result, options.timeout)
        return result

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
            ar.get(timeout=timeout)
        except TimeoutError:
            self.cluster.stop()
            raise RankError(
                f"initialising {options.backend} did not finish on every rank within "
                f"{timeout:.0f} s; "
                "the cluster was stopped and the next cell starts a new one."
            ) from None
        except Exception as e:
            message = _first_remote_error(e)
            if "--device cuda" in message:
                raise BadOptions(message) from None
            raise RankError(f"initialising {options.backend} failed: {message}") from None
        self.cluster.backend_state = state

    def execute(self, code: str, timeout: float | None, printer: RankOutputPrinter) -> RunResult:
        """Execute ``code`` on every rank; on a failure, timeout or interrupt stop all ranks."""
        client = self.cluster.client
        ranks = range(len(self.cluster.engines))
        started = time.monotonic()
        ars = {
            r: client[self.cluster.engine_id(r)].execute(code, silent=False, block=False)
            for r in ranks
        }
        outcomes: dict[int, RankOutcome] = {}
        deadline = started + timeout if timeout else None
        try:
            stop = self._watch(ars, outcomes, printer, deadline, stop_on_failure=True)
        except KeyboardInterrupt:
            stop = "interrupted"
        restarted = False
        if stop is not None:
            restarted = self._stop_ranks(ars, outcomes, printer)
        printer.flush()
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
        return result

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

    def _watch(
        self,
        ars: dict[int, Any],
        outcomes: dict[int, RankOutcome],
        printer: RankOutputPrinter,
        deadline: float | None,
        stop_on_failure: bool,
        interrupted: bool = False,
    ) -> str | None:
        """Collect outcomes until every rank is done (None), a rank fails, or the deadline."""
        while True:
            self._pump(ars, printer)
            for r, ar in ars.items():
                if r not in outcomes and ar.ready():
                    outcomes[r] = _outcome(r, ar, interrupted)
                    if stop_on_failure and outcomes[r].status in ("error", "died"):
                        return "failed"
            if len(outcomes) == len(ars):
                return None
            if deadline is not None and time.monotonic() >= deadline:
                return "timeout"
            time.sleep(self.poll)

    def _pump(self, ars: dict[int, Any], printer: RankOutputPrinter) -> None:
        for r, ar in ars.items():
            for name in ("stdout", "stderr"):
                printer.feed(r, name, ar[name] or "")

    def _stop_ranks(
        self, ars: dict[int, Any], outcomes: dict[int, RankOutcome], printer: RankOutputPrinter
    ) -> bool:
        """Interrupt every running rank, then reset the backend; restart the cluster if the
        ranks do not come back. Returns True if the cluster was restarted."""
        pending = [r for r in ars if r not in outcomes]
        responsive = True
        if pending and self.cluster.running:
            try:
                self.cluster.interrupt(pending)
                self._watch(
                    ars,
                    outcomes,
                    printer,
                    time.monotonic() + self.grace,
                    stop_on_failure=False,
                    interrupted=True,
                )
            except KeyboardInterrupt:  # a second interrupt: do not wait any longer
                pass
            except Exception:
                responsive = False
        for r in ars:
            outcomes.setdefault(r, RankOutcome(r, "killed", "did not stop after an interrupt"))
        if responsive and all(o.status != "killed" for o in outcomes.values()) and self._reset():
            return False
        printer.flush()
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


def raise_for_result(result: RunResult, timeout: float | None) -> None:
    """Turn a non-successful result into the error the notebook shows."""
    restart_note = (
        " The ranks did not stop, so the cluster was restarted; rank namespaces were reset."
        if result.restarted
        else ""
    )
    if result.status == "succeeded":
        return
    if result.status == "interrupted":
        raise RunInterrupted(f"interrupted: every rank was stopped.{restart_note}")
    if result.status == "timed out":
        raise RunTimeoutError(
            f"the cell ran past --timeout {timeout:g} s and every rank was interrupted."
            f"{restart_note}"
        )
    failing = next(o for o in result.ranks if o.rank == result.failing_rank)
    others = [o.rank for o in result.ranks if o.status in ("interrupted", "killed")]
    stopped = ""
    if others:
        stopped = (
            f" Rank {others[0]} was interrupted."
            if len(others) == 1
            else (f" Ranks {_ranks(others)} were interrupted.")
        )
    if failing.status == "died":
        summary = f"rank {failing.rank} died: {failing.error}.{stopped}{restart_note}"
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
        if e.ename == "KeyboardInterrupt":
            return RankOutcome(rank, "interrupted", "KeyboardInterrupt")
        return RankOutcome(rank, "error", f"{e.ename}: {e.evalue}", _remote_traceback(e))
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


Printer = Callable[[str], None]
