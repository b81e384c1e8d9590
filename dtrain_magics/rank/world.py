"""This process's place among the ranks, read from what ``mpiexec`` tells it, without MPI.

Engines start without initialising MPI, so that a ``torch.distributed`` job runs in processes
like those of ``mpiexec -n N python train.py``: MPI in a process costs gloo a few percent of
its bandwidth even when no MPI call runs. ``mpiexec`` puts each process's rank into its
environment (Open MPI, MPICH and Intel MPI's Hydra, MVAPICH); where none of those is set,
``place`` asks MPI, which initialises it. Horovod and the MPI helpers (``dtrain.barrier``,
checkpoints, ``check_replicas``) initialise MPI when they first run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# rank, size, rank on the host, ranks on the host
ENVIRONMENTS = (
    (
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
    ),
    (
        "MV2_COMM_WORLD_RANK",
        "MV2_COMM_WORLD_SIZE",
        "MV2_COMM_WORLD_LOCAL_RANK",
        "MV2_COMM_WORLD_LOCAL_SIZE",
    ),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
)


@dataclass(frozen=True)
class Place:
    """Where a process sits in the job."""

    rank: int
    size: int
    host_rank: int
    host_size: int


def from_environment(env: Mapping[str, str] | None = None) -> Place | None:
    """The place ``mpiexec`` put into ``env`` (this process's environment), or None."""
    env = os.environ if env is None else env
    for names in ENVIRONMENTS:
        try:
            return Place(*(int(env[name]) for name in names))
        except (KeyError, ValueError):
            continue
    return None


def place() -> Place:
    """This process's place: from the environment, else from MPI (which initialises it)."""
    found = from_environment()
    if found is not None:
        return found
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return Place(comm.Get_rank(), comm.Get_size(), local.Get_rank(), local.Get_size())
    finally:
        local.Free()
