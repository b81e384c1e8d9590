"""What each supported MPI needs on ``mpiexec``'s command line and in the ranks' environment:
Open MPI 5 (``prterun``), Open MPI 4 (``orterun``) and MPICH (Hydra's ``mpiexec``)."""

from __future__ import annotations

from .facts import MpiInfo

SUPPORTED = ("Open MPI", "MPICH")
"""The MPIs whose ``mpiexec`` the cluster starts its ranks with (Intel MPI and MVAPICH are
recognised, not supported)."""


def open_mpi_major(mpi: MpiInfo) -> int | None:
    """Open MPI's major version (4, 5…); None for another MPI."""
    if mpi.implementation != "Open MPI":
        return None
    return int(mpi.version.split(".")[0])


def is_hydra(mpi: MpiInfo) -> bool:
    """True for MPICH, whose ``mpiexec`` is Hydra (single-dash options, environment passed on)."""
    return mpi.implementation == "MPICH"


def sharing_options(mpi: MpiInfo, per_node: int | None = None) -> list[str]:
    """Arguments that let ranks share a host (more ranks than cores, no pinning), ``per_node``
    ranks on each host if given: ``--map-by ppr:N:node:OVERSUBSCRIBE`` from Open MPI 5,
    ``--map-by ppr:N:node --oversubscribe`` before, ``-ppn N`` for Hydra (which never refuses
    more ranks than cores); none for an MPI not supported."""
    if is_hydra(mpi):
        return [*(["-ppn", str(per_node)] if per_node else []), "-bind-to", "none"]
    major = open_mpi_major(mpi)
    if major is None:
        return []
    placement = f"ppr:{per_node}:node" if per_node else ""
    if major >= 5:
        mapping = ["--map-by", f"{placement}:OVERSUBSCRIBE"]
    else:
        mapping = [*(["--map-by", placement] if placement else []), "--oversubscribe"]
    return [*mapping, "--bind-to", "none"]


def job_options(mpi: MpiInfo) -> list[str]:
    """What the cluster's job needs beyond sharing the host: Open MPI's ``--stdin none`` (rank
    0's read of the notebook's input would wait for ever; Hydra reads only its own standard
    input, which ipyparallel gives ``/dev/null``); Hydra's ``-print-all-exitcodes``, its only
    report of a rank that exits with a code."""
    return ["-print-all-exitcodes"] if is_hydra(mpi) else ["--stdin", "none"]


def this_host_only(mpi: MpiInfo) -> list[str]:
    """Arguments that keep every rank on this host inside a Slurm allocation (``salloc``),
    where the MPI would otherwise start ranks on the allocation's nodes through ``srun``: Open
    MPI's Slurm allocation and launch components off (``--prtemca`` for 5's ``prterun``,
    ``--mca`` for 4's ``orterun``); Hydra's ``fork`` launcher on the hosts it is given (none:
    this one) instead of Slurm's."""
    if is_hydra(mpi):
        return ["-launcher", "fork", "-rmk", "user"]
    flag = "--prtemca" if (open_mpi_major(mpi) or 5) >= 5 else "--mca"
    return [flag, "ras", "^slurm", flag, "plm", "^slurm"]


def hosts_option(mpi: MpiInfo, hostfile: str, hosts: list[str]) -> list[str]:
    """Where the ranks go: Open MPI's ``--hostfile``; for Hydra, which reads only its own
    ``host:slots`` syntax, the ``hosts`` read from it (either syntax, as written there) as
    ``-hosts a,b``."""
    return ["-hosts", ",".join(hosts)] if is_hydra(mpi) else ["--hostfile", hostfile]


def forward_environment(mpi: MpiInfo, names: list[str]) -> list[str]:
    """Arguments that pass the variables ``names`` to ranks on other hosts: Open MPI's ``-x``
    for each; none for Hydra, which passes the whole environment by default."""
    if is_hydra(mpi):
        return []
    return [arg for name in names for arg in ("-x", name)]


def loopback_transport(mpi: MpiInfo) -> dict[str, str]:
    """Environment that keeps the ranks' MPI traffic of a one-host cluster off the network:
    Open MPI's shared memory (``sm`` from 5, ``vader`` before) with TCP on loopback; MPICH's
    UCX transport (the PyPI wheel's default), which otherwise listens on every interface, on
    loopback, and libfabric's TCP providers likewise for an MPICH built on it."""
    if is_hydra(mpi):
        return {"UCX_NET_DEVICES": "lo", "FI_TCP_IFACE": "lo", "FI_SOCKETS_IFACE": "lo"}
    major = open_mpi_major(mpi)
    if major is None:
        return {}
    shared_memory = "vader" if major < 5 else "sm"
    return {"OMPI_MCA_btl_tcp_if_include": "lo", "OMPI_MCA_btl": f"self,{shared_memory}"}


def job_environment(mpi: MpiInfo) -> dict[str, str]:
    """What every job started here gets: Open MPI's consent to run as root (containers and CI
    machines often are root; harmless for other users and MPIs) and ``loopback_transport``,
    which ranks spanning hosts leave out."""
    return {
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        **loopback_transport(mpi),
    }
