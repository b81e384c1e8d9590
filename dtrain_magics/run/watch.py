"""Watching one execution: each rank's output, telemetry and end, pumped into the run state."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..cluster.mpiexec_output import ENGINE_EXITED, OutputFollower, stalled_ranks
from ..cluster.ranks import RankBackends
from ..config.options import format_ranks
from ..store.schema import RankOutput
from .outcome import RankOutcome, outcome_of
from .record import RunRecorder
from .state import RunState
from .view import RunView
from .where import WhereWatch, deadlock_phrase

log = logging.getLogger(__name__)
HOROVOD_SHUT_DOWN = "HorovodInternalError: Horovod has been shut down"
GLOO_CLOSED = "Connection closed by peer"  # a gloo wait ended by a peer's dropped group
TICK = 1.0  # seconds between the checks nothing wakes us for: stalls, run.json, elapsed time


class RankWatch:
    """The per-rank results of one execution: ``poll`` takes what arrived since the last call."""

    def __init__(
        self,
        ars: dict[int, Any],
        state: RunState,
        view: RunView,
        recorder: RunRecorder,
        mpiexec: OutputFollower | None = None,
        exited: Callable[[], bool] = lambda: False,
        where: WhereWatch | None = None,
        on_stuck: Callable[[dict[str, Any]], None] = lambda notice: None,
    ) -> None:
        self.ars = ars
        self.state = state
        self.view = view
        self.recorder = recorder
        self.mpiexec = mpiexec
        self.exited = exited  # mpiexec has exited: MPI aborted the job (a rank died)
        self.where = where  # asks the ranks where they are (the button, or no progress)
        self.on_stuck = on_stuck  # a rank of a cell on some ranks waits in a collective; its
        # notice comes with ``done``: the cell's ranks that ended (their groups may be waited on)
        self.stuck: dict[int, dict[str, Any]] = {}  # those ranks' notices (RankBackends)
        self.broadcasts: dict[int, int] = {}  # rank 0's broadcasts each rank took part in
        self.deadlocked: dict[str, Any] | None = None  # the where report's rank that waits
        self.outcomes: dict[int, RankOutcome] = {}
        self.first_done: float | None = None  # when the first rank ended (time.monotonic())
        self._seen = {(r, name): 0 for r in ars for name in ("stdout", "stderr")}
        self._seq = dict.fromkeys(ars, 0)
        self._ticked = time.monotonic()

    @property
    def pending(self) -> list[int]:
        return [r for r in self.ars if r not in self.outcomes]

    @property
    def done(self) -> bool:
        return len(self.outcomes) == len(self.ars)

    @property
    def died(self) -> list[int]:
        return [r for r, o in self.outcomes.items() if o.status == "died"]

    def poll(self, interrupted: bool = False) -> bool:
        """Take new output and telemetry; record finished ranks. True if a rank failed now."""
        failed = False
        for r in self.pending:
            ar = self.ars[r]
            if ar.ready():
                try:
                    ar.wait_for_output(timeout=2)
                except Exception:
                    log.debug("rank %d's output did not complete", r, exc_info=True)
                self._pump(r)
                self.state.set_outputs(r, _outputs(_metadata(ar)))
                outcome = self.outcomes[r] = self._outcome(r, outcome_of(r, ar, interrupted))
                self.first_done = self.first_done or time.monotonic()
                self.state.finish_rank(r, outcome.status, outcome.error)
                failed = failed or outcome.failed
                if self.stuck and self.pending:  # a wait may be on the group of the rank that ended
                    self._end_waits(next(iter(self.stuck.values())))
            else:
                self._pump(r)
        if self.pending and self.exited():
            # the ranks still running went down with the job; the engines' own end would be
            # noticed only when their heartbeats stop
            for r in self.pending:
                self._pump(r)
                self._set(RankOutcome(r, "died", ENGINE_EXITED))
            failed = True
        now = time.monotonic()
        if self.where is not None and self.pending:
            self.where.poll(now)
            found = self.where.deadlock
            if found is not None and self.deadlocked is None and not self._any_failed():
                self.deadlocked = found  # no rank can go on: stop them all
                failed = True
        if now - self._ticked >= TICK:
            self._ticked = now
            self._check_stalls()
            self.recorder.save()
        self.view.refresh()
        return failed

    def next_wake(self, now: float) -> float:
        """Seconds until the watch needs to run again though no message arrives."""
        due = self._ticked + TICK
        wanted = self.view.next_refresh(now)
        if wanted is not None:
            due = min(due, wanted)
        asked = self.where.next_wake(now) if self.where is not None else None
        if asked is not None:
            due = min(due, asked)
        return max(0.0, due - now)

    def drain(self) -> None:
        for r in self.ars:
            self._pump(r)
        stuck = self.deadlocked  # its wait, stopped (or killed: MPI's), is why the run failed
        ended = self.outcomes.get(stuck["rank"]) if stuck is not None else None
        if stuck is not None and ended is not None and ended.status in ("interrupted", "killed"):
            self._set(RankOutcome(stuck["rank"], "error", deadlock_phrase(stuck), "", True))
        if self.stuck:  # a wait another rank ended, unannounced (Horovod's shutdown, gloo's group)
            notice = next(iter(self.stuck.values()))
            for r, o in list(self.outcomes.items()):
                cut = o.error.startswith("HorovodInternalError") or GLOO_CLOSED in o.error
                if r not in self.stuck and cut:
                    self._set(RankOutcome(r, "error", notice["error"], notice["where"], True))
        self.view.refresh(force=True)

    def blame(self, rank: int, cause: str) -> None:
        """``rank`` died of ``cause``; the ranks that ended with it were stopped by MPI. When
        the cause is only that its engine exited (no report said which rank ended the job), the
        others whose engines exited stay dead: the error names them with it."""
        for r, o in list(self.outcomes.items()):
            if r == rank:
                self._set(RankOutcome(r, "died", cause))
            elif o.status == "killed" or (o.status == "died" and cause != ENGINE_EXITED):
                self._set(RankOutcome(r, "interrupted", f"stopped when rank {rank} died"))

    def _any_failed(self) -> bool:
        return any(o.failed for o in self.outcomes.values())

    def fail(self, rank: int, phrase: str) -> None:
        """``rank`` failed for a reason found after its cell ended (``phrase``, after "rank N")."""
        self._set(RankOutcome(rank, "error", phrase, phrased=True))

    def kill_pending(self) -> None:
        for r in self.pending:
            self._set(RankOutcome(r, "killed", "did not stop after an interrupt"))

    def _outcome(self, r: int, outcome: RankOutcome) -> RankOutcome:
        """A rank that waited in a collective failed for that, whatever the ended wait raised."""
        notice = self.stuck.get(r)
        if outcome.status != "error":
            return outcome
        if notice is not None:
            return RankOutcome(r, "error", notice["error"], notice["where"], phrased=True)
        ended = [o.rank for o in self.outcomes.values() if o.status == "ok"]
        if ended and outcome.error.startswith(HOROVOD_SHUT_DOWN):  # by a rank idle since
            which = f"rank {ended[0]}" if len(ended) == 1 else f"ranks {format_ranks(ended)}"
            whose = "its cell" if len(ended) == 1 else "their cells"
            phrase = (
                f"waited in a Horovod collective that {which} never joined: {whose} had ended "
                "(every rank must call each collective)"
            )
            return RankOutcome(r, "error", phrase, outcome.traceback, phrased=True)
        return outcome

    def _end_waits(self, notice: dict[str, Any]) -> None:
        self.on_stuck({**notice, "done": [r for r in self.ars if r in self.outcomes]})

    def _set(self, outcome: RankOutcome) -> None:
        self.outcomes[outcome.rank] = outcome
        self.state.finish_rank(outcome.rank, outcome.status, outcome.error)

    def _check_stalls(self) -> None:
        """Surface Horovod's stall warnings (they go to mpiexec's output, not to the cell)."""
        if self.mpiexec is None:
            return
        for rank in stalled_ranks(self.mpiexec.new_text()):
            self.state.add_stall(rank)

    def _pump(self, r: int) -> None:
        metadata = _metadata(self.ars[r])
        for name in ("stdout", "stderr"):
            text = metadata.get(name) or ""
            seen = self._seen[(r, name)]
            if len(text) > seen:
                self._seen[(r, name)] = len(text)
                self.state.add_output(r, text[seen:], name)
        data = metadata.get("data") or {}
        notice = RankBackends.take_stuck(data) if data else None
        if notice is not None:
            self.stuck[r] = notice
            self._end_waits(notice)
        if data and (count := RankBackends.take_broadcasts(data)):
            self.broadcasts[r] = count
        while True:
            payload = data.pop(f"dtrain-{self._seq[r]}", None)
            if payload is None:
                break
            self._seq[r] += 1
            self.state.add_telemetry(r, payload)


def _metadata(ar: Any) -> dict[str, Any]:
    """The metadata dict the client's receiving thread fills in, as it is: ``ar.metadata`` first
    parses its four dates with dateutil (0.1 ms each, 0.8 ms of a warm 2-rank cell), which
    nothing here reads; ``ar[key]`` also waits on the result's events."""
    raw = getattr(ar, "_metadata", None)
    return raw[0] if raw else ar.metadata  # type: ignore[no-any-return]


def _outputs(metadata: Any) -> list[RankOutput]:
    """What a finished rank displayed, then its cell's value, from its result's metadata."""
    outputs: list[RankOutput] = [
        {"output_type": "display_data", "data": o["data"], "metadata": o.get("metadata") or {}}
        for o in metadata.get("outputs") or []
        if o.get("data")
    ]
    value = metadata.get("execute_result")
    if value and value.get("data"):
        outputs.append(
            {
                "output_type": "execute_result",
                "data": value["data"],
                "metadata": value.get("metadata") or {},
            }
        )
    return outputs
