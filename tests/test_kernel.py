"""Through a real Jupyter kernel: the stop button, %dtrain, no torch in the notebook, no orphans
after the kernel exits, and the kernel stays Busy for a cell while it answers other requests."""

from __future__ import annotations

import queue
import time
from datetime import datetime
from typing import Any

import pytest
from helpers import ALLREDUCE_LOOP, alive
from kernel_session import KernelSession, printed_pids

pytestmark = pytest.mark.cluster

CLUSTER_PIDS = (
    "import dtrain_magics\n"
    "print('PIDS', [p.pid for p in dtrain_magics._magics.cluster.processes()])"
)


def test_interrupt_stops_every_rank_and_dtrain_controls_the_cluster(kernel: KernelSession) -> None:
    assert kernel.run("%load_ext dtrain_magics").status == "ok"
    reply = kernel.run("%dtrain status")
    assert "not running" in reply.text

    msg_id = kernel.submit(ALLREDUCE_LOOP)
    reply = kernel.collect(msg_id, timeout=120, until="[rank 1] looping")
    assert reply.status == "running"
    interrupted_at = time.monotonic()
    kernel.km.interrupt_kernel()
    reply = kernel.collect(msg_id, timeout=30)
    assert time.monotonic() - interrupted_at < 10
    assert reply.status == "error" and "interrupted: every rank was stopped" in reply.text

    reply = kernel.run(
        "%%distributed --nodes 2 --no-widget\nimport torch\n"
        "print('sum', hvd.allreduce(torch.ones(1), op=hvd.Sum).item())"
    )
    assert reply.status == "ok", reply.text
    assert "[rank 0] sum 2.0" in reply.text and "[rank 1] sum 2.0" in reply.text
    # nothing the ranks send back makes the notebook import torch (1.5 s and its memory)
    reply = kernel.run("import sys\nprint('torch in the kernel:', 'torch' in sys.modules)")
    assert "torch in the kernel: False" in reply.text

    reply = kernel.run("%dtrain status")
    assert "running, 2 ranks" in reply.text and "2/2 engines registered" in reply.text

    reply = kernel.run("%dtrain restart")
    assert reply.status == "ok" and "Cluster ready" in reply.text
    pids = printed_pids(kernel.run(CLUSTER_PIDS).text)
    reply = kernel.run("%dtrain stop")
    assert "Cluster stopped." in reply.text
    assert not alive(pids)
    reply = kernel.run("%dtrain restart")  # IPython shows a UsageError as one line
    assert "UsageError: no cluster is running to restart; a %%distributed cell starts one." in (
        reply.text
    ), reply.text


def test_an_interrupted_restart_is_recorded_so_and_the_next_cell_starts_the_same_cluster(
    kernel: KernelSession,
) -> None:
    """Stop pressed while ``--max-restarts`` restarts the cluster: the run is ``interrupted``
    (not failed by the death before it), and a cell without flags starts the 2-rank cluster
    again rather than the defaults' 1 rank."""
    assert kernel.run("%load_ext dtrain_magics").status == "ok"
    assert kernel.run("%%distributed --nodes 2 --no-widget\nx = 1", timeout=180).status == "ok"
    msg_id = kernel.submit(
        "%%distributed --max-restarts 3 --no-widget\nimport os\n"
        "if rank == 1:\n    os.kill(os.getpid(), 9)\nimport time\ntime.sleep(60)"
    )
    reply = kernel.collect(msg_id, timeout=120, until="engines registered 0/2")
    assert reply.status == "running", reply.text
    kernel.km.interrupt_kernel()
    reply = kernel.collect(msg_id, timeout=90)
    assert reply.ename == "RunInterrupted", reply.text
    reply = kernel.run("print(_dtrain.status, '|', _dtrain.exit_reason)")
    assert "interrupted | the run's restart did not finish: interrupted while the cluster" in (
        reply.text
    ), reply.text
    reply = kernel.run("%%distributed --no-widget\nprint('size', size)", timeout=180)
    assert "Starting 2 ranks (2 nodes × 1 proc)" in reply.text, reply.text
    assert "[rank 1] size 2" in reply.text, reply.text
    assert kernel.run("%dtrain stop").status == "ok"


def test_kernel_shutdown_leaves_no_cluster_processes() -> None:
    session = KernelSession()
    try:
        session.run("%load_ext dtrain_magics")
        reply = session.run("%%distributed --nodes 2\nprint('up')")
        assert reply.status == "ok", reply.text
        pids = printed_pids(session.run(CLUSTER_PIDS).text)
        assert len(pids) >= 4  # controller, mpiexec, 2 engines (and their nannies)
    finally:
        session.close()
    deadline = time.monotonic() + 20
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pids)


def test_control_requests_during_a_cell_leave_the_kernel_busy_for_it(
    kernel: KernelSession,
) -> None:
    """The kernel answers control requests (ipywidgets asks for a subshell so) while a cell
    awaits its ranks, and publishes ``idle`` for each; JupyterLab would show the kernel Idle, so
    ``busy`` for the cell must follow at once, not with the dashboard's next re-publish (every
    0.5 s: three requests all followed within 0.1 s by chance is under 1 %)."""
    assert kernel.run("%load_ext dtrain_magics").status == "ok"
    cell = kernel.submit(
        "%%distributed --nodes 2\nimport time\nprint('started', flush=True)\ntime.sleep(3)"
    )
    assert kernel.collect(cell, timeout=120, until="[rank 1] started").status == "running"
    requests = []
    for _ in range(3):
        requests.append(kernel.kc.session.msg("kernel_info_request"))
        kernel.kc.control_channel.send(requests[-1])
        time.sleep(0.17)
    statuses: list[tuple[str, str, Any]] = []  # (state, parent's msg_id, date), as published
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(s[:2] == ("idle", cell) for s in statuses):
        try:
            msg: dict[str, Any] = kernel.kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["msg_type"] == "status":
            parent = msg["parent_header"].get("msg_id", "")
            statuses.append((msg["content"]["execution_state"], parent, _date(msg["header"])))
    assert statuses[-1][:2] == ("idle", cell), statuses
    for request in requests:
        answered = [s[:2] for s in statuses].index(("idle", request["header"]["msg_id"]))
        state, parent, date = statuses[answered + 1]
        assert (state, parent) == ("busy", cell), statuses
        assert (date - statuses[answered][2]).total_seconds() < 0.1, statuses


def _date(header: dict[str, Any]) -> datetime:
    """A message's date: jupyter_client parses it, or leaves the ISO 8601 text (Python 3.10's
    ``fromisoformat`` does not read a trailing ``Z``)."""
    date = header["date"]
    return (
        date if isinstance(date, datetime) else datetime.fromisoformat(date.replace("Z", "+00:00"))
    )
