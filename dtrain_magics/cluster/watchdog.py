"""Kill a cluster's processes when the kernel that started it disappears.

ipyparallel starts the controller and ``mpiexec`` in their own sessions and stops them only at
the kernel's exit (``atexit``), so a kernel killed with SIGKILL (a restart, or the shutdown of a
busy kernel) would leave them running. The watchdog is a tiny process started with the cluster
(``python -m dtrain_magics.cluster.watchdog KERNEL_PID PID... [--slurm-job ID]...``): it polls
the kernel, and once the kernel is gone it terminates the process trees of the cluster
(controller, mpiexec, engines, nannies) and cancels its Slurm jobs (engines on compute nodes
have no process here; they would otherwise hold their nodes until their heartbeat noticed).
It exits by itself when those processes and jobs are gone, and is stopped when the cluster stops.
A kernel that exits normally stops its clusters itself (``stop_at_exit``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import time
import weakref
from collections.abc import Iterable
from typing import Any, Protocol

import psutil

from .processes import alive, kill_trees, trees
from .slurm_jobs import JobPoll, cancel

POLL = 0.5
JOB_POLL = 30.0  # seconds between squeue calls once the processes are gone and a job is left
SLURM_JOB = "--slurm-job"
_guards: weakref.WeakKeyDictionary[object, subprocess.Popen[bytes]] = weakref.WeakKeyDictionary()


class Stoppable(Protocol):
    def stop(self) -> None: ...


_live: weakref.WeakSet[Stoppable] = weakref.WeakSet()


def stop_at_exit(cluster: Stoppable) -> None:
    """Stop ``cluster`` when this process exits normally (held weakly)."""
    _live.add(cluster)


@atexit.register
def _stop_all() -> None:
    for cluster in list(_live):
        cluster.stop()


def guard(owner: object, pids: Iterable[int], slurm_jobs: Iterable[str] = ()) -> None:
    """Start a watchdog that kills ``pids`` (and their children) and cancels ``slurm_jobs``
    if this process dies."""
    release(owner)
    roots = sorted({int(p) for p in pids})
    jobs = [a for job in dict.fromkeys(slurm_jobs) for a in (SLURM_JOB, str(job))]
    if not roots and not jobs:
        return
    _guards[owner] = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dtrain_magics.cluster.watchdog",
            str(os.getpid()),
            *map(str, roots),
            *jobs,
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


def batch_jobs(ipp_cluster: Any) -> list[str]:
    """The batch job ids of ``ipp_cluster``'s engine sets (Slurm's; none for ``mpiexec``)."""
    found = (getattr(s, "job_id", "") for s in ipp_cluster.engines.values())
    return [str(job) for job in found if job]


def watch(
    kernel_pid: int,
    pids: list[int],
    slurm_jobs: list[str] | None = None,
    poll: float = POLL,
    job_poll: float = JOB_POLL,
) -> int:
    """Wait for the kernel to die (then kill the trees and cancel the jobs) or for the cluster
    to be gone."""
    roots = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            roots.append(psutil.Process(pid))
    jobs = [JobPoll(job, every=job_poll) for job in slurm_jobs or ()]

    def end_cluster() -> int:
        for job in jobs:  # first: nodes and GPUs are the scarcer
            cancel(job.job_id)
        kill_trees(trees(p.pid for p in roots))
        return 0

    try:
        kernel = psutil.Process(kernel_pid)
    except psutil.Error:
        return end_cluster()
    while True:
        if not alive(kernel):
            return end_cluster()
        if not any(alive(p) for p in roots) and all(j.poll() == "ended" for j in jobs):
            return 0
        time.sleep(poll)


def main(argv: list[str]) -> int:
    pids, jobs = argv, []
    if SLURM_JOB in argv:
        at = argv.index(SLURM_JOB)
        pids, rest = argv[:at], argv[at:]
        jobs = rest[1::2]
        if rest[::2] != [SLURM_JOB] * len(jobs) or len(rest) != 2 * len(jobs):
            pids = []  # malformed: the usage below
    if not pids or not all(a.isdigit() for a in pids + jobs):
        print(
            "usage: python -m dtrain_magics.cluster.watchdog KERNEL_PID PID... [--slurm-job ID]...",
            file=sys.stderr,
        )
        return 2
    return watch(int(pids[0]), [int(a) for a in pids[1:]], jobs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
