"""The cluster's processes: which are alive, and stopping whole process trees."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import psutil


def alive(proc: psutil.Process) -> bool:
    """True if ``proc`` runs (a zombie counts as gone)."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def trees(pids: Iterable[int]) -> list[psutil.Process]:
    """The live processes of ``pids`` and all their descendants."""
    found: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            found[pid] = proc
            for child in proc.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            continue
    return [p for p in found.values() if alive(p)]


def kill_trees(procs: list[psutil.Process], grace: float = 3.0, term: bool = True) -> None:
    """SIGTERM ``procs`` (unless ``term`` is False), then SIGKILL what is left after ``grace``."""
    if term:
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
    _, left = psutil.wait_procs(procs, timeout=grace)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(left, timeout=grace)
