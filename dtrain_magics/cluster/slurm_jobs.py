"""A Slurm job's state from ``squeue``, asked at most every few seconds, and ``scancel``.

Schedulers rate-limit their clients, so a start asks ``squeue`` at most every ``POLL_EVERY``
seconds however often it checks. A query that fails (a timeout, "Socket timed out", another
error) tells nothing: only an answer without the job, or Slurm's "Invalid job id", means the
job is gone. Kept free of the launchers' imports: the watchdog process uses it.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from typing import Literal

log = logging.getLogger(__name__)

JobState = Literal["pending", "running", "ended", "unknown"]
"""``pending``: waiting for nodes (queued, or its nodes booting); ``running``; ``ended``: it
finished or left the queue; ``unknown``: ``squeue`` did not answer."""

POLL_EVERY = 2.0  # seconds between two squeue calls for one job
QUERY_TIMEOUT = 10.0  # seconds one squeue or scancel may take

# squeue's long state names (%T); any other state of a job still listed counts as running
_WAITING = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
)
_ENDED = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "COMPLETING",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
_GONE = "Invalid job id"  # squeue's error (exit 1) for a job the controller no longer knows


def parse_squeue(returncode: int | None, stdout: str, stderr: str) -> tuple[JobState, str]:
    """The state of one job from ``squeue -h -j ID -o %T``: ours, and Slurm's word for it.

    ``returncode`` None means ``squeue`` did not run or did not finish.
    """
    if returncode is None:
        return "unknown", ""
    if returncode != 0:
        return ("ended", "") if _GONE in stderr else ("unknown", "")
    words = stdout.split()
    if not words:
        return "ended", ""  # the controller answered, without the job
    word = words[0]
    if word in _WAITING:
        return "pending", word
    return ("ended" if word in _ENDED else "running"), word


def query_state(job_id: str) -> tuple[JobState, str]:
    """Ask ``squeue`` for ``job_id``'s state once."""
    try:
        done = subprocess.run(
            ["squeue", "-h", "-j", str(job_id), "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=QUERY_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError):
        log.debug("squeue failed", exc_info=True)
        return "unknown", ""
    state = parse_squeue(done.returncode, done.stdout, done.stderr)
    if state[0] == "unknown":
        log.debug("squeue -j %s: exit %s: %s", job_id, done.returncode, done.stderr.strip())
    return state


class JobPoll:
    """One job's state, asked of ``query`` at most every ``every`` seconds.

    Between queries, and when a query fails, the last known state stands (``unknown`` before
    the first answer).
    """

    def __init__(
        self,
        job_id: str,
        every: float = POLL_EVERY,
        query: Callable[[str], tuple[JobState, str]] = query_state,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id = job_id
        self.every = every
        self._query = query
        self._clock = clock
        self._asked_at: float | None = None
        self.state: JobState = "unknown"
        self.word = ""  # Slurm's name of the state (PENDING, CONFIGURING…)

    def poll(self) -> JobState:
        """The job's state, asking ``squeue`` if the last question is ``every`` seconds old."""
        now = self._clock()
        if self._asked_at is None or now - self._asked_at >= self.every:
            self._asked_at = now
            state, word = self._query(self.job_id)
            if state != "unknown":
                self.state, self.word = state, word
        return self.state


def cancel(job_id: str, tries: int = 3, pause: float = 2.0) -> bool:
    """``scancel job_id``, tried again after a failure; True once Slurm accepted it (or no
    longer knows the job)."""
    for attempt in range(tries):
        try:
            done = subprocess.run(
                ["scancel", str(job_id)], capture_output=True, text=True, timeout=QUERY_TIMEOUT
            )
            if done.returncode == 0 or _GONE in done.stderr:
                return True
            log.debug("scancel %s: exit %s: %s", job_id, done.returncode, done.stderr.strip())
        except (OSError, subprocess.SubprocessError):
            log.debug("scancel failed", exc_info=True)
        if attempt + 1 < tries:
            time.sleep(pause)
    return False
