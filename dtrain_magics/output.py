"""Rank output: line-buffered, labelled by rank, printed from the notebook's main thread."""

from __future__ import annotations

import sys
from typing import TextIO


class RankOutputPrinter:
    """Prints the new part of each rank's stdout/stderr as whole lines prefixed ``[rank N]``.

    ``feed`` receives the full text captured so far (as ipyparallel accumulates it); only what
    was not seen before is printed, so polling it is cheap and nothing is printed twice.
    """

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self._streams = {"stdout": stdout, "stderr": stderr}
        self._seen: dict[tuple[int, str], int] = {}
        self._partial: dict[tuple[int, str], str] = {}

    def _stream(self, name: str) -> TextIO:
        return self._streams[name] or (sys.stdout if name == "stdout" else sys.stderr)

    def feed(self, rank: int, name: str, text: str) -> None:
        key = (rank, name)
        start = self._seen.get(key, 0)
        if len(text) <= start:
            return
        self._seen[key] = len(text)
        pending = self._partial.pop(key, "") + text[start:]
        *lines, rest = pending.split("\n")
        if rest:
            self._partial[key] = rest
        if lines:
            stream = self._stream(name)
            stream.write("".join(f"[rank {rank}] {line}\n" for line in lines))
            stream.flush()

    def flush(self) -> None:
        """Print any unterminated last lines."""
        for (rank, name), rest in sorted(self._partial.items()):
            self._stream(name).write(f"[rank {rank}] {rest}\n")
        self._partial.clear()
