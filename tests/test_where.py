"""Where are the ranks? and the straggler view, through the real 2-rank cluster: a rank stuck in
time.sleep while the other waits in a Horovod allreduce, ranks busy in a Python loop and in torch
kernels, a rank blocked in a gloo (C++) collective, ``%dtrain where``, and a rank that holds the
others back in a DistributedOptimizer training loop.

The reports are asked for on ipyparallel's control channel while the cells run; each test also
records how long the report took (``.pytest_cache/fault-timings.jsonl``, quoted in FAULTS.md).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from helpers import rank_values
from test_faults import record

import dtrain_magics
from dtrain_magics.errors import RankError

pytestmark = pytest.mark.cluster


def _run_json() -> dict[str, Any]:
    last = dtrain_magics.last_run()
    assert last is not None
    return json.loads((last.dir / "run.json").read_text())  # type: ignore[no-any-return]


def _printed_at(out: str, needle: str) -> bool:
    return any(needle in line for line in out.splitlines())


STUCK_SLEEP = """import time, torch
def straggle():
    time.sleep(9)
if rank == 1:
    straggle()
total = hvd.allreduce(torch.ones(1), name="grad", op=hvd.Sum).item()
"""


def test_report_names_the_allreduce_and_the_rank_that_has_not_joined(
    run: Any, cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    run(STUCK_SLEEP, "--nodes 2 --no-widget --where-after 3")
    out = capsys.readouterr().out
    assert rank_values(cluster, "total") == [2.0, 2.0]  # the run went on and finished
    lines = [line for line in out.splitlines() if line.startswith("[dtrain] ")]
    title = next(i for i, line in enumerate(lines) if "where are the ranks" in line)
    assert re.search(r"no progress for \d+ s", lines[title]), lines[title]
    rank0, rank1 = lines[title + 1], lines[title + 2]
    assert rank0.startswith("[dtrain] rank 0: cell line 6: total = hvd.allreduce("), rank0
    assert "waiting" in rank0 and "in Horovod allreduce 'allreduce.grad', Sum" in rank0, rank0
    assert rank0.endswith("rank 1 has not joined"), rank0
    assert rank1 == (
        "[dtrain] rank 1: cell line 3 in straggle(): time.sleep(9) (called from cell line 5)"
    ), rank1
    summary = _run_json()
    where = summary["where"]
    assert dtrain_magics.last_run().where == where  # type: ignore[union-attr]
    assert where["why"].startswith("no progress for")
    assert where["ranks"][0]["collective"]["name"] == "allreduce.grad"
    assert where["ranks"][0]["missing"] == [1]
    assert where["ranks"][1]["collective"] is None
    shown_after = where["at"] - summary["started"]
    assert 3 <= shown_after < 9  # shown while rank 1 still slept
    record(
        "rank 1 sleeps while rank 0 waits in allreduce: where-report after --where-after 3",
        shown_after,
    )
    assert time.monotonic() - started < 30


def test_report_of_ranks_in_a_python_loop_and_in_torch_kernels(
    run: Any, cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = (
        "import time, torch\n"
        "end, n = time.monotonic() + 7, 0\n"
        "a = torch.randn(600, 600)\n"
        "while time.monotonic() < end:\n"
        "    if rank == 0:\n"
        "        n += 1\n"
        "    else:\n"
        "        a = torch.tanh(a @ a)\n"
    )
    run(code, "--nodes 2 --no-widget --where-after 2")
    out = capsys.readouterr().out
    summary = _run_json()
    ranks = summary["where"]["ranks"]
    shown_after = summary["where"]["at"] - summary["started"]
    assert 2 <= shown_after < 7
    record("ranks in a Python loop and in torch matmuls: where-report after 2 s", shown_after)
    assert ranks[0]["state"] == ranks[1]["state"] == "running"
    assert ranks[0]["frames"][0]["line"] in (4, 5, 6)  # somewhere in its loop
    assert ranks[1]["frames"][0]["line"] in (4, 5, 7, 8)
    assert ranks[0]["collective"] is None and ranks[1]["collective"] is None
    assert _printed_at(out, "[dtrain] rank 0: cell line")
    assert _printed_at(out, "[dtrain] rank 1: cell line")
    # the question did not stop the loop: rank 0 counted on for the whole 7 s
    assert rank_values(cluster, "n")[0] > 100_000


def test_report_of_a_rank_blocked_in_a_gloo_collective(
    run: Any, cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = (
        "import time, torch\n"
        "t = torch.ones(1)\n"
        "if rank == 1:\n"
        "    time.sleep(7)\n"
        "dist.all_reduce(t)\n"
    )
    try:
        run(code, "--nodes 2 --no-widget --backend torch --where-after 2")
        out = capsys.readouterr().out
        assert rank_values(cluster, "t")[0].item() == 2.0
        summary = _run_json()
        ranks = summary["where"]["ranks"]
        shown_after = summary["where"]["at"] - summary["started"]
        assert 2 <= shown_after < 7  # while rank 0 was blocked in gloo's C++ wait
        record(
            "rank 0 blocked in gloo all_reduce (torch backend): where-report after 2 s", shown_after
        )
        assert ranks[0]["collective"]["op"] == "all_reduce"
        assert ranks[0]["missing"] == [1]
        assert ranks[1]["frames"][0]["code"] == "time.sleep(7)"
        line = next(x for x in out.splitlines() if x.startswith("[dtrain] rank 0: "))
        assert "cell line 5: dist.all_reduce(t)" in line, line
        assert "in torch.distributed all_reduce; rank 1 has not joined" in line, line
    finally:
        run("x = 1", "--nodes 2 --no-widget --backend horovod")  # back to Horovod for the others


def test_dtrain_where_between_cells(
    ip: Any, run: Any, cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run("x = 1", "--nodes 2 --no-widget")
    capsys.readouterr()
    started = time.monotonic()
    ip.run_line_magic("dtrain", "where")
    took = time.monotonic() - started
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "where are the ranks (asked):",
        "rank 0: idle (no cell running)",
        "rank 1: idle (no cell running)",
    ]
    assert took < 2
    record("%dtrain where between cells (both ranks answer)", took)


STRAGGLER = """
import time, torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
hvd.broadcast_parameters(model.state_dict(), root_rank=0)
opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.01),
                               named_parameters=model.named_parameters())
x = torch.randn(32, 64)
for step in range(STEPS):
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    if rank == 1:
        time.sleep(0.04)  # the straggler computes 40 ms longer
    opt.step()
    dtrain.log(loss=loss.item())
"""


def test_straggler_is_flagged_with_compute_and_wait_split(
    run: Any, cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run(STRAGGLER.replace("STEPS", "120"), "--nodes 2 --no-widget")
    out = capsys.readouterr().out
    summary = _run_json()
    assert summary["straggler"]["rank"] == 1
    assert summary["straggler"]["share"] > 0.2
    fast, slow = summary["ranks"]
    assert fast["wait_time"] > 0.2 * fast["step_time"]  # rank 0 waits for rank 1
    assert slow["wait_time"] < 0.2 * slow["step_time"]
    assert 0.03 < fast["step_time"] < 0.5
    assert "rank 1 holds the others back: they wait for it" in out
    print(f"[straggler] rank 0 {fast}, rank 1 {slow}, {summary['straggler']}")
    last = [x for x in out.splitlines() if x.startswith("[dtrain] rank 1: ")][-1]
    assert "holds the others back" in last and "computing" in last and "waiting" in last


def test_balanced_ranks_flag_no_straggler(run: Any, cluster: Any) -> None:
    # the same 40 ms on both ranks: each step as long as the straggler's, nobody holds back
    balanced = STRAGGLER.replace("if rank == 1:\n        time.sleep", "if True:\n        sleep")
    balanced = balanced.replace("        sleep(", "        time.sleep(")
    assert balanced != STRAGGLER
    run(balanced.replace("STEPS", "120"), "--nodes 2 --no-widget")
    summary = _run_json()
    assert summary["straggler"] is None, summary["ranks"]
    assert all(r["step_time"] > 0.04 for r in summary["ranks"])


def test_automatic_report_reaches_the_dashboard_in_a_real_kernel(kernel: Any) -> None:
    assert kernel.run("%load_ext dtrain_magics").status == "ok"
    msg_id = kernel.submit(
        "%%distributed --nodes 2 --where-after 2\n"
        "import time, torch\n"
        "if rank == 1:\n"
        "    time.sleep(8)\n"
        "total = hvd.allreduce(torch.ones(1), name='late').item()\n"
    )
    live = ""  # the dashboard's widgets, as the front end receives them
    deadline = time.monotonic() + 180
    record = ""
    while time.monotonic() < deadline:
        msg = kernel.kc.get_iopub_msg(timeout=180)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        content = msg["content"]
        if msg["msg_type"] == "comm_msg":
            value = str(content.get("data", {}).get("state", {}).get("value", ""))
            if "dtrain-where" in value:
                live = value
        elif msg["msg_type"] == "update_display_data":
            record = content["data"].get("text/html", "")
        elif msg["msg_type"] == "status" and content["execution_state"] == "idle":
            break
    assert "where are the ranks (no progress for" in live
    assert "rank 1 has not joined" in live and "time.sleep(8)" in live
    assert 'class="dtrain-record" data-status="succeeded"' in record
    assert "rank 1 has not joined" in record  # the record keeps the report


def test_a_horovod_wait_for_a_rank_whose_cell_ended_fails_in_a_sentence(
    run: Any, cluster: Any
) -> None:
    """Rank 1 ends its cell and, idle, suspends Horovod: that ends rank 0's wait, which fails
    in a sentence, not Horovod's message about shut-downs; no restart."""
    pids = [e.pid for e in cluster.engines]
    code = "import torch\nif rank == 0:\n    t = hvd.allreduce(torch.ones(1), name='x')\n"
    started = time.monotonic()
    with pytest.raises(RankError) as info:
        run(code, "--nodes 2 --no-widget")
    took = time.monotonic() - started
    assert str(info.value) == (
        "rank 0 waited in a Horovod collective that rank 1 never joined: its cell had ended "
        "(every rank must call each collective)."
    )
    assert took < 10, took
    record("a Horovod allreduce rank 1 never joins (its cell ended): cell ended", took)
    assert [e.pid for e in cluster.engines] == pids
    run("x = rank", "--nodes 2")
    assert rank_values(cluster, "x") == [0, 1]


@pytest.mark.parametrize(
    ("backend", "code", "wait"),
    [
        (
            "horovod",
            "import torch\nname = 'a' if rank == 0 else 'b'\n"
            "t = hvd.allreduce(torch.ones(1), name=name)\n",
            "in Horovod allreduce 'allreduce.a', Average; rank 1 (it waits in 'allreduce.b') "
            "has not joined). Rank 1 was interrupted.",
        ),
        (
            "torch",
            "import torch\nt = torch.ones(1)\nif rank == 0:\n    dist.all_reduce(t)\n",
            "in torch.distributed all_reduce; rank 1 (its cell has ended) has not joined).",
        ),
    ],
    ids=["horovod-names-differ", "torch-peer-ended"],
)
def test_a_wait_no_rank_can_finish_ends_the_cell(
    run: Any, cluster: Any, backend: str, code: str, wait: str
) -> None:
    """Every rank waits in a collective another has not joined, or has ended its cell: the
    report locates it and ends the cell (it used to wait for --timeout, or for ever)."""
    pids = [e.pid for e in cluster.engines]
    lines = code.strip().splitlines()
    started = time.monotonic()
    try:
        with pytest.raises(RankError) as info:
            run(code, f"--nodes 2 --no-widget --backend {backend} --where-after 2")
        took = time.monotonic() - started
        text = str(info.value)
        assert text.startswith(
            "rank 0 waited in a collective that no rank can finish "
            f"(cell line {len(lines)}: {lines[-1].strip()} · waiting "
        ), text
        assert text.endswith(wait), text
        assert took < 15, took
        record(f"a deadlock ({backend}), --where-after 2: located and the cell ended", took)
        assert [e.pid for e in cluster.engines] == pids  # no restart
        run("x = rank", f"--nodes 2 --backend {backend}")
        assert rank_values(cluster, "x") == [0, 1]
    finally:
        run("x = 1", "--nodes 2 --no-widget --backend horovod")


def test_a_horovod_wait_against_dtrain_barrier_is_named_and_ended(run: Any, cluster: Any) -> None:
    """The package's own MPI waits show in the report and count as waits; MPI's cannot be
    interrupted, so the cluster is restarted, as for any rank that does not stop."""
    code = (
        "import torch\nif rank == 0:\n    hvd.allreduce(torch.ones(1), name='y')\n"
        "else:\n    dtrain.barrier()\n"
    )
    with pytest.raises(RankError) as info:
        run(code, "--nodes 2 --no-widget --where-after 2")
    text = str(info.value)
    assert text.startswith("rank 0 waited in a collective that no rank can finish"), text
    summary = _run_json()
    rank1 = summary["where"]["ranks"][1]
    assert rank1["collective"]["name"] == "dtrain.barrier", rank1
    assert "in dtrain.barrier (MPI barrier)" in rank1["line"], rank1["line"]
    run("x = rank", "--nodes 2")
    assert rank_values(cluster, "x") == [0, 1]
