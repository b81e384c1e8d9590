"""The package's errors: each one is shown to the user as one clear sentence."""

from __future__ import annotations

from traitlets import TraitError


class DistributedError(Exception):
    """Base class of this package's errors."""


class BadOptions(DistributedError, ValueError):
    """A user's mistake in a cell's options; the message says how to fix it (a ``UsageError``)."""


class SettingError(BadOptions, TraitError):
    """A setting got an invalid value.

    The problem is kept apart from the setting's name so that each front end names the setting
    its own way: the magic by its flag (``--nodes must be ...``), the form by its label.
    """

    def __init__(self, name: str, flag: str, label: str, problem: str) -> None:
        super().__init__(f"{flag} {problem}")
        self.name, self.flag, self.label, self.problem = name, flag, label, problem

    def for_form(self) -> str:
        """The sentence naming the setting by its form label."""
        return f"{self.label} {self.problem}"


class ClusterStartError(DistributedError):
    """The cluster could not be started; the message says why (shown without a traceback)."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


class RankError(DistributedError):
    """A cell failed on a rank.

    IPython renders ``_render_traceback_`` instead of the local stack, so the user sees the
    rank's own traceback (with the cell's line numbers) under a one-line summary.
    """

    def __init__(self, summary: str, rank: int | None = None, traceback: str = "") -> None:
        super().__init__(summary)
        self.rank = rank
        self.summary = summary
        self.remote_traceback = traceback

    def _render_traceback_(self) -> list[str]:
        lines = [f"\x1b[0;31m{self.summary}\x1b[0m"]
        if self.remote_traceback:
            lines += ["", *self.remote_traceback.splitlines()]
        return lines


class RunTimeoutError(RankError):
    """The cell ran past ``--timeout``; every rank was interrupted."""


class RunInterrupted(RankError):
    """The user stopped the cell (stop button or kernel interrupt); every rank was interrupted.

    An ``Exception``, not a ``KeyboardInterrupt``: it must not escape the kernel's event loop.
    """
