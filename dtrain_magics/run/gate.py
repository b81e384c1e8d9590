"""Whether a cell runs on the cluster, and what waits for it to end.

The ``%dtrain config`` form's Stop acts while a cell may run: it stops the cell first (as the
dashboard's Stop does) and the cluster once the cell has ended, never under it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class RunGate:
    """``busy`` from a cell's start (its cluster's start included) to its end."""

    def __init__(self) -> None:
        self.busy = False
        self._after: list[Callable[[], None]] = []

    def enter(self) -> None:
        self.busy = True

    def leave(self) -> None:
        """The cell has ended: run what waited for it."""
        self.busy = False
        actions, self._after = self._after, []
        for action in actions:
            try:
                action()
            except Exception:
                log.warning("an action after the run failed", exc_info=True)

    def after_run(self, action: Callable[[], None]) -> None:
        """Call ``action`` once the running cell has ended, or now if none runs."""
        if self.busy:
            self._after.append(action)
        else:
            action()
