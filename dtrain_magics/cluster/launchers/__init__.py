"""Launchers: how engines start, one class per kind of cluster, registered by name."""

from __future__ import annotations

from ...install.facts import cores_here
from .base import (
    Launcher,
    LaunchSpec,
    Layout,
    find_mpiexec,
    find_supported_mpi,
    mpiexec_options,
    rank_environment,
)
from .local import LocalLauncher
from .mpi import MpiLauncher
from .profile import ProfileLauncher
from .slurm import SlurmLauncher

LAUNCHERS: dict[str, Launcher] = {
    launcher.name: launcher
    for launcher in (LocalLauncher(), MpiLauncher(), SlurmLauncher(), ProfileLauncher())
}


def get_launcher(name: str) -> Launcher:
    """The launcher registered as ``name``."""
    try:
        return LAUNCHERS[name]
    except KeyError:
        raise ValueError(
            f"unknown launcher {name!r}; choose one of {', '.join(LAUNCHERS)}."
        ) from None


def check_spec(spec: LaunchSpec, layout: Layout | None = None, ask_scheduler: bool = False) -> None:
    """``ClusterStartError`` if ``spec`` cannot start a cluster (of ``layout``, if given: a
    hostfile that cannot be read or names too few hosts, no ``sbatch``), found at once and
    without starting anything: before a running cluster is stopped for it. With
    ``ask_scheduler``, also if a batch scheduler would refuse its job (Slurm's reason)."""
    launcher = get_launcher(spec.launcher)
    launcher.check(spec, layout)
    if ask_scheduler and layout is not None:
        launcher.check_submission(spec, layout)


__all__ = [
    "LAUNCHERS",
    "LaunchSpec",
    "Launcher",
    "Layout",
    "check_spec",
    "cores_here",
    "find_mpiexec",
    "find_supported_mpi",
    "get_launcher",
    "mpiexec_options",
    "rank_environment",
]
