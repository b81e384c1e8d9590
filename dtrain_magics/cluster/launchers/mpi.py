"""``mpi``: engines started by ``mpiexec`` on the hosts a hostfile names (Open MPI's
``--hostfile``, Hydra's ``-hosts``), ``--procs-per-node`` on each of ``--nodes`` of them."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from traitlets.config import Config

from ...errors import ClusterStartError
from ...install.mpi_flavours import hosts_option
from .base import (
    LaunchSpec,
    Layout,
    OwnedLauncher,
    controller_address,
    find_supported_mpi,
    is_local_host,
    mpiexec_args,
    multi_host_environment,
)

SEARCH_PATHS = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH")
"""Where the notebook finds programs, libraries and modules: remote ranks get the same (Open MPI
forwards no environment by itself; MPICH's Hydra passes all of it)."""


def read_hostfile(path: str) -> list[str]:
    """The host names of a hostfile (first word of each line, comments skipped, without the
    ``:slots`` of MPICH's ``host:4``)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ClusterStartError(f"cannot read the hostfile {path!r}: {reason}.") from None
    hosts = [line.split("#", 1)[0].split()[:1] for line in lines]
    found = [_without_slots(h[0]) for h in hosts if h]
    if not found:
        raise ClusterStartError(f"the hostfile {path!r} names no hosts.")
    return found


def _without_slots(word: str) -> str:
    """``node1`` of MPICH's ``node1:4``; an IPv6 address such as ``::1`` is left whole."""
    name, _, slots = word.rpartition(":")
    return name if name and slots.isdigit() and ":" not in name else word


class MpiLauncher(OwnedLauncher):
    """``--procs-per-node`` ranks on each of the hostfile's first ``--nodes`` hosts; the
    controller listens beyond loopback only when a host other than this one takes part."""

    name: ClassVar[str] = "mpi"

    def check(self, spec: LaunchSpec, layout: Layout | None = None) -> None:
        find_supported_mpi()
        self._hosts(spec, layout)

    def _hosts(self, spec: LaunchSpec, layout: Layout | None = None) -> tuple[str, dict[str, str]]:
        """The hostfile's absolute path and the distinct hosts it names, in its order, each as
        it is first written, keyed by its name with this machine's names as ``localhost``
        (enough for ``layout``)."""
        if not spec.get("hostfile"):
            raise ClusterStartError("the mpi launcher needs a hostfile (--hostfile PATH).")
        hostfile = os.path.abspath(spec.get("hostfile"))
        hosts = read_hostfile(hostfile)
        # a host's lines add slots, and Open MPI takes every name of this machine as one host
        distinct: dict[str, str] = {}
        for host in hosts:
            distinct.setdefault("localhost" if is_local_host(host) else host.lower(), host)
        if layout is not None and len(distinct) < layout.nodes:
            shown = ["this machine" if h == "localhost" else h for h in distinct]
            raise ClusterStartError(
                f"the hostfile {hostfile!r} names {len(distinct)} host"
                f"{'' if len(distinct) == 1 else 's'} ({', '.join(shown)}) and --nodes asks "
                f"for {layout.nodes}: add hosts to it or lower --nodes."
            )
        return hostfile, distinct

    def cluster_kwargs(self, spec: LaunchSpec, layout: Layout) -> dict[str, Any]:
        mpi = find_supported_mpi()
        hostfile, hosts = self._hosts(spec, layout)
        # --map-by ppr fills the first --nodes hosts: only theirs decide
        used = list(hosts)[: layout.nodes]
        local_only = all(h == "localhost" for h in used)
        env = {**multi_host_environment(layout, local_only, mpi), **dict(spec.env)}
        args = mpiexec_args(env, mpi, layout.procs_per_node, also=SEARCH_PATHS)
        config = Config()
        config.MPIEngineSetLauncher.mpi_cmd = [mpi.mpiexec]
        config.MPIEngineSetLauncher.mpi_args = [
            *hosts_option(mpi, hostfile, [hosts[h] for h in used]),
            *args,
        ]
        config.MPIEngineSetLauncher.environment = env
        return {
            "engines": "mpi",
            "n": layout.ranks,
            "config": config,
            **controller_address(local_only),
        }
