"""Where is this rank? Its main thread's innermost frames in the user's code and the collective
it waits in, read from another thread while the main thread runs the cell.

The notebook asks on ipyparallel's control channel (``where_request`` below): the engine handles
control messages on its own thread, so the answer comes while the main thread is busy in the
user's code, blocked in C++ (a Horovod or gloo wait, a long torch kernel: all release the GIL) or
spinning in Python (the interpreter hands the GIL over every few milliseconds). Reading
``sys._current_frames()`` does not stop the main thread; nothing runs on the rank between
requests, and the user's code is unchanged.
"""

from __future__ import annotations

import linecache
import os
import socket
import sys
import sysconfig
import threading
import time
from types import FrameType
from typing import Any

from .collectives import clock

REQUEST = "dtrain_where_request"
REPLY = "dtrain_where_reply"
USER_FRAMES = 3  # innermost frames of the user's code in a report
MAX_PENDING = 64
_LIBRARY_DIRS = tuple(
    os.path.realpath(p) + os.sep
    for p in {
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["platstdlib"],
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # dtrain_magics itself
    }
)
_real: dict[str, str] = {}


def _cells() -> dict[str, int]:
    """Filenames of the cells this engine compiled → their execution count."""
    from IPython import get_ipython

    shell = get_ipython()
    return dict(getattr(getattr(shell, "compile", None), "_filename_map", None) or {})


def _is_library(filename: str) -> bool:
    if filename.startswith("<"):
        return True  # <frozen ...>, <string>
    real = _real.get(filename)
    if real is None:
        real = _real[filename] = os.path.realpath(filename)
    return real.startswith(_LIBRARY_DIRS) or "site-packages" in real


def _frame_info(frame: FrameType, cells: dict[str, int]) -> dict[str, Any]:
    code = frame.f_code
    line = frame.f_lineno or 0
    cell = cells.get(code.co_filename)
    return {
        "file": "" if cell is not None else code.co_filename,
        "cell": None if cell is None else ("this" if cell == max(cells.values()) else "earlier"),
        "line": line,
        "function": code.co_name,
        "code": linecache.getline(code.co_filename, line).strip(),
    }


def stack_report(frame: FrameType | None, cells: dict[str, int]) -> dict[str, Any]:
    """The innermost user frames of a stack (innermost first), the library function the
    innermost one called (``horovod.torch.mpi_ops.allreduce``), and whether a cell runs."""
    user: list[dict[str, Any]] = []
    inside = ""
    in_cell = False
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename in cells:
            in_cell = True
        if filename in cells or not _is_library(filename):
            if len(user) < USER_FRAMES:
                user.append(_frame_info(frame, cells))
        elif not user:  # the outermost library call under the user's innermost frame
            module = frame.f_globals.get("__name__", "") or os.path.basename(filename)
            inside = f"{module}.{frame.f_code.co_name}"
        frame = frame.f_back
    return {"frames": user, "inside": inside, "running": in_cell}


def report(thread_id: int | None = None) -> dict[str, Any]:
    """Where this rank's main thread is now, and its collectives."""
    from . import rank_context

    context = rank_context._current
    main = thread_id or threading.main_thread().ident or 0
    stack = stack_report(sys._current_frames().get(main), _cells())
    now = time.monotonic()
    waiting = clock.waiting
    collective = None
    if waiting is not None:
        collective = {
            "op": waiting.op,
            "name": waiting.name,
            "detail": waiting.detail,
            "backend": waiting.backend,
            "subgroup": waiting.subgroup,
            "for": round(now - waiting.since, 3),
        }
    return {
        "rank": context.rank if context is not None else None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "state": "running" if stack["running"] else "idle",
        "frames": stack["frames"],
        "inside": stack["inside"],
        "collective": collective,
        "pending": clock.names_pending()[:MAX_PENDING],
        "done": clock.done,
        "since_done": round(now - clock.last_done, 3) if clock.last_done else None,
        "waited": round(clock.waited, 6),
    }


def where_request(stream: Any, idents: Any, parent: dict[str, Any]) -> None:
    """The control channel's handler (on the engine's control thread)."""
    from IPython import get_ipython

    kernel = get_ipython().kernel
    try:
        content: dict[str, Any] = {"status": "ok", "report": report()}
    except Exception as e:  # the notebook shows it; the rank goes on
        content = {"status": "ok", "report": {"error": f"{type(e).__name__}: {e}"}}
    kernel.session.send(stream, REPLY, content, parent, ident=idents)


def install(shell: Any) -> None:
    """Answer ``dtrain_where_request`` on this engine's control channel (idempotent)."""
    kernel = getattr(shell, "kernel", None)
    if kernel is not None and hasattr(kernel, "control_handlers"):
        kernel.control_handlers[REQUEST] = where_request
