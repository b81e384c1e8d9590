"""What the runner needs of whatever shows a run (the dashboard, the text view, nothing)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .state import RunState


class RunView(Protocol):
    """Shows one run's ``RunState``; refreshed by the runner when the state changes."""

    def refresh(self, force: bool = False) -> None:
        """Show the state now if it changed and the view's throttle allows (always if forced)."""

    def next_refresh(self, now: float) -> float | None:
        """When (``time.monotonic()``) the view wants its next refresh; None if it needs none."""

    def close(self) -> None:
        """The run ended: show the final state."""


ViewFactory = Callable[[RunState, Callable[[], None]], RunView]
"""Makes the view of a run, given its state and what the view's Stop button calls."""


class NullView:
    """Shows nothing (runs driven from code)."""

    def refresh(self, force: bool = False) -> None:
        pass

    def next_refresh(self, now: float) -> float | None:
        return None

    def close(self) -> None:
        pass


def no_view(state: RunState, on_stop: Callable[[], None]) -> RunView:
    return NullView()
