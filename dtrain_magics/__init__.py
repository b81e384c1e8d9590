"""dtrain-magics: run notebook cells on every rank of a warm ipyparallel + MPI + Horovod cluster.

Load with ``%load_ext dtrain_magics``; then ``%%distributed --nodes 2`` runs a cell on two ranks.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = ["__version__", "load_ipython_extension", "unload_ipython_extension"]

_magics: Any = None


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%%distributed`` and ``%dtrain`` (heavy imports happen on first use)."""
    global _magics
    from .magics import DistributedMagics

    if _magics is None or _magics.shell is not ipython:
        _magics = DistributedMagics(ipython)
    ipython.register_magics(_magics)


def unload_ipython_extension(ipython: Any) -> None:
    """Stop the cluster this extension started."""
    global _magics
    if _magics is not None:
        _magics.cluster.stop()
        _magics = None
