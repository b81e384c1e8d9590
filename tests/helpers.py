"""Helpers shared by the tests: live processes, values bound on the ranks."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable
from typing import Any

import psutil

MPI_LAUNCHERS = ("prterun", "orterun", "mpiexec", "hydra_pmi_proxy")
"""What an MPI's ``mpiexec`` runs as: Open MPI 5's ``prterun``, 4's ``orterun`` (each exec'd
by ``mpiexec``), MPICH's Hydra ``mpiexec`` and its ``hydra_pmi_proxy``."""


def wide_listeners(processes: Iterable[psutil.Process]) -> list[tuple[str, str, Any]]:
    """``(name, command, address)`` of every socket ``processes`` listen on beyond loopback."""
    wide = []
    for proc in processes:
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.ip not in ("127.0.0.1", "::1"):
                wide.append((proc.name(), " ".join(proc.cmdline()[:3]), conn.laddr))
    return wide


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` that are still running (zombies count as gone)."""
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            pass
    return running


def wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    """Wait until none of ``pids`` runs; those still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(pids)


def exited_pid() -> int:
    """The process ID of a process that has run and exited (a writer that is surely gone)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def rank_values(cluster: Any, name: str) -> list[Any]:
    """``name`` as bound on every rank, in rank order."""
    return list(cluster.view().pull(name))


# a cell whose ranks loop on allreduce until they are stopped
ALLREDUCE_LOOP = (
    "%%distributed --nodes 2 --no-widget\n"
    "import time, torch\n"
    "print('looping', flush=True)\n"
    "while True:\n"
    "    hvd.allreduce(torch.ones(1))\n"
    "    time.sleep(0.01)\n"
)
