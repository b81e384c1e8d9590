"""Rank output in the cell, as ``%%px`` shows it: each line labelled ``[rank N]``.

Lines are printed in batches (at most every ``EVERY`` seconds) to the cell's own stdout and
stderr, so they stay in the saved notebook; a rank that prints nothing takes no space. Past
``LIMIT`` lines a rank's output goes on in its log file only, and the cell says where.
"""

from __future__ import annotations

import sys
import time

from ..run.state import RankState, RunState

EVERY = 0.1
LIMIT = 1000


class LinePrinter:
    """Prints the lines the ranks of one run add to its state."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self._shown = {r.rank: 0 for r in state.ranks}
        self._at = 0.0

    def pending(self) -> bool:
        return any(r.line_count > self._shown[r.rank] for r in self.state.ranks)

    def next_print(self) -> float | None:
        """When the next batch is due (``time.monotonic()``), None if nothing is waiting."""
        return self._at + EVERY if self.pending() else None

    def print_new(self, force: bool = False) -> None:
        """Print what the ranks added, if a batch is due (or ``force``)."""
        now = time.monotonic()
        if not force and now - self._at < EVERY:
            return
        self._at = now
        for r in self.state.ranks:
            new = r.line_count - self._shown[r.rank]
            if new > 0:
                self._print(r, new)

    def _print(self, r: RankState, new: int) -> None:
        shown = self._shown[r.rank]
        room = LIMIT - min(shown, LIMIT)
        lines = list(r.lines)[-new:] if new <= len(r.lines) else list(r.lines)
        for stream, line in lines[:room]:
            out = sys.stderr if stream == "stderr" else sys.stdout
            print(f"[rank {r.rank}] {line}", file=out)
        if shown <= LIMIT < shown + new:
            where = self.state.store.log_paths[r.rank] if self.state.store else "the run's log"
            print(
                f"[rank {r.rank}] … more than {LIMIT} lines: the rest is not shown here; "
                f"the full output is in {where}",
                flush=True,
            )
        self._shown[r.rank] = r.line_count
        sys.stdout.flush()
