"""Run records: every run's summary, metric history and rank logs, written to disk as they arrive.

Layout, under ``runs_dir()`` (``$DTRAIN_RUNS_DIR`` or ``<jupyter data dir>/dtrain-magics/runs``)::

    <run id>/run.json        summary, rewritten atomically while the run goes on
    <run id>/metrics.jsonl   one {"step", "rank", "name", "value", "time"} per line
    <run id>/rank-<N>.log    everything rank N printed

A kernel crash loses nothing that reached the notebook: lines are flushed as they are written.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import IO, Any

from .paths import runs_dir, write_json_atomic
from .schema import AttemptSummary, MetricRow, RankSummary, RunStatus, RunSummary, ValueSummary

# One metrics.jsonl line; "%s" is a name that needs no escapes, "%r" a finite float.
_PLAIN_LINE = '{"step": %d, "rank": {rank}, "name": "%s", "value": %r, "time": %.6f}\n'


def _format_line(rank: int, step: int, name: str, value: float, when: float) -> str:
    """One line of any point (JSON's ``NaN`` and ``Infinity`` for non-finite floats)."""
    row = {"step": int(step), "rank": rank, "name": name, "value": float(value)}
    row["time"] = round(float(when), 6)
    return json.dumps(row) + "\n"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class RunStore:
    """Appends one run's metrics and logs to disk and keeps its summary current."""

    def __init__(self, run_id: str, ranks: int | Iterable[int], root: Path | None = None) -> None:
        self.dir = (root or runs_dir()) / run_id
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.metrics_path = self.dir / "metrics.jsonl"
        numbers = range(ranks) if isinstance(ranks, int) else ranks
        self.log_paths = {r: self.dir / f"rank-{r}.log" for r in numbers}
        self._metrics: IO[str] | None = None  # opened with the first point
        self._logs: dict[int, IO[str]] = {}
        self._plain_names: set[str] = set()  # names JSON writes as they are

    def append_points(self, rank: int, points: list[tuple[int, str, float, float]]) -> None:
        """Append ``rank``'s ``(step, name, value, time)`` points to ``metrics.jsonl``.

        This runs in the notebook's kernel for every point a rank logs, and the kernel shares
        its CPU with the ranks on small machines: a message's points are formatted by one
        ``%`` of a repeated line template (one C call), and times are written to the
        microsecond. Points that JSON must spell differently (names needing escapes, inf or nan
        values, values that are not floats) take the general path, a line at a time.
        """
        if self._metrics is None:
            self._metrics = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115
        if not points:
            return
        text = self._format_plain(rank, points)
        if text is None:
            text = "".join(_format_line(rank, *point) for point in points)
        self._metrics.write(text)
        self._metrics.flush()

    def _format_plain(self, rank: int, points: list[tuple[int, str, float, float]]) -> str | None:
        """The lines of ``points`` at once, or None if one needs the general path."""
        plain = self._plain_names
        names = {p[1] for p in points}
        if not names <= plain:
            for name in names - plain:
                if not isinstance(name, str) or json.dumps(name) != f'"{name}"':
                    return None
                plain.add(name)
        values = [p[2] for p in points]
        times = [p[3] for p in points]
        if set(map(type, values)) != {float} or set(map(type, times)) != {float}:
            return None
        if not math.isfinite(sum(values)) or not math.isfinite(sum(times)):
            return None  # inf or nan somewhere (or sums beyond float's range: the same path)
        line = _PLAIN_LINE.replace("{rank}", str(int(rank)))
        return (line * len(points)) % tuple(chain.from_iterable(points))

    def append_log(self, rank: int, text: str) -> None:
        log = self._logs.get(rank)
        if log is None:
            log = self._logs[rank] = open(self.log_paths[rank], "a", encoding="utf-8")  # noqa: SIM115
        log.write(text)
        log.flush()

    def write_summary(self, summary: RunSummary) -> None:
        """Replace ``run.json`` atomically (temporary file, then rename)."""
        write_json_atomic(self.dir / "run.json", summary)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
        for log in self._logs.values():
            log.close()


@dataclass(repr=False)
class RunRecord:
    """What ``dtrain_magics.last_run()`` returns: one finished run, backed by its files."""

    id: str
    status: RunStatus
    exit_reason: str
    wall_time: float
    ranks: list[RankSummary]
    options: dict[str, Any]
    dir: Path
    log_paths: dict[int, Path] = field(default_factory=dict)
    failing_rank: int | None = None
    values: list[ValueSummary] = field(default_factory=list)
    """The value of the cell's last expression on each rank: ``{"ranks", "text"}``, ranks with
    the same value together."""
    attempts: list[AttemptSummary] = field(default_factory=list)
    """Every attempt (``--max-restarts``): ``{"attempt", "started", "ended", "status", "cause",
    "failing_rank"}``, the last one this run's own end."""
    mlflow: Any = None  # with --mlflow: the run's export (``.wait()`` gives MLflow's run id)
    dropped_points: int = 0
    """Logged points thinned out: a rank logged more than 2,048 in a second (the headline says)."""

    @property
    def metrics(self) -> list[MetricRow]:
        """The metric history: dicts with step, rank, name, value, time (read from disk)."""
        path = self.dir / "metrics.jsonl"
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def metric(self, name: str, rank: int | None = None) -> list[tuple[int, float]]:
        """``(step, value)`` pairs of one metric, for one rank or (by default) rank 0."""
        want = 0 if rank is None else rank
        return [
            (m["step"], m["value"]) for m in self.metrics if m["name"] == name and m["rank"] == want
        ]

    @property
    def where(self) -> dict[str, Any] | None:
        """The run's last "where are the ranks?" report (from ``run.json``), if it had one."""
        path = self.dir / "run.json"
        if not path.exists():
            return None
        return json.loads(path.read_text(encoding="utf-8")).get("where")  # type: ignore[no-any-return]

    def log(self, rank: int) -> str:
        """Everything ``rank`` printed."""
        path = self.log_paths.get(rank)
        return path.read_text(encoding="utf-8") if path and path.exists() else ""

    def __repr__(self) -> str:
        return (
            f"<RunRecord {self.id}: {self.status} in {self.wall_time:.1f} s, "
            f"{len(self.ranks)} ranks; {self.exit_reason}>"
        )

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


_session: list[RunRecord] = []


def add(record: RunRecord) -> None:
    _session.append(record)


def last_run() -> RunRecord | None:
    """The record of this session's latest ``%%distributed`` run (``None`` before any)."""
    return _session[-1] if _session else None


def runs() -> list[RunRecord]:
    """Every run of this session, oldest first."""
    return list(_session)
