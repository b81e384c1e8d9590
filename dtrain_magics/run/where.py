"""``Where are the ranks?``: the ranks' answers put together, and when a run asks by itself.

Each rank reports its innermost frames in the user's code and the collective it waits in
(``rank/where.py``). Put together, the report also names, for each collective a rank waits in,
the ranks that have not joined it: those neither waiting in it nor having enqueued it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

DEADLOCK_AFTER = 2.0  # seconds every wait has lasted before an asked-for report is sure
WhereReport = dict[str, Any]
"""``{"at", "why", "ranks": [rank reports, each with "missing" and "line"]}`` (JSON)."""


def _place(frame: dict[str, Any]) -> str:
    if frame.get("cell") == "this":
        return f"cell line {frame['line']}"
    if frame.get("cell") == "earlier":
        return f"an earlier cell, line {frame['line']}"
    return f"{frame.get('file')}:{frame['line']}"


def describe_stack(report: dict[str, Any]) -> str:
    """``cell line 6 `x = hvd.allreduce(...)` (called from cell line 9)``."""
    frames = report.get("frames") or []
    if not frames:
        inside = report.get("inside")
        return f"in {inside}" if inside else "no frame of the user's code"
    first = frames[0]
    text = _place(first)
    if first.get("function") not in ("<module>", None):
        text += f" in {first['function']}()"
    if first.get("code"):
        text += f": {first['code']}"
    callers = [_place(f) for f in frames[1:]]
    if callers:
        text += f" (called from {', '.join(callers)})"
    return text


def _collective(report: dict[str, Any]) -> str:
    c = report["collective"]
    detail = f", {c['detail']}" if c.get("detail") else ""
    if c.get("backend") == "mpi":  # the package's own: dtrain.barrier, checkpoints
        return f"waiting {c['for']:.1f} s in {c['name']} (MPI {c['op']})"
    if c["name"] == c["op"]:  # torch.distributed: no tensor names
        return f"waiting {c['for']:.1f} s in torch.distributed {c['op']}"
    return f"waiting {c['for']:.1f} s in Horovod {c['op']} {c['name']!r}{detail}"


def missing_ranks(reports: list[dict[str, Any]], name: str) -> list[int]:
    """The ranks that have not joined the collective ``name``."""
    out = []
    for r in reports:
        joined = (r.get("collective") or {}).get("name") == name or name in (r.get("pending") or [])
        if not joined:
            out.append(int(r["rank"]))
    return out


def _missing_text(reports: list[dict[str, Any]], missing: list[int]) -> str:
    by_rank = {int(r["rank"]): r for r in reports}
    parts = []
    for m in missing:
        other = by_rank[m]
        if other.get("collective"):
            parts.append(f"{m} (it waits in {other['collective']['name']!r})")
        elif other.get("state") == "idle":
            parts.append(f"{m} (its cell has ended)")
        else:
            parts.append(str(m))
    ranks = "rank" if len(missing) == 1 else "ranks"
    verb = "has" if len(missing) == 1 else "have"
    return f"{ranks} {', '.join(parts)} {verb} not joined"


def combine(reports: list[dict[str, Any]], why: str) -> WhereReport:
    """The ranks' answers as one report, each rank with its sentence (``line``)."""
    for r in reports:
        r["missing"] = []
        if r.get("error"):
            r["line"] = f"rank {r['rank']}: {r['error']}"
            continue
        text = describe_stack(r) if r.get("state") == "running" else "idle (no cell running)"
        if r.get("collective"):
            r["missing"] = missing_ranks(reports, r["collective"]["name"])
            text += f" · {_collective(r)}"
            if r["missing"]:
                text += f"; {_missing_text(reports, r['missing'])}"
        r["line"] = f"rank {r['rank']}: {text}"
    return {"at": time.time(), "why": why, "ranks": reports}


def deadlock(report: WhereReport, settled: float = DEADLOCK_AFTER) -> dict[str, Any] | None:
    """The first rank that waits for ever, if no rank can go on: each one waits in a
    collective (for ``settled`` seconds or more) or has ended its cell, and every wait lacks a
    rank that has not joined it. Horovod's ``join``, which stands in for the ranks that reached
    it, and waits of some of the ranks only (a torch group, a Horovod process set) never do."""
    ranks = report["ranks"]
    waits = [r for r in ranks if r.get("collective")]
    if not waits or any(r.get("error") for r in ranks):
        return None
    if any(r.get("state") == "running" and not r.get("collective") for r in ranks):
        return None  # computing: it may yet join
    if any(r.get("since_done") is not None and r["since_done"] < settled for r in ranks):
        return None  # a collective just finished: the answers may be from different moments
    for r in waits:
        c = r["collective"]
        if c["op"] == "join" or c.get("subgroup") or c["for"] < settled:
            return None  # join stands in for ranks; a subgroup's wait lacks no one outside it
    return waits[0] if all(r["missing"] for r in waits) else None


def deadlock_phrase(rank: dict[str, Any]) -> str:
    """What the rank did, after "rank N": the wait no rank can end, from its report line."""
    line = str(rank["line"]).split(": ", 1)[-1]
    return f"waited in a collective that no rank can finish ({line})"


def report_lines(report: WhereReport) -> list[str]:
    """The report as text: a title, then one line per rank."""
    return [f"where are the ranks ({report['why']}):", *(r["line"] for r in report["ranks"])]


class WhereWatch:
    """Asks the ranks where they are when the user does (the dashboard's button) and when a
    running cell made no progress (no output, telemetry or finished collective) for ``after``
    seconds; the answer goes to ``show``. Driven by the runner's watch loop, never blocking."""

    def __init__(
        self,
        ask: Callable[[], Any],
        show: Callable[[WhereReport], None],
        after: float | None,
        active_at: Callable[[], float],
    ) -> None:
        self.ask, self.show, self.after, self.active_at = ask, show, after, active_at
        self.requested = False
        self.probe: Any = None
        self._why = ""
        self._quiet_since = time.monotonic()  # the later of activity and a collective finishing
        self._reported = False  # an automatic report for this quiet spell was shown
        self.deadlock: dict[str, Any] | None = None  # a rank's report, once no rank can go on

    def request(self) -> None:
        """The user asked (the dashboard's button)."""
        self.requested = True

    def _quiet_from(self) -> float:
        return max(self._quiet_since, self.active_at())

    def poll(self, now: float) -> None:
        """Send a question when one is due; show the answers once they are in."""
        if self.probe is not None:
            if self.probe.done(now):
                probe, self.probe = self.probe, None
                self._answered(probe.reports(), now)
            return
        if self.requested:
            self.requested = False
            self._send("asked", now)
        elif self.after is not None:
            quiet = now - self._quiet_from()
            if quiet < self.after:
                self._reported = False
            elif not self._reported:
                self._send(f"no progress for {quiet:.0f} s", now)

    def _send(self, why: str, now: float) -> None:
        try:
            self.probe = self.ask()
            self._why = why
        except Exception:  # the cluster went away: the run notices; no retry until activity
            log.debug("asking the ranks where they are failed", exc_info=True)
            self.probe = None
            self._reported = True

    def _answered(self, reports: list[dict[str, Any]], now: float) -> None:
        if self._why != "asked" and self.after is not None:
            recent = [r["since_done"] for r in reports if r.get("since_done") is not None]
            if recent and min(recent) < self.after:  # collectives finish: it is not stuck
                self._quiet_since = max(self._quiet_since, now - min(recent))
                return
            self._reported = True
        combined = combine(reports, self._why)
        # asked after ``after`` quiet seconds, no wait it sees can be one just finishing
        settled = 0.0 if self._why != "asked" else DEADLOCK_AFTER
        self.deadlock = self.deadlock or deadlock(combined, settled)
        self.show(combined)

    def next_wake(self, now: float) -> float | None:
        """When (``time.monotonic()``) the watch needs to run again, if ever."""
        if self.probe is not None:
            return float(self.probe.deadline)
        if self.requested:
            return now
        if self.after is None or self._reported:
            return None
        return self._quiet_from() + self.after
