"""``local``: the environment's ``mpiexec`` on this machine, everything on loopback."""

from __future__ import annotations

from typing import Any, ClassVar

from traitlets.config import Config

from .base import (
    MPIEXEC_OPTIONS,
    LaunchSpec,
    Layout,
    OwnedLauncher,
    find_mpiexec,
    rank_environment,
)


class LocalLauncher(OwnedLauncher):
    """``layout.ranks`` MPI engines on this host; more ranks than cores is allowed."""

    name: ClassVar[str] = "local"

    def cluster_kwargs(self, spec: LaunchSpec, layout: Layout) -> dict[str, Any]:
        config = Config()
        config.MPIEngineSetLauncher.mpi_cmd = [find_mpiexec()]
        config.MPIEngineSetLauncher.mpi_args = list(MPIEXEC_OPTIONS)  # every rank here: no -x
        config.MPIEngineSetLauncher.environment = {**rank_environment(layout), **dict(spec.env)}
        # every engine runs here: the cluster signals them itself (``TrainingCluster.interrupt``)
        # and no engine waits for a nanny process to start before it registers
        config.MPIEngineSetLauncher.engine_args = ["--IPEngine.enable_nanny=False"]
        return {"engines": "mpi", "n": layout.ranks, "controller_ip": "127.0.0.1", "config": config}
