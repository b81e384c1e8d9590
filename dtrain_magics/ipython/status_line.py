"""A one-line status that updates in place in a notebook and prints plainly elsewhere."""

from __future__ import annotations

from typing import Any


class StatusLine:
    """Shows progress messages (cluster start, resize) as one line updated in place."""

    def __init__(self) -> None:
        self._handle: Any = None
        self._last = ""

    def update(self, text: str) -> None:
        from IPython import get_ipython
        from IPython.display import display

        if text == self._last:
            return
        self._last = text
        shell = get_ipython()
        if shell is None or not getattr(shell, "kernel", None):
            print(text, flush=True)
        elif self._handle is None:
            self._handle = display({"text/plain": text}, raw=True, display_id=True)
        else:
            self._handle.update({"text/plain": text}, raw=True)

    def close(self) -> None:
        self._handle = None
