"""``local``: the environment's ``mpiexec`` on this machine, everything on loopback."""

from __future__ import annotations

from typing import Any, ClassVar

from traitlets.config import Config

from ...install.mpi_flavours import this_host_only
from .base import (
    LaunchSpec,
    Layout,
    OwnedLauncher,
    find_supported_mpi,
    mpiexec_options,
    rank_environment,
)


class LocalLauncher(OwnedLauncher):
    """``layout.ranks`` MPI engines on this host; more ranks than cores is allowed."""

    name: ClassVar[str] = "local"

    def cluster_kwargs(self, spec: LaunchSpec, layout: Layout) -> dict[str, Any]:
        config = Config()
        mpi = find_supported_mpi()
        config.MPIEngineSetLauncher.mpi_cmd = [mpi.mpiexec]
        # every rank here: no -x, and not on a Slurm allocation's other nodes
        config.MPIEngineSetLauncher.mpi_args = [*mpiexec_options(mpi), *this_host_only(mpi)]
        env = {**rank_environment(layout, mpi), **dict(spec.env)}
        config.MPIEngineSetLauncher.environment = env
        # every engine runs here: the cluster signals them itself (``TrainingCluster.interrupt``)
        # and no engine waits for a nanny process to start before it registers
        config.MPIEngineSetLauncher.engine_args = ["--IPEngine.enable_nanny=False"]
        return {"engines": "mpi", "n": layout.ranks, "controller_ip": "127.0.0.1", "config": config}
