"""The cluster's life: launchers, the ipyparallel controller and engines, their processes, and
the initialisation of the ranks."""

from __future__ import annotations

from .launchers import LaunchSpec, Layout
from .training_cluster import Report, TrainingCluster

__all__ = ["LaunchSpec", "Layout", "Report", "TrainingCluster"]
