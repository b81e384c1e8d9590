"""Let an interrupt reach a rank blocked in a Horovod collective, at no cost until it comes.

Horovod 0.28 waits for a collective in C++ (``horovod_torch_wait_and_clear`` spins and yields,
never checking Python's signal flag), so SIGINT (the notebook's stop button, ``--timeout``, or
another rank's failure) cannot interrupt a rank whose collective waits for a peer that will
never join. A guard thread sleeps on the pipe that Python's C-level signal handler writes to
(``signal.set_wakeup_fd``): it runs only when a signal arrives, and the training loop pays
nothing. If the main thread is still inside Horovod's wait a moment after SIGINT, the guard
shuts Horovod down: the pending collective then ends with an error, the main thread is back in
Python and raises the ``KeyboardInterrupt``. The runner then initialises Horovod again.

``ignore_after_cell`` closes the other side: a SIGINT that arrives once the cell's code has
ended (its own error was already on its way when another rank's reached the notebook) is
ignored instead of breaking the engine's reply.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from . import collectives

GRACE = 0.5
"""Seconds a collective may go on after SIGINT before the guard ends it (a slow one finishes)."""
_guard: InterruptGuard | None = None


def horovod_wait(thread_id: int) -> FrameType | None:
    """The frame of Horovod's ``synchronize`` if that is where the thread is (waiting in C++)."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return None
    code = frame.f_code
    if code.co_name == "wait_and_clear" and code.co_filename == collectives.__file__:
        frame = frame.f_back  # the wait's wrapper (collectives.py), called by synchronize
        if frame is None:
            return None
        code = frame.f_code
    return frame if code.co_name == "synchronize" and "horovod" in code.co_filename else None


class InterruptGuard:
    """A thread woken by signals only, ending a Horovod wait that an interrupt cannot reach."""

    def __init__(
        self, on_stuck: Callable[[], None] = collectives.shutdown_horovod, grace: float = GRACE
    ) -> None:
        self.on_stuck, self.grace = on_stuck, grace
        self.main = threading.main_thread().ident or 0
        self.stuck_ended = 0  # how many waits the guard ended (read by tests)
        self._read, write = os.pipe()
        os.set_blocking(write, False)
        previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._forward = previous if previous >= 0 else None  # someone else's wakeup fd
        threading.Thread(target=self._run, name="dtrain-interrupt-guard", daemon=True).start()

    def _run(self) -> None:
        while True:
            received = os.read(self._read, 512)
            if self._forward is not None:
                with contextlib.suppress(OSError):  # its owner closed it
                    os.write(self._forward, received)
            if signal.SIGINT in received:
                self._interrupted()

    def _interrupted(self) -> None:
        waiting = horovod_wait(self.main)
        if waiting is None:  # in Python, or another call: Python raises the interrupt itself
            return
        time.sleep(self.grace)
        if horovod_wait(self.main) is waiting:  # the same wait, still blocked
            self.stuck_ended += 1
            self.on_stuck()


def _late_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT after the cell's code has ended: meant for the cell, too late for it; ignored."""


def _cell_ended() -> None:
    """``post_execute``, first of the hooks: the cell's code is over, so a SIGINT sent to stop
    it (another rank failed at the same moment) must not abort the hooks or the reply. The
    kernel puts its own handler back when the request ends, and its default one before the
    next."""
    signal.signal(signal.SIGINT, _late_interrupt)


def ignore_after_cell(shell: object) -> None:
    """Have this rank ignore SIGINT from the end of each cell's code (idempotent)."""
    hooks = shell.events.callbacks["post_execute"]  # type: ignore[attr-defined]
    if _cell_ended not in hooks:
        hooks.insert(0, _cell_ended)


def install() -> InterruptGuard:
    """Start this rank's guard (once; it must be called from the main thread)."""
    global _guard
    if _guard is None:
        _guard = InterruptGuard()
    return _guard
