"""Why a rank died: read from ``mpiexec``'s own report of the abnormal exit.

When a rank is killed by a signal or exits with a non-zero status, Open MPI's ``prterun``
aborts the whole job and prints which rank ended and how; ipyparallel only knows that the engine
went away. ``cause_of_death`` turns that report into ``(rank, "killed by SIGKILL")``.
"""

from __future__ import annotations

import os
import re
import signal
from typing import Any

_SIGNALLED = re.compile(
    r"process rank (\d+) with PID \d+ on node \S+ exited on\s+signal (\d+)(?: \(([^)]*)\))?"
)
_EXITED = re.compile(r"Process name:\s*\[[^\]]*?(\d+)\]\s*Exit code:\s*(\d+)")


def signal_name(number: int) -> str:
    """``9`` → ``"SIGKILL"``."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def cause_of_death(output: str) -> tuple[int, str] | None:
    """``(rank, cause)`` from ``mpiexec``'s output, or None if it reports no dead rank."""
    match = _SIGNALLED.search(output)
    if match:
        name = signal_name(int(match.group(2)))
        detail = match.group(3)
        cause = f"killed by {name}" + (
            f" ({detail.lower()})" if detail and detail != "Killed" else ""
        )
        return int(match.group(1)), cause
    match = _EXITED.search(output)
    if match:
        return int(match.group(1)), f"exited with code {match.group(2)}"
    return None


def mpiexec_output_files(cluster: Any) -> list[str]:
    """The files the cluster's ``mpiexec`` (one per engine set) writes its output to."""
    ipp_cluster = getattr(cluster, "_cluster", None)
    paths = (getattr(s, "output_file", None) for s in getattr(ipp_cluster, "engines", {}).values())
    return [p for p in paths if p]


def mpiexec_output(cluster: Any, tail: int = 20_000) -> str:
    """The end of what the cluster's ``mpiexec`` printed, read from its output file.

    Read from the file itself: ipyparallel stops refreshing ``get_output()`` once mpiexec exits,
    and mpiexec prints its report of the dead rank just before it exits.
    """
    parts = []
    for path in mpiexec_output_files(cluster):
        if not os.path.exists(path):
            continue
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - tail))
            parts.append(f.read().decode("utf-8", "replace"))
    return "\n".join(parts)
