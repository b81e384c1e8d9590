"""Without a widget front end: labelled output, a summary every few seconds, a final one."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..run.state import RunState
from ..run.straggler import split_text
from .headline import headline, restart_lines
from .rank_lines import LinePrinter
from .rank_values import show_values

TEXT_EVERY = 5.0


class TextView:
    """Prints rank output as ``[rank N] line`` and a summary line every few seconds."""

    def __init__(self, state: RunState, on_stop: Callable[[], None]) -> None:
        self.state = state
        self.lines = LinePrinter(state)
        self._printed_at = time.monotonic()
        self._message = ""
        self._where: object = None
        self._restarts = 0

    def next_refresh(self, now: float) -> float | None:
        if self.state.finished:
            return None
        due = self.lines.next_print()
        summary = self._printed_at + TEXT_EVERY
        return summary if due is None else min(due, summary)

    def refresh(self, force: bool = False) -> None:
        state = self.state
        stall = state.status == "running" and state.stalled and state.message != self._message
        if stall:
            self._message = state.message
            print(f"[dtrain] {state.message}", flush=True)
        if state.where is not None and state.where is not self._where:
            self._where = state.where
            for line in state.where_lines():
                print(f"[dtrain] {line}", flush=True)
        restarts = restart_lines(state)
        for line in restarts[self._restarts :]:
            print(f"[dtrain] {line}", flush=True)
        self._restarts = len(restarts)
        if state.status == "starting cluster" and state.message != self._message:
            self._message = state.message
            print(state.message, flush=True)
        self.lines.print_new(force)
        now = time.monotonic()
        if now - self._printed_at >= TEXT_EVERY:
            self._printed_at = now
            print(f"[dtrain] {headline(state)} · {self._progress()}", flush=True)

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
        for note in state.notes:
            print(f"[dtrain] {note}", flush=True)
        for r in state.ranks:
            if r.split is not None:
                flag = " · holds the others back" if state.straggler_rank == r.rank else ""
                print(f"[dtrain] rank {r.rank}: {split_text(r.split)}{flag}", flush=True)
        if state.stalled:
            ranks = ", ".join(map(str, state.stalled))
            print(f"[dtrain] Horovod reported stalls waiting for rank {ranks}", flush=True)
        if state.store is not None:
            print(f"[dtrain] logs and metrics: {state.store.dir}", flush=True)
        show_values(state)
