"""Rank-side helpers, bound as ``dtrain`` in every rank's namespace.

Everything here runs inside an engine (one MPI rank). The notebook side never imports torch
through this package except to check that names can be pushed.
"""

from __future__ import annotations

from typing import Any

from .rank_context import RankContext, current

__all__ = ["RankContext", "barrier", "context", "current", "is_root"]


def context() -> RankContext:
    """The context of this rank (rank, size, local rank, device, backend)."""
    return current()


def is_root() -> bool:
    """True on rank 0."""
    return current().rank == 0


def barrier() -> None:
    """Block until every rank reaches this point (over MPI, whatever the backend)."""
    from mpi4py import MPI

    MPI.COMM_WORLD.Barrier()


def __getattr__(name: str) -> Any:
    # dtrain.rank, dtrain.size, dtrain.device ... read through to the current context
    if name in RankContext.__dataclass_fields__:
        return getattr(current(), name)
    raise AttributeError(f"module 'dtrain' has no attribute {name!r}")
