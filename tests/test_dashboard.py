"""The live dashboard and run records, through real kernels against the real cluster."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from kernel_session import KernelSession
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

import dtrain_magics
from dtrain_magics.rank import telemetry

pytestmark = pytest.mark.cluster

TRAIN = """%%distributed --nodes 2
import time
for i in dtrain.progress(range(40), desc="steps"):
    dtrain.log(loss=1.0 / (i + 1) + rank, samples=16)
    time.sleep(0.02)
print("finished", rank)
"""


def _widget_models(nb: Any) -> list[dict[str, Any]]:
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    return [m["state"] for m in state.values()]


def _execute(cells: list[str], allow_errors: bool = False) -> Any:
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    NotebookClient(
        nb, timeout=240, kernel_name="python3", store_widget_state=True, allow_errors=allow_errors
    ).execute()
    return nb


@pytest.fixture(scope="module")
def trained_notebook() -> Any:
    return _execute(
        [
            "%load_ext dtrain_magics",
            TRAIN,
            "print(_dtrain.status, len(_dtrain.metrics), _dtrain.dir)",
            "%%distributed --nodes 2\nif rank == 1:\n    raise RuntimeError('rank one broke')\n",
            "print('after failure:', _dtrain.status, _dtrain.failing_rank)",
        ],
        allow_errors=True,
    )


def _records(nb: Any) -> list[str]:
    """The static run records (HTML) the cells show once their runs ended."""
    return [
        o["data"]["text/html"]
        for c in nb.cells
        for o in c.get("outputs", [])
        if "dtrain-record" in o.get("data", {}).get("text/html", "")
    ]


def test_the_dashboard_became_a_static_record(trained_notebook: Any) -> None:
    views = [
        o
        for c in trained_notebook.cells
        for o in c.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert not views, "a saved notebook must not need the dashboard's widgets to show a run"
    records = _records(trained_notebook)
    assert len(records) == 2  # one per %%distributed cell


def test_bars_reach_their_totals_and_turn_green(trained_notebook: Any) -> None:
    succeeded, failed = _records(trained_notebook)
    for rank in (0, 1):
        assert f'data-rank="{rank}" data-status="ok" data-n="40" data-total="40"' in succeeded
    assert 'data-rank="1" data-status="error"' in failed


def test_chart_holds_the_logged_points(trained_notebook: Any) -> None:
    succeeded, _ = _records(trained_notebook)
    assert 'data-metric="loss"' in succeeded
    assert 'data-points="40"' in succeeded  # 40 steps, mean over 2 ranks each


def test_status_succeeded_then_failed_naming_the_rank(trained_notebook: Any) -> None:
    succeeded, failed = _records(trained_notebook)
    assert 'data-status="succeeded"' in succeeded
    text = re.sub("<[^>]+>", "", failed)
    assert 'data-status="failed"' in failed and "rank 1: RuntimeError: rank one broke" in text
    text = "".join(o.get("text", "") for c in trained_notebook.cells for o in c.get("outputs", []))
    assert "after failure: failed 1" in text


def test_run_record_and_files(trained_notebook: Any) -> None:
    out = "".join(o.get("text", "") for o in trained_notebook.cells[2].outputs)
    status, count, run_dir = out.split()
    assert status == "succeeded" and int(count) == 160  # 40 steps × 2 metrics × 2 ranks
    run = Path(run_dir)
    summary = json.loads((run / "run.json").read_text())
    assert summary["status"] == "succeeded"
    assert [r["n"] for r in summary["ranks"]] == [40, 40]
    assert "finished 1" in (run / "rank-1.log").read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["rank"] for r in rows} == {0, 1} and {r["name"] for r in rows} == {"loss", "samples"}


def test_stop_button_interrupts_and_next_cell_works(kernel: KernelSession) -> None:
    kernel.run("%load_ext dtrain_magics")
    msg_id = kernel.submit(
        "%%distributed --nodes 2\nimport time, torch\n"
        "print('looping', flush=True)\n"
        "while True:\n    hvd.allreduce(torch.ones(1))\n    time.sleep(0.01)\n"
    )
    stop_comm = None
    deadline = time.monotonic() + 120
    seen_looping = False
    while time.monotonic() < deadline and not (stop_comm and seen_looping):
        msg = kernel.kc.get_iopub_msg(timeout=120)
        content = msg["content"]
        if msg["msg_type"] == "comm_open":
            state = content.get("data", {}).get("state", {})
            if state.get("_model_name") == "ButtonModel" and state.get("description") == "Stop":
                stop_comm = content["comm_id"]
        if msg["msg_type"] == "stream":  # rank output streams inline, labelled by rank
            seen_looping = seen_looping or "looping" in content.get("text", "")
    assert stop_comm and seen_looping
    clicked = time.monotonic()
    # exactly what a front end sends when the button is clicked
    msg = kernel.kc.session.msg(
        "comm_msg",
        {"comm_id": stop_comm, "data": {"method": "custom", "content": {"event": "click"}}},
    )
    kernel.kc.shell_channel.send(msg)
    reply = kernel.collect(msg_id, timeout=60)
    assert time.monotonic() - clicked < 15
    assert reply.status == "error" and "interrupted: every rank was stopped" in reply.text
    reply = kernel.run(
        "%%distributed --nodes 2\nimport torch\n"
        "print('sum', hvd.allreduce(torch.ones(1), op=hvd.Sum).item())",
        timeout=120,
    )
    assert reply.status == "ok", reply.text
    reply = kernel.run("import dtrain_magics; print([r.status for r in dtrain_magics.runs()])")
    assert "['interrupted', 'succeeded']" in reply.text


def test_a_finished_dashboard_leaves_no_widget_models_open(kernel: KernelSession) -> None:
    # every model the dashboard opened (its widgets, and the layouts and styles they share) is
    # closed when the run's record takes its place: none piles up in the kernel or front end
    count = (
        "import ipywidgets.widgets.widget as _w\n"
        "print('OPEN', sorted(type(m).__name__ for m in _w._instances.values()))"
    )
    kernel.run("%load_ext dtrain_magics")
    before = kernel.run(count).text
    reply = kernel.run(
        "%%distributed --nodes 2\nimport time\n"
        "for i in dtrain.progress(range(20)):\n"
        "    dtrain.log(loss=float(i))\n    time.sleep(0.05)\n",
        timeout=180,
    )
    assert reply.status == "ok", reply.text
    shown = [o for o in reply.outputs if "application/vnd.jupyter.widget-view+json" in o["data"]]
    assert shown, "the 1 s run should have shown the live dashboard"
    assert kernel.run(count).text == before == "OPEN []\n"


def test_text_fallback_prints_summaries(ip: Any, cluster: Any, capsys: Any) -> None:
    ip.run_cell_magic(
        "distributed",
        "--nodes 2 --no-widget",
        "import time\nfor i in dtrain.progress(range(60)):\n"
        "    dtrain.log(loss=float(i))\n    time.sleep(0.1)\n",
    )
    out = capsys.readouterr().out
    assert re.search(r"\[dtrain\] running · 2 ranks · .* · rank 0 \d+/60, rank 1 \d+/60", out)
    assert re.search(r"\[dtrain\] succeeded · 2 ranks · horovod · cpu · .* · last loss 59", out)
    assert "[dtrain] logs and metrics: " in out
    assert dtrain_magics.last_run().status == "succeeded"
    assert ip.user_ns["_dtrain"] is dtrain_magics.last_run()


def test_the_controller_log_stays_quiet_while_ranks_publish(ip: Any, cluster: Any) -> None:
    ip.run_cell_magic(
        "distributed",
        "--nodes 2 --no-widget",
        "import time\nfor i in dtrain.progress(range(40)):\n"
        "    dtrain.log(loss=float(i))\n    time.sleep(0.05)\n",
    )
    assert all(rank["messages"] >= 3 for rank in dtrain_magics.last_run().ranks)
    controller = cluster._cluster.controller
    assert "dtrain_magics.cluster.controller" in controller.args
    log = Path(controller.output_file).read_text()
    assert "data_message" not in log
    assert "IPController" in log  # the controller's log is still written


def test_logging_every_step_keeps_messages_bounded(ip: Any, cluster: Any) -> None:
    ip.run_cell_magic(
        "distributed",
        "--nodes 2 --no-widget",
        "import time\nt0 = time.time()\nfor i in range(300_000):\n"
        "    dtrain.log(loss=1.0)\nelapsed = time.time() - t0\n",
    )
    record = dtrain_magics.last_run()
    elapsed = max(cluster.view().pull("elapsed"))
    for rank in record.ranks:
        # at most one message per interval, plus the final flush
        assert rank["messages"] <= elapsed / telemetry.INTERVAL + 2, (rank, elapsed)
    summary = json.loads((record.dir / "run.json").read_text())
    assert summary["dropped_points"] > 0  # points beyond the per-message bound were thinned
