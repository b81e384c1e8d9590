"""Writing small state files off the notebook's thread, newest version only.

A cell publishes its cluster's state when it starts and again when it ends; for a cell that
takes milliseconds, the first write is outdated before it lands. ``StateWriter`` keeps the
latest content per file and writes it from one background thread shortly after, so a warm cell
does no file I/O for it, and the lab extension sees each change within ``DELAY`` seconds.
``flush`` writes what is pending at once (the kernel's exit, tests).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from pathlib import Path
from typing import Any

from .paths import write_json_atomic

log = logging.getLogger(__name__)
DELAY = 0.1


class StateWriter:
    """Writes the latest content of each file from a background thread, coalescing updates."""

    def __init__(self, delay: float = DELAY) -> None:
        self.delay = delay
        self._pending: dict[Path, Any] = {}
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # one flush at a time, so a later one lands last
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def put(self, path: Path, data: Any) -> None:
        """Write ``data`` to ``path`` soon (replacing anything still pending for it)."""
        with self._lock:
            self._pending[path] = data
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dtrain-writer", daemon=True)
                self._thread.start()
        self._wake.set()

    def flush(self) -> None:
        """Write everything pending now, in the caller's thread (after a flush under way in
        another: both write through one temporary file, and the older content must not land
        last)."""
        with self._writing:
            with self._lock:
                pending, self._pending = self._pending, {}
            for path, data in pending.items():
                try:
                    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    write_json_atomic(path, data)
                except OSError:
                    log.debug("could not write the cluster state file %s", path, exc_info=True)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(self.delay)  # let a burst of updates coalesce
            self.flush()


writer = StateWriter()
atexit.register(writer.flush)
