"""Which ranks Horovod reports as stalling, read from ``mpiexec``'s output as it grows.

Horovod's stall inspector (on rank 0, after ``HOROVOD_STALL_CHECK_TIME_SECONDS``, 60 s by
default) prints from C++ to the process's stderr, which ipyparallel does not capture but
``mpiexec`` writes to its output file::

    One or more tensors were submitted to be reduced, gathered or broadcasted by subset of ranks
    and are waiting for remainder of ranks for more than 60 seconds. ...
    Missing ranks:
    1: [allreduce.noname.1]
"""

from __future__ import annotations

import os
import re
from typing import Any

from .deaths import mpiexec_output_files

_MISSING = re.compile(r"Missing ranks:\s*\n((?:\s*\d+: \[.*\]\s*\n?)+)")
_RANK = re.compile(r"^\s*(\d+): \[", re.MULTILINE)


def stalled_ranks(text: str) -> list[int]:
    """The ranks named in every stall warning in ``text``, in order, without repeats."""
    ranks: list[int] = []
    for block in _MISSING.finditer(text):
        for match in _RANK.finditer(block.group(1)):
            rank = int(match.group(1))
            if rank not in ranks:
                ranks.append(rank)
    return ranks


class OutputFollower:
    """Reads what the cluster's ``mpiexec`` output files gained since the last read."""

    def __init__(self, cluster: Any) -> None:
        self._paths = mpiexec_output_files(cluster)
        self._offsets = {p: _size(p) for p in self._paths}

    def new_text(self) -> str:
        parts = []
        for path in self._paths:
            size = _size(path)
            if size > self._offsets[path]:
                with open(path, "rb") as f:
                    f.seek(self._offsets[path])
                    parts.append(f.read(size - self._offsets[path]).decode("utf-8", "replace"))
                self._offsets[path] = size
        return "".join(parts)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
