"""Which rank died, and how: read from mpiexec's report while MPI aborts the job, and once
more after the runner stopped it (MPICH's Hydra reports a rank's exit code only then)."""

from __future__ import annotations

import asyncio
import logging
import time

from ..cluster.mpiexec_output import ENGINE_EXITED, cause_of_death
from ..cluster.training_cluster import TrainingCluster
from .watch import RankWatch

log = logging.getLogger(__name__)
Death = tuple[int, str]

REPORT_WAIT = 15.0
"""Seconds to wait for the report of a rank's death: Open MPI writes it as it aborts the job,
which takes several on a loaded machine."""
HYDRA_WAIT = 3.0
"""The same under MPICH's Hydra, which writes its report at once when a rank is killed by a
signal, and none until the job ends when one exits with a code: the stop then ends it."""
FOREIGN_SETTLE = 0.5
"""Seconds a cluster started elsewhere gets for the hub's word of the other engines MPI ended
(there is no report of ours to read)."""


class DeathReader:
    """Reads ``mpiexec``'s report of the rank that died in ``cluster``'s job, from the
    ``watch``'s held-open output (readable after the job was stopped), else the cluster's."""

    def __init__(self, cluster: TrainingCluster, watch: RankWatch) -> None:
        self._cluster = cluster
        self._watch = watch
        self._hosts = [(e.node, e.host) for e in cluster.engines]  # this job's, kept over a restart
        self._order = cluster.exit_order
        self._hydra = cluster.hydra

    async def read(
        self, wait: float | None = None, every: float = 0.1, settle: float = 1.0
    ) -> Death | None:
        """``(rank, cause)`` from the report, if ``mpiexec`` makes one.

        ``mpiexec`` writes it as it aborts the job, then exits (a batch job leaves the queue):
        wait for either, at most ``wait`` seconds (by default ``REPORT_WAIT``, ``HYDRA_WAIT``
        under Hydra), taking the ranks' last output meanwhile, then read for ``settle`` seconds
        more (a batch job's file may reach a shared file system late). Without a report, the
        rank whose engine was seen ending first, where known. An interrupt (Stop) ends the wait,
        not the caller's stopping of the ranks. A cluster started elsewhere has no report to
        read: the ranks' ends are taken for ``FOREIGN_SETTLE`` seconds.
        """
        if not self._cluster.owns_processes:  # its mpiexec is not ours to read
            await asyncio.sleep(FOREIGN_SETTLE)
            self._watch.poll(interrupted=True)
            return self._ended_first()
        if wait is None:
            wait = HYDRA_WAIT if self._hydra else REPORT_WAIT
        deadline = time.monotonic() + wait
        exited = False
        while True:
            final = time.monotonic() >= deadline
            death = self._read(final)
            if death is not None or final:
                return death or self._ended_first()
            self._watch.poll(interrupted=True)
            try:
                if not exited and await asyncio.to_thread(self._cluster.engines_exited, True):
                    exited, deadline = True, min(deadline, time.monotonic() + settle)
                await asyncio.sleep(every)  # mpiexec is writing its report right now
            except (KeyboardInterrupt, asyncio.CancelledError):  # Stop: the ranks' stop goes on
                return self._read(True) or self._ended_first()

    def after_stop(self, death: Death | None) -> Death | None:
        """``death`` made exact from what ``mpiexec`` wrote as the job was stopped (Hydra's
        statuses at its exit), when it named no cause: one read of the held-open output, for
        the one rank seen dead before the stop (the stop ended the others)."""
        dead = self._watch.died  # with several, statuses at the end do not tell which was first
        if (death is not None and death[1] != ENGINE_EXITED) or len(dead) != 1:
            return death or self._ended_first()
        read = self._read(True, stopped=True, first=dead[0])
        return read if read is not None and read[0] == dead[0] else death or self._ended_first()

    def _first_exit(self) -> int | None:
        """The rank whose engine process was seen ending first (one-host clusters), else None."""
        return self._order.first if self._order is not None else None

    def _ended_first(self) -> Death | None:
        """``(rank, cause)`` for the rank seen ending first, when mpiexec did not say."""
        first = self._first_exit()
        return None if first is None else (first, ENGINE_EXITED)

    def _read(self, final: bool, stopped: bool = False, first: int | None = None) -> Death | None:
        """The dead rank and its cause in what mpiexec has written so far, if it says;
        ``final`` once it has written all it will; ``first`` the rank that ended first, where
        known. Once the job was ``stopped``, the cluster's own output is another job's."""
        first = self._first_exit() if first is None else first
        try:
            death = None
            if self._watch.mpiexec is not None:
                self._watch.mpiexec.new_text()
                death = cause_of_death(self._watch.mpiexec.text, first, self._hosts, final)
            if death is not None or stopped:
                return death
            return cause_of_death(self._cluster.mpiexec_output(), first, self._hosts, final)
        except OSError:
            log.debug("could not read mpiexec's output", exc_info=True)
            return None
