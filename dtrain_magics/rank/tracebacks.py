"""Tracebacks of rank errors that show the user's frames only, formatted as IPython shows cells."""

from __future__ import annotations

import traceback
from types import TracebackType


def rebuild(frames: list[TracebackType]) -> TracebackType | None:
    """A traceback through ``frames`` only (entries of one traceback, outermost first)."""
    tb = None
    for entry in reversed(frames):
        tb = TracebackType(tb, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return tb


def render(error: BaseException, tb: TracebackType | None) -> list[str]:
    """``error`` with ``tb`` as the lines of an IPython traceback (plain Python's outside one)."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        return "".join(traceback.format_exception(type(error), error, tb)).splitlines()
    lines = shell.InteractiveTB.structured_traceback(type(error), error, tb, tb_offset=0)
    return list(lines)
