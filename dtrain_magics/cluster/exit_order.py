"""Which engine process of a one-host cluster exited first, seen as it happens.

MPICH's ``mpiexec`` (Hydra) kills every rank when one on this host dies, then reports each
one's end (``-print-all-exitcodes``), not which came first: a rank killed by SIGKILL looks like
the others Hydra killed. The one that died is the one whose process ended first: one thread waits
on a pidfd per engine, which costs nothing while they run.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Iterable

from .ranks import RankEngine, local_pids


class ExitOrder:
    """Waits for the first of ``engines`` to exit; ``first`` is its rank, None until then, if
    several were seen ending at once, or if some engines run on other hosts (not seen here)."""

    def __init__(self, engines: Iterable[RankEngine]) -> None:
        engines = list(engines)
        self.first: int | None = None
        self._ranks: dict[int, int] = {}  # pidfd → rank
        self._stop_read, self._stop_write = os.pipe()
        if len(local_pids(engines)) == len(engines):
            for engine in engines:
                with contextlib.suppress(OSError, AttributeError):  # gone, or no pidfd here
                    self._ranks[os.pidfd_open(engine.pid)] = engine.rank
        self._thread = threading.Thread(target=self._wait, name="dtrain-exit-order", daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        poller = select.poll()
        for fd in (*self._ranks, self._stop_read):
            poller.register(fd, select.POLLIN)
        ended = sorted(self._ranks[fd] for fd, _ in poller.poll() if fd in self._ranks)
        if len(ended) == 1:
            self.first = ended[0]

    def close(self) -> None:
        """Stop waiting and release the descriptors (once; later calls do nothing)."""
        if self._stop_write < 0:
            return
        os.write(self._stop_write, b"x")
        self._thread.join(timeout=5)
        for fd in (*self._ranks, self._stop_read, self._stop_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._ranks = {}
        self._stop_read = self._stop_write = -1
