"""Rank 0's checkpoint broadcasts that other ranks missed, settled at the end of a cell.

``dtrain.checkpoint`` and ``load_checkpoint`` broadcast from rank 0. Called on rank 0 only
(``if rank == 0:``), they finish there, and the other ranks would take rank 0's message in
their next call instead of their own: different checkpoints, silently (``rank/checkpoint.py``).
Each rank reports how many it took part in; the ranks behind take what they missed, and a cell
that succeeded otherwise fails naming them.
"""

from __future__ import annotations

import logging
from typing import Any

from ..cluster.ranks import RankBackends
from .outcome import Stop
from .watch import RankWatch

log = logging.getLogger(__name__)


def settle_broadcasts(cluster: Any, watch: RankWatch, restarted: bool) -> Stop | None:
    """Have the ranks behind rank 0 take its broadcasts; ``"failed"`` if that fails a cell
    every rank finished without error (its outcome then names the first rank behind)."""
    counts = watch.broadcasts
    if restarted or not counts or 0 not in watch.ars:  # a new cluster holds no old message
        return None
    sent = counts.get(0, 0)
    behind = {r: sent - counts.get(r, 0) for r in watch.ars if counts.get(r, 0) < sent}
    stopped = ""
    for rank, missed in behind.items():
        try:
            RankBackends.take_missed_broadcasts(cluster.view([rank]), missed, timeout=5.0)
        except Exception:  # still waiting for a message: only a new cluster is sure to be right
            log.warning("rank %d could not take rank 0's broadcasts", rank, exc_info=True)
            cluster.stop()
            stopped = "; they could not be put back in step, so the cluster was stopped"
            break
    if not behind or any(o.status != "ok" for o in watch.outcomes.values()):
        return None  # the cell failed already, for the reason it shows
    first = min(behind)
    watch.fail(
        first,
        "did not call dtrain.checkpoint or dtrain.load_checkpoint as rank 0 did "
        f"({sent} calls there, {counts.get(first, 0)} here): every rank must call them, "
        f"and rank 0 alone writes or reads the file; take them out of `if rank == 0:`{stopped}",
    )
    return "failed"
