"""Which rank died, and how: read from mpiexec's report while MPI aborts the job."""

from __future__ import annotations

import asyncio
import logging
import time

from ..cluster.mpiexec_output import ENGINE_EXITED, cause_of_death
from ..cluster.training_cluster import TrainingCluster
from .watch import RankWatch

log = logging.getLogger(__name__)


async def read_cause_of_death(
    cluster: TrainingCluster,
    watch: RankWatch,
    wait: float = 15.0,
    every: float = 0.1,
    settle: float = 1.0,
) -> tuple[int, str] | None:
    """``(rank, cause)`` from ``mpiexec``'s report of the rank that died, if it makes one.

    mpiexec writes the report as it aborts the job, then exits (a batch job leaves the queue):
    wait for either, at most ``wait`` seconds (a loaded machine can take several), taking the
    ranks' last output meanwhile, then read for ``settle`` seconds more (a batch job's file may
    reach a shared file system late). Read from the watch's held-open files, else from the
    cluster's engine sets. Without a report, the rank whose engine was seen ending first, where
    known. An interrupt (Stop) ends the wait, not the caller's stopping of the ranks.
    """
    deadline = time.monotonic() + wait
    exited = False
    hosts = [e.host for e in cluster.engines]
    while True:
        final = time.monotonic() >= deadline
        death = _read(cluster, watch, hosts, final)
        if death is not None or final:
            return death or _ended_first(cluster)
        watch.poll(interrupted=True)
        try:
            if not exited and await asyncio.to_thread(cluster.engines_exited, True):
                exited, deadline = True, min(deadline, time.monotonic() + settle)
            await asyncio.sleep(every)  # mpiexec is writing its report right now
        except (KeyboardInterrupt, asyncio.CancelledError):  # Stop: the ranks' stop goes on
            return _read(cluster, watch, hosts, True) or _ended_first(cluster)


def _first_exit(cluster: TrainingCluster) -> int | None:
    """The rank whose engine process was seen ending first (one-host clusters), else None."""
    return cluster.exit_order.first if cluster.exit_order is not None else None


def _ended_first(cluster: TrainingCluster) -> tuple[int, str] | None:
    """``(rank, cause)`` for the rank seen ending first, when mpiexec did not say."""
    first = _first_exit(cluster)
    return None if first is None else (first, ENGINE_EXITED)


def _read(
    cluster: TrainingCluster, watch: RankWatch, hosts: list[str], final: bool
) -> tuple[int, str] | None:
    """The dead rank and its cause in what mpiexec has written so far, if it says (``hosts``:
    each rank's); ``final`` once it has written all it will."""
    first = _first_exit(cluster)
    try:
        death = None
        if watch.mpiexec is not None:
            watch.mpiexec.new_text()
            death = cause_of_death(watch.mpiexec.text, first, hosts, final)
        return death or cause_of_death(cluster.mpiexec_output(), first, hosts, final)
    except OSError:
        log.debug("could not read mpiexec's output", exc_info=True)
        return None
