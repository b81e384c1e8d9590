"""The cluster's life: launchers, the ipyparallel controller and engines, their processes, and
the initialisation of the ranks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .launchers import LaunchSpec, Layout
    from .training_cluster import Report, TrainingCluster

__all__ = ["LaunchSpec", "Layout", "Report", "TrainingCluster"]


def __getattr__(name: str) -> Any:
    # lazily, so that ``python -m dtrain_magics.cluster.engine`` (and the watchdog and the
    # controller) import nothing of the notebook side
    if name in ("LaunchSpec", "Layout"):
        from . import launchers

        return getattr(launchers, name)
    if name in ("Report", "TrainingCluster"):
        from . import training_cluster

        return getattr(training_cluster, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
