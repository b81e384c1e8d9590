"""Sending runs to MLflow from one background thread, so that a cell never waits for it.

``submit`` queues a finished run and returns an ``Export`` at once; the thread imports MLflow
on first use, keeps one client per tracking URI, and logs the runs one after another. A failure
becomes one sentence in ``take_warnings()`` (the extension prints it after the next cell) and
its traceback goes to the kernel's diagnostics log; it never fails a cell. MLflow's own log
lines from this thread are kept out of the notebook.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..store.records import RunRecord

THREAD_NAME = "dtrain-mlflow"
EXIT_WAIT = 30.0  # seconds the kernel's exit waits for runs still being sent
log = logging.getLogger(__name__)


@dataclass(eq=False)
class Export:
    """One run on its way to MLflow; ``wait()`` for it, then read ``mlflow_run_id`` or ``error``."""

    record: RunRecord
    target: str  # "on" or a tracking URI
    directory: Path  # the notebook's directory when the run ended
    uri: str = ""  # the tracking URI it went to, once known
    mlflow_run_id: str | None = None
    error: str = ""
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def wait(self, timeout: float | None = 60.0) -> str | None:
        """Wait until the run is in MLflow (or failed to get there); MLflow's run id, or None."""
        self._done.wait(timeout)
        return self.mlflow_run_id

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def __repr__(self) -> str:
        if not self.done:
            return f"<MLflow export of {self.record.id}: in progress>"
        if self.error:
            return f"<MLflow export of {self.record.id}: failed: {self.error}>"
        return f"<MLflow run {self.mlflow_run_id} at {self.uri}>"


class Worker:
    """The background thread and what it hands back to the notebook."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Export | threading.Event] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._warnings: list[str] = []
        self._clients: dict[str, Any] = {}

    def submit(self, record: RunRecord, target: str, directory: Path) -> Export:
        export = Export(record, target, directory)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                self._thread.start()
        self._queue.put(export)
        return export

    def take_warnings(self) -> list[str]:
        """The failures' sentences not shown yet (each is returned once)."""
        with self._lock:
            taken, self._warnings = self._warnings, []
        return taken

    def drain(self, timeout: float = EXIT_WAIT) -> None:
        """Wait, at most ``timeout`` seconds, for the runs queued so far (the kernel's exit)."""
        if self._thread is not None and self._thread.is_alive():
            done = threading.Event()
            self._queue.put(done)
            done.wait(timeout)

    def _run(self) -> None:
        while True:
            export = self._queue.get()
            if isinstance(export, threading.Event):
                export.set()
                continue
            try:
                self._send(export)
            except BaseException as e:
                export.error = _one_line(e)
                where = f" ({export.uri})" if export.uri else ""
                log.debug("sending run %s to MLflow failed", export.record.id, exc_info=True)
                with self._lock:
                    self._warnings.append(
                        f"dtrain_magics: run {export.record.id} was not logged to MLflow{where}: "
                        f"{export.error}"
                    )
            finally:
                export._done.set()

    def _send(self, export: Export) -> None:
        from . import mlflow_run

        export.uri = mlflow_run.tracking_uri(export.target, export.directory)
        mlflow_run.check_reachable(export.uri)
        client = self._clients.get(export.uri)
        if client is None:
            from mlflow.tracking import MlflowClient

            _quiet_mlflow_logging()
            client = self._clients[export.uri] = MlflowClient(tracking_uri=export.uri)
        export.mlflow_run_id = mlflow_run.log_run(client, export.record)


class _NotFromWorker(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != THREAD_NAME


def _quiet_mlflow_logging() -> None:
    """Keep what MLflow and its SQL store log from this thread out of the cells' output (the
    user's own MLflow calls, in other threads, log as before)."""
    only_others = _NotFromWorker()
    for name in ("mlflow", "alembic", "sqlalchemy"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _NotFromWorker) for f in handler.filters):
                handler.addFilter(only_others)
    last = logging.lastResort
    if last is not None and not any(isinstance(f, _NotFromWorker) for f in last.filters):
        last.addFilter(only_others)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    first = first if len(first) <= 300 else first[:297] + "..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


worker = Worker()
atexit.register(worker.drain)
