"""A cell on some of the ranks (``--ranks``): its collectives can never complete, so they fail.

The runner marks such a cell in its execute request's metadata (``SUBSET``: the ranks it runs
on, as text). While it runs, a thread on each of those ranks looks every ``POLL`` seconds at
the collective the main thread waits in (``collectives.clock``). Found twice in the same wait,
it tells the notebook (``STUCK``: the sentence to show and the cell's line) and ends the wait:
Horovod's by shutting Horovod down here; a ``torch.distributed`` wait only ends when the other
ranks drop their process group, which the notebook has them do. The runner then shows the
sentence for the error the ended wait raised, and resets the backend on every rank.
``dtrain.barrier``, ``checkpoint`` and ``load_checkpoint`` call ``check``, which raises
``CollectiveNeedsEveryRank`` at once. Outside such cells the thread sleeps on an event.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from types import FrameType, TracebackType
from typing import Any

from .collectives import Waiting, clock, shutdown_horovod
from .tracebacks import rebuild, render
from .where import _is_library

SUBSET = "dtrain_ranks"
"""The key in an execute request's metadata naming the ranks a cell runs on (``"0,2-3"``)."""
STUCK = "dtrain-stuck"
"""The data key a rank publishes when it waits in a collective that needs the notebook's help."""
POLL = 0.1

_subset = ""  # the ranks of the cell running now, if it runs on some of them only
_active = threading.Event()
_watcher: threading.Thread | None = None


class CollectiveNeedsEveryRank(RuntimeError):
    """A collective in a cell that runs on some of the ranks only."""

    def __init__(self) -> None:
        super().__init__(_sentence())

    def _render_traceback_(self) -> list[str]:
        """The cell's frames down to the collective's call, not the library inside it."""
        return render(self, rebuild(_user_frames(self.__traceback__)))


def _sentence() -> str:
    """What the rank did, after "rank N": the collective needs every rank."""
    ranks = _subset or "?"
    which = f"rank {ranks}" if ranks.isdigit() else f"ranks {ranks}"
    return (
        f"called a collective in a cell that runs on {which} only (--ranks {ranks}); "
        "collectives need every rank, so run it without --ranks"
    )


def _user_frames(tb: TracebackType | None) -> list[TracebackType]:
    """The frames of the user's code: after IPython's, before the library's."""
    frames: list[TracebackType] = []
    while tb is not None:
        if _is_library(tb.tb_frame.f_code.co_filename):
            if frames:
                break
        else:
            frames.append(tb)
        tb = tb.tb_next
    return frames


def check() -> None:
    """Raise ``CollectiveNeedsEveryRank`` in a cell on some of the ranks (MPI helpers)."""
    if _active.is_set():
        raise CollectiveNeedsEveryRank()


def world_comm() -> Any:
    """MPI's world for a helper's collective; ``CollectiveNeedsEveryRank`` in a cell on some of
    the ranks, at once, rather than a wait for ranks that never come (checked first: where MPI
    is still down, under ``--backend torch``, importing mpi4py starts it, which waits for
    every rank)."""
    check()
    from mpi4py import MPI

    return MPI.COMM_WORLD


def _watch() -> None:
    seen: Waiting | None = None  # the wait seen at the last look
    while True:
        if not _active.is_set():
            seen = None
            _active.wait()
        waiting = clock.waiting
        if waiting is not None and waiting is seen:
            seen = None
            _active.clear()
            _stop_main(waiting.backend)
        else:
            seen = waiting
            time.sleep(POLL)


def _stop_main(backend: str) -> None:
    """Tell the notebook where the main thread waits, and end the wait if this rank can."""
    from .telemetry import publish_data

    ended = backend == "horovod"
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    where = _where(frame) if frame is not None else ""
    del frame
    publish_data({STUCK: {"error": _sentence(), "where": where, "ended": ended}})
    if ended:
        shutdown_horovod()  # the wait raises; the runner resets Horovod on every rank


def _where(frame: FrameType) -> str:
    """The user's frames of the stack down to ``frame``, as IPython names cells."""
    from IPython import get_ipython

    shell = get_ipython()
    lines = []
    for entry in traceback.extract_stack(frame):
        if _is_library(entry.filename):
            continue
        named = shell.compile.format_code_name(entry.filename) if shell is not None else None
        place = f"{named[0]} {named[1]}" if named else f"File {entry.filename}"
        lines += [f"{place}, line {entry.lineno}, in {entry.name}", f"    {entry.line}"]
    return "\n".join(lines)


def _before_cell() -> None:
    """``pre_execute``: guard this cell if its request names a subset of the ranks."""
    global _subset
    from IPython import get_ipython

    kernel = getattr(get_ipython(), "kernel", None)
    parent = kernel.get_parent("shell") if kernel is not None else {}
    _subset = str((parent or {}).get("metadata", {}).get(SUBSET) or "")
    if _subset:
        _active.set()


def _after_cell() -> None:
    _active.clear()


def install(shell: Any) -> None:
    """Guard this rank's cells on a subset of the ranks (idempotent)."""
    global _watcher
    events = shell.events
    if _before_cell not in events.callbacks["pre_execute"]:
        events.register("pre_execute", _before_cell)
        events.register("post_execute", _after_cell)
    if _watcher is None:
        _watcher = threading.Thread(target=_watch, name="dtrain-subset-guard", daemon=True)
        _watcher.start()
