"""The live state of one run: fed by the runner, shown by the views, saved as its record."""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..store.records import RunStore
from ..store.schema import (
    AttemptSummary,
    RankOutput,
    RankStatus,
    RankSummary,
    RunStatus,
    RunSummary,
    ValueSummary,
)
from .series import MetricSeries
from .straggler import StepSplit, StepTimes, Straggler, find_straggler
from .where import WhereReport, report_lines

SAMPLE_COUNTS = ("samples", "batch_size")  # logged sample counts: they feed samples/s

OUTPUT_LINES = 200  # lines of output kept per rank for display; the log file has everything


@dataclass
class RankState:
    """Progress, output and status of one rank."""

    rank: int
    status: RankStatus = "running"
    n: int = 0
    total: int | None = None
    desc: str = ""
    rate: float = 0.0
    error: str = ""
    lines: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=OUTPUT_LINES))
    line_count: int = 0
    samples: float = 0.0
    steps: int = 0
    messages: int = 0
    first_time: float | None = None
    last_time: float | None = None
    times: StepTimes = field(default_factory=StepTimes)
    split: StepSplit | None = None
    _partial: dict[str, str] = field(default_factory=dict)


class RunState:
    """Everything known about a run while it happens."""

    def __init__(
        self,
        run_id: str,
        ranks: int | Sequence[int],
        info: dict[str, Any],
        store: RunStore | None = None,
    ) -> None:
        self.id = run_id
        self.info = info  # backend, device, layout, cell, where settings came from ...
        self.status: RunStatus = "starting cluster"
        self.message = ""
        self.notes: list[str] = []  # sentences the run's final output shows (a restart, ...)
        self.attempts: list[AttemptSummary] = []  # the attempts that ended (--max-restarts)
        self.started = time.time()
        self.ended: float | None = None
        # every rank of the cluster, or the ranks a cell on some of them runs on
        self.ranks = [RankState(r) for r in (range(ranks) if isinstance(ranks, int) else ranks)]
        self._by_rank = {r.rank: r for r in self.ranks}
        self.outputs: dict[int, list[RankOutput]] = {}  # each rank's displays and cell value
        self.series: dict[str, MetricSeries] = {}
        self.latest: dict[str, dict[int, float]] = {}
        self.failing_rank: int | None = None
        self.failure = ""
        self.traceback = ""
        self.dropped = 0
        self.stalled: list[int] = []  # ranks Horovod reported as stalling
        self.where: WhereReport | None = None  # the last "where are the ranks?" report
        self.straggler: Straggler | None = None
        self.active_at = time.monotonic()  # the last output or telemetry of a rank
        self.ask_where: Callable[[], None] | None = None  # set by the runner while it runs
        self.version = 0
        self.store = store

    # -- feeding ----------------------------------------------------------------------------

    def set_status(self, status: RunStatus, message: str = "") -> None:
        self.status, self.message = status, message
        self.version += 1

    def add_note(self, note: str) -> None:
        """A sentence for the run's final output."""
        self.notes.append(note)
        self.version += 1

    @property
    def max_restarts(self) -> int:
        """``--max-restarts`` of this run (0 without it)."""
        return int(self.info.get("max_restarts") or 0)

    def restart(self, cause: str, failing_rank: int | None) -> None:
        """The attempt running now ended with ``cause`` and the cell runs again on a restarted
        cluster: every rank runs anew, so its progress and its cell's value start again;
        metrics and output carry on."""
        self._end_attempt("failed", cause, failing_rank)
        for r in self.ranks:  # step times start again: a new process counts from its start
            r.status, r.error, r.times, r.split = "running", "", StepTimes(), None
            r.n, r.total, r.rate = 0, None, 0.0
        self.outputs = {}  # values of the attempt that died: the namespaces that held them are gone
        self.straggler = None
        self.set_status("starting cluster", f"restart {len(self.attempts)}: {cause}")

    def _end_attempt(self, status: RunStatus, cause: str, failing_rank: int | None) -> None:
        started = self.attempts[-1]["ended"] if self.attempts else self.started
        attempt: AttemptSummary = {
            "attempt": len(self.attempts) + 1,
            "started": started,
            "ended": time.time(),
            "status": status,
            "cause": cause,
            "failing_rank": failing_rank,
        }
        self.attempts.append(attempt)
        self.version += 1

    def add_output(self, rank: int, text: str, stream: str = "stdout") -> None:
        """Append newly printed text of ``rank`` on ``stream`` (stdout or stderr)."""
        if not text:
            return
        state = self._by_rank[rank]
        self.active_at = time.monotonic()
        if self.store is not None:
            self.store.append_log(rank, text)
        *lines, state._partial[stream] = (state._partial.get(stream, "") + text).split("\n")
        state.lines.extend((stream, line) for line in lines)
        state.line_count += len(lines)
        self.version += 1

    def add_telemetry(self, rank: int, payload: dict[str, Any]) -> None:
        """Take one coalesced message from ``rank``: metric points and progress."""
        state = self._by_rank[rank]
        state.messages += 1
        self.active_at = time.monotonic()
        timing = payload.get("timing")
        if timing:
            state.times.add(timing)
            state.split = state.times.split()
            splits = {r.rank: r.split for r in self.ranks if r.split is not None}
            self.straggler = find_straggler(splits)
        points = payload.get("points") or []
        self.dropped += int(payload.get("dropped") or 0)
        by_name = self.series
        last: dict[str, float] = {}  # each name's last value in this message
        for step, name, value, _ in points:  # for every point: kept to a dict lookup and add
            series = by_name.get(name)
            if series is None:
                series = by_name[name] = MetricSeries()
            series.add(step, value)
            last[name] = value
        for name, value in last.items():
            self.latest.setdefault(name, {})[rank] = value
        if any(name in last for name in SAMPLE_COUNTS):
            state.samples += sum(p[2] for p in points if p[1] in SAMPLE_COUNTS)
        if points:
            state.steps = max(state.steps, max(p[0] for p in points) + 1)
            if state.first_time is None:
                state.first_time = points[0][3]
            state.last_time = points[-1][3]
            if self.store is not None:
                self.store.append_points(rank, points)
        progress = payload.get("progress")
        if progress:
            state.n, state.total = progress["n"], progress["total"]
            state.desc, state.rate = progress["desc"], progress["rate"]
        self.version += 1

    def add_stall(self, rank: int) -> None:
        """Horovod reported that the other ranks wait for ``rank`` in a collective."""
        if rank not in self.stalled:
            self.stalled.append(rank)
            self.message = (
                f"rank {rank} is stalling: the other ranks wait for it in a "
                "collective (Horovod stall warning)"
            )
            self.version += 1

    def set_outputs(self, rank: int, outputs: list[RankOutput]) -> None:
        """What ``rank`` displayed and the value of its cell's last expression (mime bundles
        its IPython formatted, as a plain cell shows them)."""
        if outputs:
            self.outputs[rank] = outputs
            self.version += 1

    @property
    def straggler_rank(self) -> int | None:
        return self.straggler.rank if self.straggler is not None else None

    def set_where(self, report: WhereReport) -> None:
        """Where the ranks are (asked by the user, or after a time without progress)."""
        self.where = report
        self.version += 1

    def where_lines(self) -> list[str]:
        return report_lines(self.where) if self.where else []

    def finish_rank(self, rank: int, status: RankStatus, error: str = "") -> None:
        state = self._by_rank[rank]
        state.status, state.error = status, error
        for stream, rest in state._partial.items():
            if rest:
                state.lines.append((stream, rest))
                state.line_count += 1
        state._partial.clear()
        self.version += 1

    def finish(
        self,
        status: RunStatus,
        failing_rank: int | None = None,
        failure: str = "",
        traceback: str = "",
        reason: str = "",
    ) -> None:
        self._end_attempt(status, reason or failure, failing_rank)
        self.ended = self.attempts[-1]["ended"]
        self.failing_rank, self.failure, self.traceback = failing_rank, failure, traceback
        self.set_status(status)

    # -- reading ----------------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        return (self.ended or time.time()) - self.started

    @property
    def finished(self) -> bool:
        return self.ended is not None

    def output_groups(self) -> list[tuple[list[int], list[RankOutput]]]:
        """The ranks' outputs, ranks with the same ones together, in rank order."""
        groups: dict[str, tuple[list[int], list[RankOutput]]] = {}
        for rank in sorted(self.outputs):
            key = json.dumps(self.outputs[rank], sort_keys=True, default=str)
            groups.setdefault(key, ([], self.outputs[rank]))[0].append(rank)
        return list(groups.values())

    def values(self) -> list[ValueSummary]:
        """Each distinct value of the cell's last expression (as text) and the ranks that had it."""
        values: list[ValueSummary] = []
        for ranks, outputs in self.output_groups():
            for output in outputs:
                if output["output_type"] == "execute_result":
                    values.append({"ranks": ranks, "text": output["data"].get("text/plain", "")})
        return values

    def eta(self) -> float | None:
        """Seconds left, from the slowest rank's progress, when totals are known."""
        etas = []
        for r in self.ranks:
            if r.total and r.rate > 0 and r.status == "running":
                etas.append(max(r.total - r.n, 0) / r.rate)
        return max(etas) if etas else None

    def throughput(self) -> dict[str, float]:
        """Steps per second (mean over ranks) and samples per second (sum over ranks), once a
        rank has logged for a second (a few points logged at once make no rate)."""
        steps, samples = [], 0.0
        for r in self.ranks:
            if (
                r.first_time is not None
                and r.last_time is not None
                and r.last_time - r.first_time >= 1.0
            ):
                span = r.last_time - r.first_time
                steps.append((r.steps - 1) / span if r.steps > 1 else 0.0)
                samples += r.samples / span
            elif r.rate:
                steps.append(r.rate)
        out: dict[str, float] = {}
        if steps:
            out["steps/s"] = sum(steps) / len(steps)
        if samples:
            out["samples/s"] = samples
        return out

    def chart_series(self, name: str) -> list[tuple[int, float, float, float]]:
        """``(step, mean, min, max)`` across the ranks that logged ``name``, by step (by step
        bucket once a run logged more steps than a chart holds)."""
        series = self.series.get(name)
        return series.points() if series is not None else []

    def summary(self) -> RunSummary:
        """The JSON summary written to ``run.json`` (read by the lab extension)."""
        latest = {name: sum(v.values()) / len(v) for name, v in self.latest.items() if v}
        return {
            "id": self.id,
            "status": self.status,
            "message": self.message,
            "started": self.started,
            "ended": self.ended,
            "elapsed": self.elapsed,
            "eta": self.eta(),
            "kernel_pid": os.getpid(),
            "info": self.info,
            "failing_rank": self.failing_rank,
            "failure": self.failure,
            "latest_metrics": latest,
            "throughput": self.throughput(),
            "dropped_points": self.dropped,
            "stalled_ranks": self.stalled,
            "where": self.where,
            "straggler": (
                {"rank": self.straggler.rank, "share": round(self.straggler.share, 3)}
                if self.straggler
                else None
            ),
            "notes": self.notes,
            "attempts": self.attempts,
            "values": self.values(),
            "ranks": [self._rank_summary(r) for r in self.ranks],
            "log_paths": {
                str(k): str(v) for k, v in (self.store.log_paths if self.store else {}).items()
            },
        }

    @staticmethod
    def _rank_summary(r: RankState) -> RankSummary:
        return {
            "rank": r.rank,
            "status": r.status,
            "n": r.n,
            "total": r.total,
            "desc": r.desc,
            "rate": r.rate,
            "error": r.error,
            "lines": r.line_count,
            "messages": r.messages,
            "step_time": round(r.split.step, 6) if r.split else None,
            "wait_time": round(r.split.waiting, 6) if r.split else None,
        }
