"""Without a widget front end: labelled output, a summary every few seconds, a final one."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from ..run.state import RankState, RunState
from .headline import headline

TEXT_EVERY = 5.0
TEXT_LINES_PER_RANK = 1000  # lines a rank may print into the notebook in text mode
LINES_EVERY = 0.1  # seconds between printing batches of new rank lines


class TextView:
    """Prints rank output as ``[rank N] line`` and a summary line every few seconds."""

    def __init__(self, state: RunState, on_stop: Callable[[], None]) -> None:
        self.state = state
        self._printed_at = self._lines_at = time.monotonic()
        self._lines_shown = [0] * len(state.ranks)
        self._message = ""

    def next_refresh(self, now: float) -> float | None:
        if self.state.finished:
            return None
        if any(r.line_count > self._lines_shown[r.rank] for r in self.state.ranks):
            return self._lines_at + LINES_EVERY
        return self._printed_at + TEXT_EVERY

    def refresh(self, force: bool = False) -> None:
        state = self.state
        stall = state.status == "running" and state.stalled and state.message != self._message
        if stall:
            self._message = state.message
            print(f"[dtrain] {state.message}", flush=True)
        if state.status == "starting cluster" and state.message != self._message:
            self._message = state.message
            print(state.message, flush=True)
        now = time.monotonic()
        if force or now - self._lines_at >= LINES_EVERY:
            self._lines_at = now
            for r in state.ranks:
                new = r.line_count - self._lines_shown[r.rank]
                if new > 0:
                    self._print_lines(r, new)
        if now - self._printed_at >= TEXT_EVERY:
            self._printed_at = now
            print(f"[dtrain] {headline(state)} · {self._progress()}", flush=True)

    def _print_lines(self, r: RankState, new: int) -> None:
        """Print ``r``'s ``new`` lines, up to ``TEXT_LINES_PER_RANK`` per run and rank."""
        shown = self._lines_shown[r.rank]
        room = TEXT_LINES_PER_RANK - min(shown, TEXT_LINES_PER_RANK)
        lines = list(r.lines)[-new:] if new <= len(r.lines) else list(r.lines)
        for stream, line in lines[:room]:
            out = sys.stderr if stream == "stderr" else sys.stdout
            print(f"[rank {r.rank}] {line}", file=out)
        if shown <= TEXT_LINES_PER_RANK < shown + new:
            where = self.state.store.log_paths[r.rank] if self.state.store else "the run's log"
            print(
                f"[rank {r.rank}] … more than {TEXT_LINES_PER_RANK} lines: the rest is not "
                f"shown here; the full output is in {where}",
                flush=True,
            )
        self._lines_shown[r.rank] = r.line_count

    def _progress(self) -> str:
        return ", ".join(
            f"rank {r.rank} {r.n}/{r.total}" if r.total else f"rank {r.rank} {r.n}"
            for r in self.state.ranks
        )

    def close(self) -> None:
        self.refresh(force=True)
        state = self.state
        metrics = ", ".join(
            f"{name} {sum(v.values()) / len(v):.4g}"
            for name, v in sorted(state.latest.items())
            if v
        )
        print(f"[dtrain] {headline(state)}" + (f" · last {metrics}" if metrics else ""), flush=True)
        if state.stalled:
            ranks = ", ".join(map(str, state.stalled))
            print(f"[dtrain] Horovod reported stalls waiting for rank {ranks}", flush=True)
        if state.store is not None:
            print(f"[dtrain] logs and metrics: {state.store.dir}", flush=True)
