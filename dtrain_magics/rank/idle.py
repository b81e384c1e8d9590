"""Horovod that costs nothing while the cluster idles.

Horovod's background thread negotiates every millisecond or so whether anything is to be
reduced, cell or no cell: an idle cluster burns about half a core per rank. Each rank suspends
Horovod (``hvd.shutdown()``, about a millisecond) once ``SUSPEND_AFTER`` seconds pass after its
last cell; a shutdown on one rank ends the background threads of all. A cell that comes
``RESUME_AFTER`` seconds or more after the previous one ended asks, in its request's metadata,
every rank to restart Horovod before its code runs (``hvd.shutdown()`` then ``hvd.init()``,
a few milliseconds, and the same on every rank whatever each one's state). Cells closer together
cost nothing. Ranks on GPUs keep Horovod up: a restart there rebuilds NCCL's communicators at
the next collective (hundreds of milliseconds on one node, seconds across nodes), and the
notebook asks for no restart (``cluster/ranks.py``). A cell on a subset of the ranks does not
ask (``hvd.init`` needs every rank): before it, the runner calls ``hold`` on every rank
instead, which keeps Horovod up on the ranks that stay idle through it, restarting it first
where needed.

One thread per rank waits for the deadline: a cell's end only moves it. Starting a timer thread
per cell held each cell's reply up by most of a millisecond on a busy machine (``Thread.start``
waits until the new thread runs).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from . import collectives

SUSPEND_AFTER = 3.0
RESUME_AFTER = 1.0  # well before any rank suspends: the ranks end a cell at different times
RESUME = "dtrain_resume"
"""The key in an execute request's metadata that asks this rank to restart Horovod."""

_suspending = True  # False on GPUs (``install``)
log = logging.getLogger(__name__)


def _suspend() -> None:
    import horovod.torch as hvd

    with collectives.horovod_lock:
        if hvd.is_initialized():
            hvd.shutdown()
        collectives.forget_pending()  # Horovod's handles start again after the restart


class Suspender:
    """Calls ``action`` on its own thread once a deadline set by ``arm`` passes.

    ``arm`` and ``cancel`` only move the deadline under a lock; the thread, started by the first
    ``arm``, sleeps until the deadline and is woken only when a new one comes sooner. The action
    runs under that lock too, so once ``cancel`` returns no action runs, nor is one still
    running (a cell that begins as the deadline passes restarts Horovod after the suspension).
    """

    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action
        self._cond = threading.Condition()
        self._due: float | None = None
        self._sleeping_until = math.inf  # the thread's wake-up: an earlier deadline must wake it
        self._thread: threading.Thread | None = None

    def arm(self, after: float) -> None:
        """Call the action ``after`` seconds from now, unless armed again or cancelled."""
        with self._cond:
            due = self._due = time.monotonic() + after
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="dtrain-idle", daemon=True)
                self._thread.start()
            elif due < self._sleeping_until:
                self._cond.notify()

    def cancel(self) -> None:
        """Call the action only if ``arm`` is called again."""
        with self._cond:
            self._due = None

    def _run(self) -> None:
        with self._cond:
            while True:
                due = self._due
                now = time.monotonic()
                if due is None or due > now:
                    self._sleeping_until = math.inf if due is None else due
                    self._cond.wait(None if due is None else due - now)
                    continue
                self._due = None
                self._sleeping_until = math.inf
                try:
                    self.action()
                except Exception:  # keep the thread for the next deadline; say what failed
                    log.warning("suspending Horovod while idle failed", exc_info=True)


_suspender = Suspender(_suspend)


def _after_cell() -> None:
    """``post_execute``: suspend Horovod unless another cell comes soon."""
    if _suspending:
        _suspender.arm(SUSPEND_AFTER)


def _cancel() -> None:
    _suspender.cancel()  # returns once no suspension runs: a restart after it stands


def _restart() -> None:
    import horovod.torch as hvd

    with collectives.horovod_lock:
        hvd.shutdown()  # at once if a rank already suspended it
        collectives.forget_pending()
        hvd.init()


def _before_cell() -> None:
    """``pre_execute``: keep Horovod running; restart it if this cell's request asks."""
    _cancel()
    from IPython import get_ipython

    kernel = getattr(get_ipython(), "kernel", None)
    parent = kernel.get_parent("shell") if kernel is not None else {}
    if (parent or {}).get("metadata", {}).get(RESUME):
        _restart()


def hold(restart: bool) -> None:
    """Before a cell on some of the ranks, on every rank: keep Horovod up until the next cell
    (restarting it first with ``restart``, as every rank does at once)."""
    _cancel()
    if restart:
        _restart()


def install(shell: Any, suspend: bool = True) -> None:
    """Suspend and resume Horovod around this rank's cells (idempotent); ``suspend=False``
    (ranks on GPUs) keeps it up between cells."""
    global _suspending
    _suspending = suspend
    if not suspend:
        _suspender.cancel()
    events = shell.events
    if _before_cell not in events.callbacks["pre_execute"]:
        events.register("pre_execute", _before_cell)
        events.register("post_execute", _after_cell)
