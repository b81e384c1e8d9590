"""This kernel's cluster state on disk, for the lab extension's server side.

Each kernel keeps one ``_clusters/<key>.json`` under the runs directory (``<key>`` is the
Jupyter kernel id, or ``pid-<pid>`` outside a Jupyter kernel). Run records carry the same
kernel id and the id of the cell that started them. The server reads these files, so it never
has to ask a kernel that is busy training, and a server restart loses nothing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Literal

import psutil

from .paths import clusters_dir, read_json
from .schema import ClusterRecord, ClusterState, ClusterStatus
from .writer import writer

log = logging.getLogger(__name__)
UNREADABLE_AFTER = 60.0  # seconds: an unreadable state file this old is removed
_KERNEL_FILE = re.compile(r"kernel-(?P<id>[\w-]+)\.json$")
Activity = Literal["starting", "busy"]


@functools.lru_cache(maxsize=1)
def kernel_id() -> str | None:
    """The Jupyter kernel id of this process, read from its connection file name."""
    try:
        from ipykernel.connect import get_connection_file

        match = _KERNEL_FILE.search(get_connection_file())
    except Exception:  # not inside an ipykernel
        log.debug("no kernel connection file", exc_info=True)
        return None
    return match.group("id") if match else None


def cell_id() -> str | None:
    """The id of the notebook cell now executing, as JupyterLab sends it (``None`` elsewhere)."""
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        parent = kernel.get_parent("shell") if kernel is not None else {}
    except Exception:
        log.debug("no parent message for the cell id", exc_info=True)
        return None
    value = (parent or {}).get("metadata", {}).get("cellId")
    return str(value) if value else None


def execution_count() -> int | None:
    """The number of the cell now running (``[3]`` at its prompt), if any.

    IPython moves its counter to the next cell's number before it runs a cell.
    """
    from IPython import get_ipython

    count = getattr(get_ipython(), "execution_count", None)
    return count - 1 if isinstance(count, int) and count > 1 else None


def identity() -> dict[str, Any]:
    """What a run record stores to find its kernel and cell again."""
    return {
        "kernel_id": kernel_id(),
        "kernel_pid": os.getpid(),
        "cell_id": cell_id(),
        "execution_count": execution_count(),
        # the notebook, as the server that started this kernel named it: the sidebar finds it
        # again once the kernel is gone
        "notebook": os.environ.get("JPY_SESSION_NAME"),
    }


def state_path() -> Path:
    key = kernel_id() or f"pid-{os.getpid()}"
    return clusters_dir() / f"{key}.json"


def cluster_state(status: ClusterStatus, activity: Activity | None = None) -> ClusterState:
    """One word for a cluster: starting, busy, idle, stopped or broken."""
    state = status.get("state", "stopped")
    if activity == "starting" or (activity and state == "running"):
        return activity
    if state == "running":
        return "idle"
    return "broken" if state == "broken" else "stopped"


def record(
    status: ClusterStatus, activity: Activity | None = None, run_id: str | None = None
) -> ClusterRecord:
    """The state file's content for ``status``."""
    return {
        "launcher": status.get("launcher", ""),
        "state": cluster_state(status, activity),
        "cluster_id": status.get("cluster_id"),
        "ranks": status.get("ranks", 0),
        "nodes": status.get("nodes", 0),
        "procs_per_node": status.get("procs_per_node", 0),
        "engines_registered": status.get("engines_registered"),
        "run_id": run_id,
        "kernel_id": kernel_id(),
        "kernel_pid": os.getpid(),
        "updated": time.time(),
    }


def publish(
    status: ClusterStatus, activity: Activity | None = None, run_id: str | None = None
) -> None:
    """Write this kernel's cluster state; ``activity`` is ``starting`` or ``busy`` during a run.

    Written from a background thread within ``writer.DELAY`` seconds (a warm cell does no file
    I/O for it). Never raises: the lab extension's view of a cluster must not break a run.
    """
    writer.put(state_path(), record(status, activity, run_id))


def other_local_ranks(folder: Path | None = None) -> int:
    """How many ranks the local clusters of this machine's other live kernels run."""
    total = 0
    for path in (folder or clusters_dir()).glob("*.json"):
        data = read_json(path) or {}
        pid = data.get("kernel_pid")
        if pid == os.getpid() or not isinstance(pid, int) or not psutil.pid_exists(pid):
            continue
        if data.get("launcher") == "local" and data.get("state") not in ("stopped", None):
            total += int(data.get("ranks") or 0)
    return total


def forget_dead_kernels(folder: Path | None = None) -> None:
    """Remove the state files of kernels that have exited, and files that cannot be read (they
    are written atomically: one a minute old that cannot be read never will be)."""
    for path in (folder or clusters_dir()).glob("*.json"):
        data = read_json(path)
        if data is None:
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > UNREADABLE_AFTER:
                    path.unlink()
            continue
        try:
            pid = int(data.get("kernel_pid", 0))
        except (TypeError, ValueError):
            continue
        if pid and not psutil.pid_exists(pid):
            path.unlink(missing_ok=True)
