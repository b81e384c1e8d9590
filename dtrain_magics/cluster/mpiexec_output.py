"""What ``mpiexec`` prints that ipyparallel does not capture: why a rank died, which rank stalls.

When a rank is killed by a signal or exits with a non-zero status, Open MPI's ``mpiexec``
(``prterun`` from 5, ``orterun`` before) aborts the whole job and prints which rank ended and how.
MPICH's (Hydra) ends the job for a rank killed by a signal, naming its host, or one that calls
``MPI_Abort``, and prints (with ``-print-all-exitcodes``) every rank's wait status as the job ends:
a rank that exits with a code does not end it, and is reported only then. Both print a rank's call
of ``MPI_Abort``. Between hosts, Open MPI may name a rank that aborted because its peer vanished,
not the peer. ipyparallel only knows that the engine went away. ``cause_of_death`` turns those
reports into ``(rank, "killed by SIGKILL")``.

Horovod's stall inspector (on rank 0, after ``HOROVOD_STALL_CHECK_TIME_SECONDS``, 60 s by
default) prints from C++ to the process's stderr, which ``mpiexec`` writes to its output file::

    One or more tensors were submitted to be reduced, gathered or broadcasted by subset of ranks
    and are waiting for remainder of ranks for more than 60 seconds. ...
    Missing ranks:
    1: [allreduce.noname.1]
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

log = logging.getLogger(__name__)
ENGINE_EXITED = "its engine process exited"  # the cause when nothing tells more

# a number is taken only once what follows it is written: the file is read as it grows
_SIGNALLED = re.compile(
    r"process rank (\d+) with PID \d+ on\s+node\s+\S+\s+exited\s+on\s+signal\s+(\d+)(?=[ .\n])"
    r"(?: \(([^)]*)\))?"
)
# the process is ``[prterun-host-4242@1,RANK]`` (Open MPI 5) or ``[[18881,1],RANK]`` (4.x)
_EXITED = re.compile(r"Process name:\s*\[\S*?,(\d+)\]\s*Exit code:\s*(\d+)\s")
# Hydra with -print-all-exitcodes, a line per host, ranks in order:
# "[mpiexec@vm] Exit codes: [vm] 0,768,0\n[node-b] 0,0\n"
_HYDRA_STATUSES = re.compile(r"Exit codes: ((?:\[[^\]\s]+\] [\d,]+[ \t]*\n)+)")
_HOST_LINE = re.compile(r"\[([^\]\s]+)\] ([\d,]+)")
# Hydra, as it ends the job for a process killed by a signal (its wait status, 9 for SIGKILL)
_HYDRA_BAD_END = re.compile(
    r"BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES[ \t]*\n=[ \t]*PID \d+ RUNNING AT "
    r"(\S+)[ \t]*\n=[ \t]*EXIT CODE: (\d+)[ \t]*\n"
)
# the program called MPI_Abort: Open MPI (5 adds "Proc: [[job,1],WORLD_RANK]"), then MPICH;
# a communicator without a name is "MPI COMM 3 SPLIT FROM 0"
_ABORT_CALLED = re.compile(
    r"MPI_ABORT was invoked on rank (\d+) in communicator ([^\n]+)\n\s*"
    r"(?:Proc:\s*\[\[\d+,\d+\],(\d+)\]\s+)?(?:with errorcode|Errorcode:)\s*(-?\d+)\D"
)
_HYDRA_ABORT_CALLED = re.compile(
    r"application called MPI_Abort\([^,]*, (-?\d+)\) - process (\d+)\s"
)
# Open MPI: the rank whose abort ended the job, MPI_Abort's or its error handler's
_ABORTED = re.compile(
    r"due\s+to\s+process\s+rank\s+(\d+)\s+with\s+PID\s+\d+\s+on\s+node\s+\S+\s+calling\s+\"abort\""
)
# the error handler's banner, and the TCP transport's words for a peer that vanished
_MPI_ERROR = re.compile(r"\*\*\* An error occurred in ([^\n]+)\n")
_LOST_PEER = re.compile(r"peer process has unexpectedly disconnected.*?Peer host:\s*(\S+)\s", re.S)
_PEER_GONE = "Socket closed"
_MISSING = re.compile(r"Missing ranks:\s*\n((?:\s*\d+: \[.*\]\s*\n?)+)")
_RANK = re.compile(r"^\s*(\d+): \[", re.MULTILINE)


def signal_name(number: int) -> str:
    """``9`` → ``"SIGKILL"``."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


Hosts = Sequence[str | tuple[str, ...]]
"""Each rank's host, by one name or several (as Slurm names its node, and the host's own)."""


def cause_of_death(
    output: str,
    first_exit: int | None = None,
    hosts: Hosts | None = None,
    final: bool = True,
) -> tuple[int, str] | None:
    """``(rank, cause)`` from ``mpiexec``'s output, or None if it reports no dead rank.

    ``first_exit`` is the rank whose engine was seen ending first (``ExitOrder``), where known,
    and ``hosts`` each rank's host. Hydra's statuses at the end of the job name every rank: the
    dead one is ``first_exit``, else the one that ended otherwise than by Hydra's SIGKILL. Its
    banner for a process killed by a signal names the host, and the first of the host's
    processes it then killed: taken where the statuses do not tell, once they or the ``final``
    read are there, where that host runs one rank.
    Before the ``final`` read (mpiexec is still writing), a report that may yet be followed by
    what explains it gives None."""
    match = _SIGNALLED.search(output)
    if match:
        return int(match.group(1)), _killed(int(match.group(2)), match.group(3))
    match = _EXITED.search(output)
    if match:
        return int(match.group(1)), f"exited with code {match.group(2)}"
    found = _abort_called(output) or _aborted(output, first_exit, hosts, final)
    if found is not None:
        return found
    statuses = _hydra_statuses(output, first_exit, hosts)
    if statuses is not None and statuses[1] != ENGINE_EXITED:
        return statuses
    # the banner comes before the statuses, Hydra's last words: with them, it is all there is
    written = final or _HYDRA_STATUSES.search(output) is not None
    banner = _hydra_bad_end(output, first_exit, hosts) if written else None
    return banner or statuses


def _abort_called(output: str) -> tuple[int, str] | None:
    """The rank that called ``MPI_Abort``, and its error code. Open MPI 4 names the rank in
    the communicator given; for another than MPI_COMM_WORLD, the rank whose abort ended the job
    is taken instead."""
    match = _ABORT_CALLED.search(output)
    if match:
        rank = match.group(3)  # Open MPI 5's world rank
        if rank is None and match.group(2).strip() != "MPI_COMM_WORLD":
            ended = _ABORTED.search(output)
            rank = ended.group(1) if ended and not _lost_peer(output) else None
        return int(rank or match.group(1)), f"called MPI_Abort with error code {match.group(4)}"
    match = _HYDRA_ABORT_CALLED.search(output)
    if match:
        return int(match.group(2)), f"called MPI_Abort with error code {match.group(1)}"
    return None


def _lost_peer(output: str) -> bool:
    return _LOST_PEER.search(output) is not None or f"An error occurred in {_PEER_GONE}" in output


def _aborted(
    output: str, first_exit: int | None, hosts: Hosts | None, final: bool
) -> tuple[int, str] | None:
    """Open MPI's report of a rank aborted by MPI's error handler. The rank seen ending first,
    where known, is the dead one. Else, when the error was a peer that vanished (the transport
    between hosts sees it first), it is that peer: the only other rank on the peer's host, or the
    other of two; else nothing is claimed."""
    match = _ABORTED.search(output)
    if not match:
        return None
    rank = int(match.group(1))
    error = _MPI_ERROR.search(output)
    if error is None and not final:
        return None  # the rank's own banner, forwarded, may come after mpiexec's line
    what = f"an MPI error in {error.group(1).strip()}" if error else "an MPI error"
    lost = _lost_peer(output)
    if first_exit is not None and first_exit != rank:
        dead: int | None = first_exit
    elif lost:
        dead = _peer(output, rank, hosts)
    else:
        return rank, f"aborted on {what}"
    if dead is None:
        return None
    how = "lost its connection to it" if lost else f"then aborted on {what}"
    return dead, f"{ENGINE_EXITED}; rank {rank} {how}"


def _peer(output: str, rank: int, hosts: Hosts | None) -> int | None:
    """The rank that ``rank`` lost: the only other one on the banner's peer host, or the other
    of two; None if that does not tell."""
    others = [r for r in range(len(hosts or ())) if r != rank]
    lost = _LOST_PEER.search(output)
    if hosts and lost:
        there = [r for r in _ranks_on(hosts, lost.group(1)) if r != rank]
        if len(there) == 1:
            return there[0]
    return others[0] if len(others) == 1 else None


def _short(host: str) -> str:
    """``node-b.example.org`` → ``node-b``, as MPI and ``gethostname`` may each write it."""
    return host.split(".")[0].lower()


def _ranks_on(hosts: Hosts, name: str) -> list[int]:
    """The ranks whose host goes by ``name`` (by any of its names)."""
    names = [(h,) if isinstance(h, str) else h for h in hosts]
    return [r for r, known in enumerate(names) if _short(name) in {_short(n) for n in known}]


def _hydra_bad_end(
    output: str, first_exit: int | None, hosts: Hosts | None
) -> tuple[int, str] | None:
    """The rank in Hydra's banner for a process killed by a signal: the only rank on the host it
    names, and only if no other rank was seen ending first (the banner shows the first process
    in the host's list that was killed, which may be one Hydra killed itself)."""
    match = _HYDRA_BAD_END.search(output)
    if match is None or hosts is None:
        return None
    there = _ranks_on(hosts, match.group(1))
    if len(there) != 1 or first_exit not in (None, there[0]):
        return None
    return there[0], _ended(int(match.group(2)))


def _hydra_statuses(
    output: str, first_exit: int | None, hosts: Hosts | None
) -> tuple[int, str] | None:
    """The dead rank in Hydra's ``Exit codes:`` lines (wait statuses, a line per host, in rank
    order). A host whose proxy failed has no line, and the ranks after it cannot be placed by
    position: then only ``first_exit`` is named, with its status if its host's line has one
    status per rank there."""
    blocks = _HYDRA_STATUSES.findall(output)
    if not blocks:
        return None
    lines = _HOST_LINE.findall(blocks[-1])
    statuses = [int(s) for _, codes in lines for s in codes.split(",")]
    if hosts is not None and len(statuses) != len(hosts):
        if first_exit is None:
            return None
        for host, codes in lines:
            there, ended = _ranks_on(hosts, host), codes.split(",")
            if first_exit in there and len(there) == len(ended):
                return first_exit, _ended(int(ended[there.index(first_exit)]))
        return first_exit, ENGINE_EXITED
    if first_exit is not None and first_exit < len(statuses):
        return first_exit, _ended(statuses[first_exit])
    # Hydra kills the other ranks with SIGKILL: a rank that ended otherwise is the one (read
    # after our own stop, another may have ended by it: the reader then gives first_exit)
    own = [r for r, s in enumerate(statuses) if s and not _sigkill(s)]
    killed = [r for r, s in enumerate(statuses) if _sigkill(s)]
    if own:
        return own[0], _ended(statuses[own[0]])
    if len(killed) == 1:
        return killed[0], _ended(statuses[killed[0]])
    return None  # every rank killed alike: which came first is not known


def _sigkill(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _ended(status: int) -> str:
    """``killed by SIGSEGV`` or ``exited with code 3``, from a wait status."""
    if os.WIFSIGNALED(status):
        return _killed(os.WTERMSIG(status), None)
    return f"exited with code {os.WEXITSTATUS(status)}"


def _killed(number: int, detail: str | None) -> str:
    """``killed by SIGSEGV (segmentation fault)``: the signal, and MPI's words for it."""
    detail = (detail or "").strip()
    shown = f" ({detail.lower()})" if detail and detail != "Killed" else ""
    return f"killed by {signal_name(number)}{shown}"


def stalled_ranks(text: str) -> list[int]:
    """The ranks named in every stall warning in ``text``, in order, without repeats."""
    ranks: list[int] = []
    for block in _MISSING.finditer(text):
        for match in _RANK.finditer(block.group(1)):
            rank = int(match.group(1))
            if rank not in ranks:
                ranks.append(rank)
    return ranks


def output_files(ipp_cluster: Any) -> list[str]:
    """The files the cluster's ``mpiexec`` (one per engine set) writes its output to."""
    paths = (getattr(s, "output_file", None) for s in getattr(ipp_cluster, "engines", {}).values())
    return [p for p in paths if p]


def read_tail(ipp_cluster: Any, tail: int = 20_000) -> str:
    """The end of what the cluster's ``mpiexec`` printed.

    Read from its output file while mpiexec runs (it prints its report of a dead rank just
    before it exits). Once it has exited, ipyparallel reads that file into the engine set, once,
    and removes it: the text is then taken from there.
    """
    parts = []
    for engine_set in getattr(ipp_cluster, "engines", {}).values():
        path = getattr(engine_set, "output_file", "")
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - tail))
                parts.append(f.read().decode("utf-8", "replace"))
        except OSError:  # removed at exit: ipyparallel kept what it held
            parts.append((getattr(engine_set, "_output", None) or "")[-tail:])
    return "\n".join(parts)


def mpi_report(
    ipp_cluster: Any,
    exited: Callable[[], bool],
    env: tuple[tuple[str, str], ...] = (),
    wait: float = 3.0,
) -> str:
    """What MPI itself said at the end of ``mpiexec``'s output once it has ``exited`` (it
    writes why as it ends the job; ``wait`` seconds at most), without the engines' log lines
    (``[IPEngine.0.0] Handling apply_request …``), and the MPI settings of
    this process's environment and ``env`` (the ``--env`` pairs): a rank that aborts in
    ``MPI_Init`` may end the job before MPI prints which one it could not use."""
    deadline = time.monotonic() + wait
    while not exited() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = read_tail(ipp_cluster, 6000).splitlines()
    kept = [line for line in lines if "[IPEngine" not in line and not line.startswith("addrs:")]
    given = {**os.environ, **dict(env)}
    # the variables that set Open MPI, MPICH and MPICH's transports (UCX, libfabric)
    prefixes = ("OMPI_MCA_", "MPIR_CVAR_", "UCX_", "FI_")
    settings = sorted(f"{k}={v}" for k, v in given.items() if k.startswith(prefixes))
    if settings:
        kept.append(f"(the ranks' environment sets {', '.join(settings)}: check those first)")
    return "\n".join(kept).strip()


class OutputFollower:
    """Reads what ``mpiexec``'s output files gain, from files held open since it was made.

    Held open, a file stays readable after another process removes it (ipyparallel's server
    extension in JupyterLab reads and removes an engine set's output file once mpiexec exits,
    which is when mpiexec has just printed its report of a dead rank).
    """

    def __init__(self, paths: list[str], tail: int = 20_000) -> None:
        self._files: list[IO[bytes]] = []
        for path in paths:
            try:
                f = open(path, "rb")  # noqa: SIM115 (held open until close)
            except OSError:
                continue
            f.seek(0, os.SEEK_END)
            self._files.append(f)
        self._tail = tail
        self.text = ""  # the last ``tail`` characters read

    def new_text(self) -> str:
        """What the files gained since the last call."""
        parts = []
        for f in self._files:
            try:
                parts.append(f.read().decode("utf-8", "replace"))
            except (OSError, ValueError):  # closed
                log.debug("could not read mpiexec's output", exc_info=True)
        new = "".join(parts)
        if new:
            self.text = (self.text + new)[-self._tail :]
        return new

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []
