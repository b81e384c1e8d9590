"""Horovod that costs nothing while the cluster idles.

Horovod's background thread negotiates every millisecond or so whether anything is to be
reduced, cell or no cell: an idle cluster burns about half a core per rank. Each rank suspends
Horovod (``hvd.shutdown()``, about a millisecond) once ``SUSPEND_AFTER`` seconds pass after its
last cell; a shutdown on one rank ends the background threads of all. A cell that comes
``RESUME_AFTER`` seconds or more after the previous one ended asks, in its request's metadata,
every rank to restart Horovod before its code runs (``hvd.shutdown()`` then ``hvd.init()``,
a few milliseconds, and the same on every rank whatever each one's state). Cells closer together
cost nothing. A cell on a subset of the ranks does not ask (``hvd.init`` needs every rank):
before it, the runner calls ``hold`` on every rank instead, which keeps Horovod up on the ranks
that stay idle through it, restarting it first where needed.
"""

from __future__ import annotations

import threading
from typing import Any

from . import collectives

SUSPEND_AFTER = 3.0
RESUME_AFTER = 1.0  # well before any rank suspends: the ranks end a cell at different times
RESUME = "dtrain_resume"
"""The key in an execute request's metadata that asks this rank to restart Horovod."""

_lock = threading.Lock()
_timer: threading.Timer | None = None


def _suspend() -> None:
    import horovod.torch as hvd

    with _lock:
        if hvd.is_initialized():
            hvd.shutdown()
        collectives.forget_pending()  # Horovod's handles start again after the restart


def _after_cell() -> None:
    """``post_execute``: suspend Horovod unless another cell comes soon."""
    global _timer
    _timer = threading.Timer(SUSPEND_AFTER, _suspend)
    _timer.daemon = True
    _timer.start()


def _cancel() -> None:
    global _timer
    if _timer is not None:
        _timer.cancel()
        _timer = None


def _restart() -> None:
    import horovod.torch as hvd

    with _lock:
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


def install(shell: Any) -> None:
    """Suspend and resume Horovod around this rank's cells (idempotent)."""
    events = shell.events
    if _before_cell not in events.callbacks["pre_execute"]:
        events.register("pre_execute", _before_cell)
        events.register("post_execute", _after_cell)
