"""Errors raised to the notebook, each rendered as a short, readable message."""

from __future__ import annotations


class DistributedError(Exception):
    """Base class of this package's errors."""


class ClusterStartError(DistributedError):
    """The cluster could not be started; the message says why."""


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
