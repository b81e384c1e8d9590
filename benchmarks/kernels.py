"""Real Jupyter kernels driven the way a notebook front end drives them.

Each ``BenchKernel`` is one python3 kernel of this venv behind nbclient's ``NotebookClient``
with ``store_widget_state=True``: widget messages are applied to a widget state as a browser's
widget manager would, and the kernel sees a front end that takes its comms. Cells are appended
to an in-memory notebook and executed one at a time.

Timing a cell (``Cell``):

- ``kernel_s``: from the kernel's first ``status: busy`` to its ``status: idle`` for the
  request (the kernel's own message timestamps; nbclient's ``cell.metadata.execution`` keeps the
  last busy, and a long cell re-publishes busy). This is the cell's cost in the kernel, free of
  this process's scheduling; ratios use it.
- ``client_s``: from sending the request to nbclient returning (idle and reply both seen), the
  round trip a front end waits for.

``messages`` counts every IOPub message addressed to the cell, by type (``comm_msg`` are the
widget updates a browser would receive), and ``cpu_s`` is the kernel process's CPU time (user +
system, all its threads) spent while the cell ran, read with psutil.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import nbformat
import psutil
from nbclient import NotebookClient
from nbclient.client import timestamp

_JSON = re.compile(r"@@BENCH@@(.*?)@@END@@", re.S)


@dataclass
class Cell:
    """What one executed cell cost and sent."""

    kernel_s: float
    client_s: float
    cpu_s: float
    messages: Counter[str] = field(default_factory=Counter)
    message_bytes: int = 0
    text: str = ""

    @property
    def message_count(self) -> int:
        return sum(self.messages.values())


class _CountingClient(NotebookClient):
    """nbclient's client, counting the IOPub messages it processes for the running cell."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counts: Counter[str] = Counter()
        self.count_bytes = 0
        self.first_busy: str | None = None

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        self.counts[msg["msg_type"]] += 1
        state = msg["content"].get("execution_state") if msg["msg_type"] == "status" else None
        if self.first_busy is None and state == "busy":
            self.first_busy = timestamp(msg)
        self.count_bytes += len(json.dumps(msg["content"], default=str))
        return super().process_message(msg, cell, cell_index)


class BenchKernel:
    """One real kernel with a widget-storing front end; ``run(code)`` executes a cell."""

    def __init__(self, env: dict[str, str], cwd: str, timeout: float = 600.0) -> None:
        self.nb = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
        self.client = _CountingClient(
            self.nb,
            timeout=int(timeout),
            kernel_name="python3",
            store_widget_state=True,
            record_timing=True,
            allow_errors=False,
            shutdown_kernel="graceful",
            resources={"metadata": {"path": cwd}},
            # the kernel's own start-up warnings (TCP without encryption) are noise here
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
        self.client.km = self.client.create_kernel_manager()
        self.client.start_new_kernel(env=env)
        self.client.start_new_kernel_client()
        self.process: psutil.Process | None = None
        self.pid = int(self.eval("__import__('os').getpid()"))
        self.process = psutil.Process(self.pid)

    def run(self, code: str) -> Cell:
        """Execute ``code`` as the notebook's next cell; raises if the cell fails."""
        cell = nbformat.v4.new_code_cell(code)  # type: ignore[no-untyped-call]
        self.nb.cells.append(cell)
        self.client.counts, self.client.count_bytes = Counter(), 0
        self.client.first_busy = None
        cpu0 = self._cpu()
        t0 = time.perf_counter()
        self.client.execute_cell(cell, len(self.nb.cells) - 1)
        client_s = time.perf_counter() - t0
        cpu_s = self._cpu() - cpu0
        marks = cell.metadata.get("execution", {})
        # the first busy: a long cell re-publishes busy (nbclient's mark keeps the last one)
        busy = self.client.first_busy or marks.get("iopub.status.busy")
        kernel_s = _seconds(busy, marks.get("iopub.status.idle"))
        text = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
        cell.outputs = []  # keep the notebook small over thousands of cells
        return Cell(
            kernel_s if kernel_s is not None else client_s,
            client_s,
            cpu_s,
            self.client.counts,
            self.client.count_bytes,
            text,
        )

    def eval(self, expr: str) -> Any:
        """The value of ``expr`` in the kernel, passed back as JSON through stdout."""
        out = self.run(f"print('@@BENCH@@' + __import__('json').dumps({expr}) + '@@END@@')")
        match = _JSON.search(out.text)
        if match is None:
            raise RuntimeError(f"no value came back for {expr!r}: {out.text[-500:]}")
        return json.loads(match.group(1))

    def rss(self) -> int:
        """The kernel process's resident memory, in bytes."""
        assert self.process is not None
        return int(self.process.memory_info().rss)

    def widget_state_bytes(self) -> int:
        """Size of the widget state stored so far, as a saved notebook would hold it."""
        return len(json.dumps(self.client.widget_state, default=str))

    def _cpu(self) -> float:
        if self.process is None:
            return 0.0
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def close(self) -> None:
        """Shut the kernel down (gracefully, so its atexit hooks stop what it started)."""
        try:
            self.client._cleanup_kernel()
        except Exception:
            if self.process is not None and self.process.is_running():
                self.process.kill()


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (_parse(end) - _parse(start)).total_seconds()


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
