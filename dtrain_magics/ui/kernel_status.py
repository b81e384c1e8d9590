"""Keeping JupyterLab's kernel indicator on "Busy" while a run awaits its ranks.

A ``%%distributed`` cell is awaited, so the kernel handles other requests meanwhile; when the
front end sends one (ipywidgets asks for a subshell when the first widget of a kernel appears),
the kernel publishes ``idle`` for it, and JupyterLab shows the kernel Idle although the cell
runs. The dashboard re-publishes ``busy`` for the cell's own request, at most twice a second.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)
EVERY = 0.5


class BusyStatus:
    """Publishes ``status: busy`` for the executing cell's request, throttled."""

    def __init__(self) -> None:
        from IPython import get_ipython

        self.kernel = getattr(get_ipython(), "kernel", None)
        self.parent = self.kernel.get_parent("shell") if self.kernel is not None else None
        self._at = 0.0

    def assert_busy(self) -> None:
        now = time.monotonic()
        if self.kernel is None or not self.parent or now - self._at < EVERY:
            return
        self._at = now
        try:
            self.kernel._publish_status("busy", "shell", self.parent)
        except Exception:  # an ipykernel without it: the indicator is only cosmetic
            log.debug("could not publish the kernel's busy status", exc_info=True)
