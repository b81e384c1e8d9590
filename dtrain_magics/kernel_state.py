"""This kernel's cluster state on disk, for the lab extension's server side.

Each kernel keeps one ``clusters/<key>.json`` beside the runs directory (``<key>`` is the
Jupyter kernel id, or ``pid-<pid>`` outside a Jupyter kernel). Run records carry the same
kernel id and the id of the cell that started them. The server reads these files, so it never
has to ask a kernel that is busy training, and a server restart loses nothing.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import psutil

from .records import runs_dir, write_json_atomic

_KERNEL_FILE = re.compile(r"kernel-(?P<id>[\w-]+)\.json$")


def clusters_dir() -> Path:
    """Where cluster state files live (next to the runs directory)."""
    return runs_dir().parent / "clusters"


def kernel_id() -> str | None:
    """The Jupyter kernel id of this process, read from its connection file name."""
    try:
        from ipykernel.connect import get_connection_file

        match = _KERNEL_FILE.search(get_connection_file())
    except Exception:  # not inside an ipykernel
        return None
    return match.group("id") if match else None


def cell_id() -> str | None:
    """The id of the notebook cell now executing, as JupyterLab sends it (``None`` elsewhere)."""
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        parent = kernel.get_parent("shell") if kernel is not None else {}
    except Exception:
        return None
    value = (parent or {}).get("metadata", {}).get("cellId")
    return str(value) if value else None


def identity() -> dict[str, Any]:
    """What a run record stores to find its kernel and cell again."""
    return {"kernel_id": kernel_id(), "kernel_pid": os.getpid(), "cell_id": cell_id()}


def state_path() -> Path:
    key = kernel_id() or f"pid-{os.getpid()}"
    return clusters_dir() / f"{key}.json"


def cluster_state(status: dict[str, Any], activity: str | None = None) -> str:
    """One word for a cluster: starting, busy, idle, stopped or broken."""
    state = str(status.get("state", "stopped"))
    if activity == "starting" or (activity and state == "running"):
        return activity
    return "idle" if state == "running" else state


def publish(status: dict[str, Any], activity: str | None = None, run_id: str | None = None) -> None:
    """Write this kernel's cluster state; ``activity`` is ``starting`` or ``busy`` during a run.

    Never raises: the lab extension's view of a cluster must not break a run.
    """
    state = cluster_state(status, activity)
    record = {
        **status,
        "state": state,
        "run_id": run_id,
        "kernel_id": kernel_id(),
        "kernel_pid": os.getpid(),
        "updated": time.time(),
    }
    try:
        path = state_path()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_atomic(path, record)
        _forget_dead_kernels(path.parent)
    except OSError:
        pass


def _forget_dead_kernels(folder: Path) -> None:
    """Remove the state files of kernels that have exited."""
    for path in folder.glob("*.json"):
        try:
            pid = int(json.loads(path.read_text(encoding="utf-8")).get("kernel_pid", 0))
        except (OSError, ValueError):
            continue
        if pid and not psutil.pid_exists(pid):
            path.unlink(missing_ok=True)
