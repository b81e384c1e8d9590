"""Kill a cluster's processes when the kernel that started it disappears.

ipyparallel starts the controller and ``mpiexec`` in their own sessions and stops them only at
the kernel's exit (``atexit``), so a kernel killed with SIGKILL (a restart, or the shutdown of a
busy kernel) would leave them running. The watchdog is a tiny process started with the cluster
(``python -m dtrain_magics.cluster.watchdog KERNEL_PID PID...``): it polls the kernel, and once
the kernel is gone it terminates the process trees of the cluster (controller, mpiexec, engines,
nannies).
It exits by itself when those processes are gone, and is stopped when the cluster stops.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import weakref
from collections.abc import Iterable

import psutil

from .processes import alive, kill_trees, trees

POLL = 0.5
_guards: weakref.WeakKeyDictionary[object, subprocess.Popen[bytes]] = weakref.WeakKeyDictionary()


def guard(owner: object, pids: Iterable[int]) -> None:
    """Start a watchdog that kills ``pids`` (and their children) if this process dies."""
    release(owner)
    roots = sorted({int(p) for p in pids})
    if not roots:
        return
    _guards[owner] = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dtrain_magics.cluster.watchdog",
            str(os.getpid()),
            *map(str, roots),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # survives signals sent to the kernel's process group
        close_fds=True,
    )


def release(owner: object) -> None:
    """Stop ``owner``'s watchdog (the cluster is stopping normally)."""
    proc = _guards.pop(owner, None)
    if proc is not None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def watchdog_pid(owner: object) -> int | None:
    """The pid of ``owner``'s watchdog, if one runs."""
    proc = _guards.get(owner)
    return proc.pid if proc is not None and proc.poll() is None else None


def watch(kernel_pid: int, pids: list[int], poll: float = POLL) -> int:
    """Wait for the kernel to die (then kill the trees) or for the cluster to be gone."""
    roots = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            roots.append(psutil.Process(pid))
    try:
        kernel = psutil.Process(kernel_pid)
    except psutil.Error:
        kill_trees(trees(p.pid for p in roots))
        return 0
    while True:
        if not alive(kernel):
            kill_trees(trees(p.pid for p in roots))
            return 0
        if not any(alive(p) for p in roots):
            return 0
        time.sleep(poll)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not all(a.isdigit() for a in argv):
        print("usage: python -m dtrain_magics.cluster.watchdog KERNEL_PID PID...", file=sys.stderr)
        return 2
    return watch(int(argv[0]), [int(a) for a in argv[1:]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
