"""``mpi``: engines started by ``mpiexec --hostfile``, on the hosts the hostfile names."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from traitlets.config import Config

from ...errors import ClusterStartError
from .base import (
    LaunchSpec,
    Layout,
    OwnedLauncher,
    controller_address,
    find_mpiexec,
    is_local_host,
    mpiexec_args,
    multi_host_environment,
)


def read_hostfile(path: str) -> list[str]:
    """The host names of an Open MPI hostfile (first word of each line, comments skipped)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ClusterStartError(f"cannot read the hostfile {path!r}: {reason}.") from None
    hosts = [line.split("#", 1)[0].split()[:1] for line in lines]
    found = [h[0] for h in hosts if h]
    if not found:
        raise ClusterStartError(f"the hostfile {path!r} names no hosts.")
    return found


class MpiLauncher(OwnedLauncher):
    """Ranks spread as the hostfile says; the controller listens beyond loopback only when
    a host other than this one takes part."""

    name: ClassVar[str] = "mpi"

    def check(self, spec: LaunchSpec) -> None:
        find_mpiexec()
        self._hosts(spec)

    def _hosts(self, spec: LaunchSpec) -> tuple[str, list[str]]:
        """The hostfile's absolute path and the hosts it names."""
        if not spec.get("hostfile"):
            raise ClusterStartError("the mpi launcher needs a hostfile (--hostfile PATH).")
        hostfile = os.path.abspath(spec.get("hostfile"))
        return hostfile, read_hostfile(hostfile)

    def cluster_kwargs(self, spec: LaunchSpec, layout: Layout) -> dict[str, Any]:
        hostfile, hosts = self._hosts(spec)
        local_only = all(is_local_host(h) for h in hosts)
        env = {**multi_host_environment(layout, local_only), **dict(spec.env)}
        config = Config()
        config.MPIEngineSetLauncher.mpi_cmd = [find_mpiexec()]
        config.MPIEngineSetLauncher.mpi_args = ["--hostfile", hostfile, *mpiexec_args(env)]
        config.MPIEngineSetLauncher.environment = env
        return {
            "engines": "mpi",
            "n": layout.ranks,
            "config": config,
            **controller_address(local_only),
        }
