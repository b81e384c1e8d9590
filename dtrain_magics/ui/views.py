"""How a run is shown: the widget dashboard (from a short delay on), else the text view."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..run.state import RunState
from ..run.view import RunView, ViewFactory
from .kernel_status import EVERY as BUSY_EVERY
from .kernel_status import BusyStatus
from .rank_lines import LinePrinter
from .rank_values import show_values
from .record_html import record_bundle

SHOW_AFTER = 0.3
"""Seconds a run goes on before its live dashboard appears: a quick cell shows its record only,
and costs no widgets (cluster start-up shows at once)."""


def widgets_available() -> bool:
    """True inside a Jupyter kernel with ipywidgets installed."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class DeferredDashboard:
    """The live dashboard, made once the run has lasted ``SHOW_AFTER`` seconds; at the end the
    run's static record takes its place (or is shown alone, for a quick run)."""

    def __init__(self, state: RunState, on_stop: Callable[[], None]) -> None:
        self.state, self.on_stop = state, on_stop
        self.started = time.monotonic()
        self.lines = LinePrinter(state)
        self.busy = BusyStatus()
        self.dashboard: Any = None
        self._handle: Any = None

    def next_refresh(self, now: float) -> float | None:
        if self.state.finished:
            return None
        due = [self.lines.next_print()]
        if self.dashboard is not None:
            due.append(self.dashboard.next_refresh(now))
            due.append(now + BUSY_EVERY)
        else:
            due.append(self.started + SHOW_AFTER)
        return min(d for d in due if d is not None)

    def refresh(self, force: bool = False) -> None:
        self.lines.print_new(force)
        if self.dashboard is None:
            starting = self.state.status == "starting cluster"
            if not starting and time.monotonic() - self.started < SHOW_AFTER:
                return
            self._show()
        self.dashboard.refresh(force)
        if not self.state.finished:
            self.busy.assert_busy()

    def _show(self) -> None:
        from IPython.display import display

        from .dashboard import WidgetDashboard

        self.dashboard = WidgetDashboard(self.state, self.on_stop)
        self._handle = display(self.dashboard.widget, display_id=True)

    def close(self) -> None:
        from IPython.display import display

        self.busy.close()
        self.lines.print_new(force=True)
        bundle = record_bundle(self.state)
        if self.dashboard is None:
            display(bundle, raw=True)
        else:
            self._handle.update(bundle, raw=True)
            self.dashboard.close()
        show_values(self.state)


def view_factory(widget: bool) -> ViewFactory:
    """The views of runs: the dashboard where widgets render (and are wanted), else text."""

    def make(state: RunState, on_stop: Callable[[], None]) -> RunView:
        if widget and widgets_available():
            return DeferredDashboard(state, on_stop)
        from .text_view import TextView

        return TextView(state, on_stop)

    return make
