"""What every launcher shares: the layout, the launch spec, the protocol, the MPI environment."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from ...errors import ClusterStartError
from ...install.facts import MpiInfo, cores_here, horovod_built_for, read_mpi
from ...install.mpi_flavours import (
    SUPPORTED,
    forward_environment,
    job_environment,
    job_options,
    loopback_transport,
    sharing_options,
)

# names that always mean this host in a hostfile or a Slurm node list
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
MALLOC_HUGE_PAGES = "glibc.malloc.hugetlb=1"
YIELD = "OMPI_MCA_mpi_yield_when_idle"
SHARING = ("OMP_NUM_THREADS", YIELD)  # set from the cores of the ranks' host


@dataclass(frozen=True)
class Layout:
    """How many ranks, arranged as nodes × processes per node."""

    nodes: int
    procs_per_node: int

    @property
    def ranks(self) -> int:
        return self.nodes * self.procs_per_node

    def __str__(self) -> str:
        return (
            f"{_count(self.ranks, 'rank')} ({_count(self.nodes, 'node')} × "
            f"{_count(self.procs_per_node, 'proc')})"
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@dataclass(frozen=True)
class LaunchSpec:
    """Where and how engines start: the launcher, its own settings, and rank env vars.

    ``options`` holds the settings that belong to the launcher (``(name, value)`` pairs, sorted),
    so two specs are equal exactly when the cluster they describe is the same.
    """

    launcher: str = "local"
    options: tuple[tuple[str, Any], ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    def get(self, name: str, default: Any = None) -> Any:
        """The launcher setting ``name``."""
        return dict(self.options).get(name, default)


class Launcher(Protocol):
    """How one kind of cluster starts (or is found): registered by name in ``LAUNCHERS``."""

    name: ClassVar[str]
    owns_processes: ClassVar[bool]
    """False for a cluster someone else started: we connect to it and never stop it."""
    uses: ClassVar[tuple[str, ...]]
    """Settings other than its own that change how it starts engines (``device`` for Slurm)."""

    def cluster_kwargs(self, spec: LaunchSpec, layout: Layout) -> dict[str, Any]:
        """``ipyparallel.Cluster`` arguments for ``layout`` (launchers that own processes)."""
        ...

    def check(self, spec: LaunchSpec, layout: Layout | None = None) -> None:
        """``ClusterStartError`` if ``spec`` (for ``layout``, if given) cannot start a cluster,
        found at once (files and programs it names; nothing that waits on a network service)."""
        ...

    def check_submission(self, spec: LaunchSpec, layout: Layout) -> None:
        """``ClusterStartError`` if a batch scheduler would refuse the cluster's job: asked
        only before a cell stops a running cluster for a new one (it waits on the scheduler)."""
        ...

    def connect(self, spec: LaunchSpec, timeout: float) -> Any:
        """A connected ``ipyparallel.Client`` (launchers that do not own processes)."""
        ...

    def pending(self, engine_set: Any) -> str | None:
        """The batch job id while the engines wait in a queue, else None."""
        ...

    def job_ended(self, engine_set: Any) -> bool:
        """True once a batch job that should hold the engines has left the queue."""
        ...


class OwnedLauncher:
    """Defaults for launchers that start the engines themselves."""

    owns_processes: ClassVar[bool] = True
    uses: ClassVar[tuple[str, ...]] = ()

    def connect(self, spec: LaunchSpec, timeout: float) -> Any:
        raise TypeError("this launcher starts its own cluster; it does not connect to one.")

    def check(self, spec: LaunchSpec, layout: Layout | None = None) -> None:
        find_supported_mpi()

    def check_submission(self, spec: LaunchSpec, layout: Layout) -> None:
        """Nothing to ask: no scheduler takes the job."""

    def pending(self, engine_set: Any) -> str | None:
        return None

    def job_ended(self, engine_set: Any) -> bool:
        return False  # mpiexec itself is watched as a process


def find_mpiexec() -> str:
    """The ``mpiexec`` of this Python's environment, else the first on PATH."""
    env_bin = os.path.join(sys.prefix, "bin")
    found = shutil.which("mpiexec", path=env_bin) or shutil.which("mpiexec")
    if found is None:
        raise ClusterStartError(
            f"mpiexec was not found in {env_bin} or on PATH; run `make setup` "
            "(it installs Open MPI into the project venv) or install Open MPI or MPICH."
        )
    return found


_MPI_FOUND: dict[tuple[str, int, int], MpiInfo | str] = {}
PIP_MPI = '`pip install "dtrain-magics[mpi]"`'


def find_supported_mpi() -> MpiInfo:
    """The MPI of ``find_mpiexec()`` (its ``--version`` read once per file);
    ``ClusterStartError`` unless it is one the launchers know the options of (``SUPPORTED``)."""
    path = find_mpiexec()
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    mpi = _MPI_FOUND.get(key) or read_mpi(path, timeout=30)
    if isinstance(mpi, str) and "--version failed" in mpi:  # not remembered: it may pass
        raise ClusterStartError(f"could not tell which MPI {path} is: {mpi}.")
    _MPI_FOUND[key] = mpi
    if not isinstance(mpi, str) and mpi.implementation in SUPPORTED:
        return mpi
    what = mpi if isinstance(mpi, str) else f"{path} is {mpi.implementation} {mpi.version}"
    if os.path.dirname(path) == os.path.join(sys.prefix, "bin"):
        fix = f"replace that MPI in this environment with Open MPI ({PIP_MPI})"
    else:
        fix = f"put Open MPI's or MPICH's mpiexec first on PATH, or install Open MPI with {PIP_MPI}"
    raise ClusterStartError(
        f"{what}, but the cluster starts its ranks with Open MPI's or MPICH's mpiexec and "
        f"options: {fix}."
    )


def check_horovod_build(mpi: MpiInfo | None = None) -> None:
    """``ClusterStartError`` if ``install-horovod`` built this Python's Horovod for another MPI
    than ``mpi`` (the one found by default), which the ranks would run it under."""
    built = horovod_built_for()
    mpi = mpi or find_supported_mpi()
    # Open MPI keeps its ABI within a major version: a patch release needs no rebuild
    if built is None or _major(built) == _major(mpi.key):
        return
    raise ClusterStartError(
        f"Horovod was built for another MPI ({built}) than the cluster's mpiexec, {mpi.mpiexec} "
        f"({mpi.key}): run `dtrain-magics install-horovod` to build it for this one, then "
        "%dtrain restart."
    )


def _major(key: str) -> str:
    """``ompi5`` of ``ompi5.0.11``: the implementation and its major version."""
    return key.split(".")[0]


def rank_environment(layout: Layout, mpi: MpiInfo | None = None) -> dict[str, str]:
    """Environment for every rank of a local cluster (``mpi``: the one found by default)."""
    mpi = mpi or find_supported_mpi()
    env = {**job_environment(mpi), "DTRAIN_PROCS_PER_NODE": str(layout.procs_per_node)}
    env["GLIBC_TUNABLES"] = malloc_tunables(os.environ.get("GLIBC_TUNABLES", ""))
    for name, value in sharing_environment(cores_here(), layout.ranks).items():
        env[name] = os.environ.get(name, value)  # the user's own setting wins
    return env


def sharing_environment(cores: int, ranks_here: int) -> dict[str, str]:
    """``OMP_NUM_THREADS`` and MPI's yielding for ``ranks_here`` ranks sharing ``cores``."""
    # share the cores between ranks instead of every rank's torch using all of them
    env = {"OMP_NUM_THREADS": str(max(1, cores // max(1, ranks_here)))}
    if ranks_here >= cores:
        # a rank waiting in an MPI call spins at 100% CPU; with every core taken by a rank, it
        # then competes with the rank still computing, and with the notebook and controller.
        env[YIELD] = "1"
    return env


def malloc_tunables(current: str) -> str:
    """``GLIBC_TUNABLES`` with malloc on transparent huge pages, unless ``current`` says otherwise.

    Open MPI allocates a buffer of half the message for each large allreduce; on 4 KB pages the
    kernel faults in and zeroes it page by page in every call (32,769 faults at 256 MB), which
    halves Horovod's bandwidth on CPU. On 2 MB pages a call takes 68 faults. glibc before 2.35
    ignores the name; where transparent huge pages are off, the kernel ignores the advice.
    """
    entries = [e for e in current.split(":") if e]
    if any(e.partition("=")[0] == MALLOC_HUGE_PAGES.partition("=")[0] for e in entries):
        return current
    return ":".join([*entries, MALLOC_HUGE_PAGES])


def is_local_host(name: str) -> bool:
    """True if ``name`` is this machine (loopback, its short name or its full name)."""
    name = name.lower()
    short, full = _own_names()
    return name in _LOOPBACK or name.split(".")[0] == short or name == full


@functools.cache
def _own_names() -> tuple[str, str]:
    """This machine's short and full names, looked up once (``getfqdn`` may ask DNS)."""
    return socket.gethostname().split(".")[0].lower(), socket.getfqdn().lower()


def controller_address(local_only: bool) -> dict[str, str]:
    """Loopback for a one-host cluster; else listen everywhere, located by this host's name."""
    if local_only:
        return {"controller_ip": "127.0.0.1"}
    return {"controller_ip": "*", "controller_location": socket.gethostname()}


def multi_host_environment(
    layout: Layout, local_only: bool, mpi: MpiInfo | None = None
) -> dict[str, str]:
    """``rank_environment`` without the loopback-only MPI transport when ranks span hosts,
    and without this host's share of cores: each rank's engine works out its own host's
    (``cluster/engine.py``) unless the user set it here."""
    mpi = mpi or find_supported_mpi()
    env = rank_environment(layout, mpi)
    if not local_only:
        for name in loopback_transport(mpi):
            del env[name]
        for name in SHARING:
            if name not in os.environ:
                env.pop(name, None)
    return env


def mpiexec_options(mpi: MpiInfo | None = None, per_node: int | None = None) -> list[str]:
    """More ranks than cores allowed (``per_node`` on each host if given), no pinning, no
    standard input, every rank's exit reported (``job_options``), in the syntax of ``mpi`` (the
    one found by default)."""
    mpi = mpi or find_supported_mpi()
    return [*sharing_options(mpi, per_node), *job_options(mpi)]


def mpiexec_args(
    env: Mapping[str, str],
    mpi: MpiInfo | None = None,
    per_node: int | None = None,
    also: tuple[str, ...] = (),
) -> list[str]:
    """``mpiexec_options``, and ``env`` passed on to remote ranks with the variables ``also``
    names that the notebook's environment has."""
    mpi = mpi or find_supported_mpi()
    extra = [name for name in also if name in os.environ and name not in env]
    forwarded = [*env, *extra, "IPP_CLUSTER_ID", "IPP_PROFILE_DIR"]  # ipengine finds its cluster
    return [*mpiexec_options(mpi, per_node), *forward_environment(mpi, forwarded)]
