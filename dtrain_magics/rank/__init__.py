"""Rank-side helpers, bound as ``dtrain`` in every rank's namespace.

Everything here runs inside an engine (one MPI rank). The notebook side never imports torch
through this package except to check that names can be pushed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from .checkpoint import checkpoint, load_checkpoint
from .rank_context import RankContext, current
from .replicas import ReplicasDiffer, check_replicas
from .sharding import parameter_share
from .subset import CollectiveNeedsEveryRank
from .telemetry import current as _telemetry

T = TypeVar("T")

__all__ = [
    "CollectiveNeedsEveryRank",
    "RankContext",
    "ReplicasDiffer",
    "barrier",
    "check_replicas",
    "checkpoint",
    "context",
    "current",
    "is_root",
    "load_checkpoint",
    "log",
    "parameter_share",
    "progress",
]


def log(step: int | None = None, **scalars: Any) -> None:
    """Record scalar metrics (loss, accuracy, lr, samples, ...) for this rank.

    ``step`` defaults to a per-rank counter that starts at 0 in each cell. Cheap: points are
    buffered and sent to the notebook's dashboard at most once a second.
    """
    _telemetry().log(step, **scalars)


def progress(
    iterable: Iterable[T], total: int | None = None, desc: str | None = None
) -> Iterator[T]:
    """Wrap a loop to report this rank's progress (n, total, rate) to the dashboard."""
    return _telemetry().progress(iterable, total=total, desc=desc)


def context() -> RankContext:
    """The context of this rank (rank, size, local rank, device, backend)."""
    return current()


def is_root() -> bool:
    """True on rank 0."""
    return current().rank == 0


def barrier() -> None:
    """Block until every rank reaches this point (over MPI, whatever the backend)."""
    from .collectives import mpi_wait
    from .subset import world_comm

    comm = world_comm()
    with mpi_wait("dtrain.barrier", "barrier"):
        comm.Barrier()


def __getattr__(name: str) -> Any:
    # dtrain.rank, dtrain.size, dtrain.device ... read through to the current context
    if name in RankContext.__dataclass_fields__:
        return getattr(current(), name)
    raise AttributeError(f"module 'dtrain' has no attribute {name!r}")
