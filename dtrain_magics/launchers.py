"""How engines are started: the ipyparallel ``Cluster`` arguments for each launcher."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any

from traitlets.config import Config

from .errors import ClusterStartError

LAUNCHERS = ("local",)


@dataclass(frozen=True)
class Layout:
    """How many ranks, arranged as nodes × processes per node."""

    nodes: int
    procs_per_node: int

    @property
    def ranks(self) -> int:
        return self.nodes * self.procs_per_node

    def __str__(self) -> str:
        return f"{self.ranks} ranks ({self.nodes} nodes × {self.procs_per_node} procs)"


def find_mpiexec() -> str:
    """The ``mpiexec`` of this Python's environment, else the first on PATH."""
    env_bin = os.path.join(sys.prefix, "bin")
    found = shutil.which("mpiexec", path=env_bin) or shutil.which("mpiexec")
    if found is None:
        raise ClusterStartError(
            f"mpiexec was not found in {env_bin} or on PATH; run `make setup` "
            "(it installs Open MPI into the project venv) or install Open MPI."
        )
    return found


def rank_environment(layout: Layout) -> dict[str, str]:
    """Environment for every rank of a local cluster."""
    cores = os.cpu_count() or 1
    env = {
        # Open MPI refuses root unless told; harmless for other users.
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        # keep MPI's own TCP traffic on loopback for a one-host cluster
        "OMPI_MCA_btl_tcp_if_include": "lo",
        "DTRAIN_PROCS_PER_NODE": str(layout.procs_per_node),
    }
    # share the cores between ranks instead of every rank's torch using all of them
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", str(max(1, cores // layout.ranks)))
    return env


def local_cluster_kwargs(layout: Layout) -> dict[str, Any]:
    """``ipyparallel.Cluster`` arguments: ``layout.ranks`` MPI engines on this host, on loopback."""
    config = Config()
    config.MPIEngineSetLauncher.mpi_cmd = [find_mpiexec()]
    # more ranks than cores is allowed, and ranks are not pinned to cores
    config.MPIEngineSetLauncher.mpi_args = ["--map-by", ":OVERSUBSCRIBE", "--bind-to", "none"]
    config.MPIEngineSetLauncher.environment = rank_environment(layout)
    return {
        "engines": "mpi",
        "n": layout.ranks,
        "controller_ip": "127.0.0.1",
        "config": config,
    }
