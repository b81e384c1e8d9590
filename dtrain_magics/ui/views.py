"""Choosing how a run is shown: the widget dashboard in a kernel, else the text view."""

from __future__ import annotations

from collections.abc import Callable

from ..run.state import RunState
from ..run.view import RunView, ViewFactory


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


def view_factory(widget: bool) -> ViewFactory:
    """The views of runs: the dashboard where widgets render (and are wanted), else text."""

    def make(state: RunState, on_stop: Callable[[], None]) -> RunView:
        if widget and widgets_available():
            from .dashboard import WidgetDashboard

            dashboard = WidgetDashboard(state, on_stop)
            dashboard.show()
            return dashboard
        from .text_view import TextView

        return TextView(state, on_stop)

    return make
