"""Asking every rank where it is, on ipyparallel's control channel (``rank/where.py`` answers).

Control messages reach an engine through the controller (and its nanny, on other hosts) and
are handled on the engine's control thread, so a rank answers while its cell runs. A request
costs the rank a few hundred microseconds of that thread; the main thread is never stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..rank.where import REQUEST

log = logging.getLogger(__name__)
ANSWER_WITHIN = 5.0  # seconds a rank gets to answer


@dataclass
class WhereProbe:
    """One question to every rank; ``replies`` fills in as the answers arrive."""

    futures: dict[int, Any]
    sent: float = field(default_factory=time.monotonic)

    @property
    def deadline(self) -> float:
        return self.sent + ANSWER_WITHIN

    def done(self, now: float | None = None) -> bool:
        """Every rank answered, or the time to answer is up."""
        now = time.monotonic() if now is None else now
        return now >= self.deadline or all(f.done() for f in self.futures.values())

    def reports(self) -> list[dict[str, Any]]:
        """Each rank's report, in rank order (``{"rank": r, "error": ...}`` where none came)."""
        out = []
        for rank, future in sorted(self.futures.items()):
            report: dict[str, Any] = {"rank": rank, "error": "did not answer within 5 s"}
            if future.done():
                try:
                    report = {**future.result()["content"]["report"], "rank": rank}
                except Exception as e:
                    log.debug("rank %d's where reply failed", rank, exc_info=True)
                    report = {"rank": rank, "error": f"{type(e).__name__}: {e}"}
            out.append(report)
        return out


def ask(client: Any, engine_ids: list[int], ranks: list[int] | None = None) -> WhereProbe:
    """Send the question to the engines of ``engine_ids``, the ranks ``ranks`` (by default
    0, 1, ... in that order); returns at once."""
    idents, _ = client._build_targets(list(engine_ids))
    futures = {
        rank: client._send(client._control_stream, REQUEST, content={}, ident=ident)
        for rank, ident in zip(ranks or range(len(idents)), idents, strict=True)
    }
    return WhereProbe(futures)


def ask_sync(client: Any, engine_ids: list[int]) -> list[dict[str, Any]]:
    """Every rank's report, waiting at most ``ANSWER_WITHIN`` seconds."""
    probe = ask(client, engine_ids)
    while not probe.done():
        time.sleep(0.02)
    return probe.reports()
