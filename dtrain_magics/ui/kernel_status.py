"""Keeping JupyterLab's kernel indicator on "Busy" while a run awaits its ranks.

A ``%%distributed`` cell is awaited, so the kernel handles other requests meanwhile; when the
front end sends one (ipywidgets asks for a subshell, on the control channel, when the first
widget of a kernel appears), the kernel publishes ``idle`` for it, and JupyterLab shows the kernel
Idle although the cell runs. While the run lasts, every such ``idle``, on the shell or the control
channel, is followed at once by ``busy`` for the cell's own request, and the dashboard
re-publishes ``busy`` at most twice a second besides.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)
EVERY = 0.5


class BusyStatus:
    """Publishes ``status: busy`` for the executing cell's request, throttled."""

    def __init__(self) -> None:
        from IPython import get_ipython

        self.kernel = getattr(get_ipython(), "kernel", None)
        self.parent = self.kernel.get_parent("shell") if self.kernel is not None else None
        self._at = 0.0
        self._publish: Any = None
        if self.kernel is not None and self.parent:
            self._follow_idle()

    def _follow_idle(self) -> None:
        """Follow the kernel's ``idle`` for another request with ``busy`` for the cell's."""
        kernel: Any = self.kernel
        ours = self.parent
        original = kernel._publish_status

        def publish(status: str, channel: str, parent: Any = None) -> None:
            original(status, channel, parent)
            if status == "idle" and channel in ("shell", "control"):
                other = parent or kernel.get_parent(channel)
                if _msg_id(other) != _msg_id(ours):
                    original("busy", "shell", ours)

        kernel._publish_status = publish  # this instance only, until close()
        self._publish = publish

    def close(self) -> None:
        """Stop following the kernel's status (the cell is about to end)."""
        kernel: Any = self.kernel
        if self._publish is not None and vars(kernel).get("_publish_status") is self._publish:
            del kernel._publish_status
        self._publish = None

    def assert_busy(self) -> None:
        now = time.monotonic()
        if self.kernel is None or not self.parent or now - self._at < EVERY:
            return
        self._at = now
        try:
            self.kernel._publish_status("busy", "shell", self.parent)
        except Exception:  # an ipykernel without it: the indicator is only cosmetic
            log.debug("could not publish the kernel's busy status", exc_info=True)


def _msg_id(message: Any) -> Any:
    return (message or {}).get("header", {}).get("msg_id")
