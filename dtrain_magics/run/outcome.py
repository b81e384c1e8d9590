"""How a run ended: each rank's outcome, the run's result, and the error the notebook shows."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..cluster.mpiexec_output import ENGINE_EXITED
from ..errors import RankError, RunInterrupted, RunTimeoutError
from ..store.schema import RankStatus, RunStatus

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colours (IPython colours a rank's traceback and errors)."""
    return _ANSI.sub("", text)


Stop = Literal["failed", "timeout", "interrupted"]
"""Why the runner stopped the ranks before they all finished."""

STATUS_OF_STOP: dict[Stop | None, RunStatus] = {
    None: "succeeded",
    "failed": "failed",
    "timeout": "timed out",
    "interrupted": "interrupted",
}


@dataclass
class RankOutcome:
    """How one rank's execution ended."""

    rank: int
    status: RankStatus
    error: str = ""  # "ValueError: boom"
    traceback: str = ""
    phrased: bool = False  # ``error`` reads on from "rank N": "exited with code 3"

    @property
    def failed(self) -> bool:
        return self.status in ("error", "died")

    def phrase(self) -> str:
        """What happened to the rank, after "rank N": "failed with ValueError: boom"."""
        if self.phrased:
            return self.error
        return f"died ({self.error})" if self.status == "died" else f"failed with {self.error}"


@dataclass
class RunResult:
    """What a run did: overall status, each rank's outcome, wall time, pulled values."""

    status: RunStatus
    ranks: list[RankOutcome]
    wall_time: float
    failing_rank: int | None = None
    restarted: bool = False
    restarts: int = 0  # attempts before this one that a dead rank ended (--max-restarts)
    started_elsewhere: bool = False  # the cluster is not ours: stopping it only disconnects
    pulled: dict[str, Any] = field(default_factory=dict)

    @property
    def failing(self) -> RankOutcome | None:
        return next((o for o in self.ranks if o.rank == self.failing_rank), None)


PHRASED = (
    "ScriptExit",
    "ScriptSyntaxError",
    "CollectiveNeedsEveryRank",
    "ReplicasDiffer",
    "NothingToCheck",
)
"""Rank errors (``rank/script.py``, ``rank/subset.py``, ``rank/replicas.py``) whose message says
what the rank did."""


def first_failure(outcomes: list[RankOutcome]) -> int | None:
    """The rank to blame: the first that raised, else the first that died."""
    failed = sorted((o for o in outcomes if o.failed), key=lambda o: (o.status != "error", o.rank))
    return failed[0].rank if failed else None


def retryable(result: RunResult, restarts: int, max_restarts: int) -> bool:
    """Whether ``--max-restarts`` runs the cell again: a rank died (not an exception of the
    cell, a timeout or a stop) and fewer than ``max_restarts`` restarts were made."""
    failing = result.failing
    died = result.status == "failed" and failing is not None and failing.status == "died"
    return died and restarts < max_restarts


def outcome_of(rank: int, ar: Any, interrupted: bool) -> RankOutcome:
    """The outcome of ``rank``'s finished ``AsyncResult``."""
    from ipyparallel.error import EngineError, RemoteError

    try:
        ar.get(0)
        return RankOutcome(rank, "ok")
    except RemoteError as e:
        if e.ename == "EngineError":  # the engine process went away while running the cell
            return RankOutcome(rank, "died", ENGINE_EXITED)
        error = _error_line(e)
        if interrupted:  # stopped by us, however it ended
            return RankOutcome(rank, "interrupted", error)
        # a KeyboardInterrupt the runner did not cause (the cell raised it, or someone signalled
        # the rank) fails the rank like any other exception: the cell did not finish there
        if e.ename in PHRASED:  # the rank's own sentence: "exited with code 3"
            return RankOutcome(rank, "error", e.evalue, _remote_traceback(e), phrased=True)
        return RankOutcome(rank, "error", error, _remote_traceback(e))
    except EngineError as e:
        return RankOutcome(rank, "died", str(e).strip() or "its engine exited")
    except Exception as e:  # e.g. the cluster went away
        return RankOutcome(
            rank, "interrupted" if interrupted else "died", f"{type(e).__name__}: {e}"
        )


def _error_line(e: Any) -> str:
    """``ValueError: boom`` for a rank's error, without terminal colours, and what to do for
    errors with a known cause. An exception in IPython's display of the cell's value reaches
    the reply as ``NoneType: None``: the last line of the rank's traceback names it instead."""
    ename, evalue = str(e.ename), strip_ansi(str(e.evalue or ""))
    line = f"{ename}: {evalue}" if evalue else ename
    if ename == "NoneType":
        last = [t for t in strip_ansi(_remote_traceback(e)).splitlines() if t.strip()]
        line = last[-1].strip() if last and ":" in last[-1] else line
    hint = next((h for cause, h in HINTS.items() if cause in line), None)
    return f"{line.rstrip('.')} ({hint})" if hint else line


_TORCH_HINT = "torch.distributed is set up by --backend torch: run the cell with it"
HINTS = {  # part of an error's text → what to do
    "Default process group has not been initialized": _TORCH_HINT,
    "environment variable RANK expected": _TORCH_HINT,
}


def _remote_traceback(e: Any) -> str:
    if e.ename == "SystemExit":  # IPython's "use %tb to see the full traceback": not here
        return ""
    tb = e.traceback
    if isinstance(tb, list):
        tb = "\n".join(tb)
    return str(tb or "")


def exit_reason(result: RunResult, timeout: float | None) -> str:
    """One line for the run record: why the run ended."""
    if result.status == "succeeded":
        return "every rank finished"
    if result.status == "interrupted":
        return "interrupted by the user"
    if result.status == "timed out":
        return f"ran past --timeout {timeout:g} s"
    failing = result.failing
    assert failing is not None
    if failing.status == "error" and not failing.phrased:
        return f"rank {failing.rank} failed: {failing.error}"
    together = _died_with(result, failing)
    return f"rank {failing.rank} {failing.phrase()}{f'; {together.lower()}' if together else ''}"


def _listed(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks))


def _died_with(result: RunResult, failing: RankOutcome) -> str:
    """``Rank 0 died with it``, when no report said which of the dead ranks ended the job."""
    together = [o.rank for o in result.ranks if o.status == "died" and o.rank != failing.rank]
    if failing.status != "died" or not together:
        return ""
    which = f"Rank {together[0]}" if len(together) == 1 else f"Ranks {_listed(together)}"
    return f"{which} died with it"


def raise_for_result(result: RunResult, timeout: float | None) -> None:
    """Turn a result that is not a success into the error the notebook shows."""
    if result.status == "succeeded":
        return
    failing = result.failing
    restart_note = ""
    died = failing is not None and failing.status == "died"
    if result.restarted and result.started_elsewhere:
        why = "mpiexec ends the whole job when one rank dies" if died else "the ranks did not stop"
        restart_note = (
            f" As {why}, and the cluster was started elsewhere, the notebook disconnected from "
            "it: restart it (ipcluster stop, then ipcluster start), then run the cell."
        )
    elif result.restarted:
        restart_note = (
            " mpiexec ends the whole job when one rank dies, so the cluster was restarted; "
            "rank namespaces were reset."
            if died
            else " The ranks did not stop, so the cluster was restarted; rank namespaces were "
            "reset."
        )
    if result.restarts:
        times = "once" if result.restarts == 1 else f"{result.restarts} times"
        restart_note += f" The cell had been run again {times} after a rank died (--max-restarts)."
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
    if len(others) == 1:
        stopped = f" Rank {others[0]} was interrupted."
    elif others:
        stopped = f" Ranks {_listed(others)} were interrupted."
    together = _died_with(result, failing)
    if together:
        stopped += f" {together}; MPI did not say which failed first."
    raise RankError(
        f"rank {failing.rank} {failing.phrase().rstrip('.')}.{stopped}{restart_note}",
        failing.rank,
        failing.traceback,
    )
