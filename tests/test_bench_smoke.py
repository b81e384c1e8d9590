"""The benchmark harness runs end to end (quick mode) and writes its report; no numbers asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is a package of the repository, not installed
    sys.path.insert(0, str(REPO))
ROW_FIELDS = {"suite", "measure", "ours", "peer", "peer_value", "ratio", "target", "met", "note"}


def test_summaries_pair_the_arms() -> None:
    from benchmarks.stats import format_ratio, summarize, summarize_ratio

    s = summarize([3.0, 1.0, 2.0, 4.0])
    assert (s["n"], s["median"], s["min"], s["max"]) == (4, 2.5, 1.0, 4.0)
    assert s["q1"] <= s["median"] <= s["q3"]
    r = summarize_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 2.0])  # per-pair ratios 2, 2, 3
    assert r["median"] == 2.0 and r["max"] == 3.0
    assert r["ci90"][0] <= r["median"] <= r["ci90"][1]
    assert format_ratio(r).startswith("2.00 [") and "n=3" in format_ratio(r)
    with pytest.raises(ValueError):
        summarize([])


def test_allreduce_noise_is_how_far_mpiexec_lands_from_itself() -> None:
    from benchmarks.stats import summarize_ratio
    from benchmarks.suites.allreduce import noise

    steady = summarize_ratio([1.0, 1.01, 0.99, 1.0], [1.0] * 4)
    assert noise(steady, [3.0, 3.01, 2.99, 3.0] * 2) < 1.02
    faster = summarize_ratio([1.2, 1.3, 1.4, 1.5], [1.0] * 4)  # the second run faster
    slower = summarize_ratio([1 / 1.2, 1 / 1.3, 1 / 1.4, 1 / 1.5], [1.0] * 4)
    assert noise(faster, [1.0] * 8) == faster["q3"]
    assert abs(noise(slower, [1.0] * 8) - 1 / slower["q1"]) < 1e-12
    # bimodal rounds that happened to pair: the paired ratios say nothing, the rounds do
    bimodal = [3.6, 3.7, 1.3, 1.3, 3.6, 3.6, 1.8, 3.6, 3.7, 1.7, 3.7, 3.6]
    assert noise(steady, bimodal) > 2


def test_allreduce_rounds_are_a_williams_square() -> None:
    from benchmarks.suites.allreduce import ARMS, ORDERS

    for place in range(len(ARMS)):  # every arm takes every place once
        assert sorted(order[place] for order in ORDERS) == sorted(ARMS)
    follows = [(order[i], order[i + 1]) for order in ORDERS for i in range(len(order) - 1)]
    # every arm follows every other arm exactly once: none always runs after an mpiexec job
    assert sorted(follows) == sorted((a, b) for a in ARMS for b in ARMS if a != b)


def test_allreduce_runs_whole_squares_whatever_the_pairs() -> None:
    from benchmarks.suites.allreduce import ORDERS, round_count

    assert round_count(8) == 16
    for pairs in range(1, 10):  # an odd --pairs used to run half a square more
        assert round_count(pairs) >= 2 * pairs and round_count(pairs) % len(ORDERS) == 0


def test_allreduce_blocks_spread_every_call_of_a_size_over_the_run() -> None:
    """The workload's schedule, run with a stand-in ``dist`` that only counts (pure logic)."""
    import torch

    from benchmarks.workloads import ALLREDUCE

    calls: list[int] = []  # bytes of each allreduce, and 0 for each block's barrier

    class Counting:
        @staticmethod
        def all_reduce(tensor: torch.Tensor) -> None:
            calls.append(tensor.numel() * 4)

        @staticmethod
        def barrier() -> None:
            calls.append(0)

    ns = {"dist": Counting, "device": torch.device("cpu")}
    exec(ALLREDUCE, ns)
    seconds = ns["bench_allreduce"]([1024, 4096], 7 * 4096, "torch")["seconds"]
    assert set(seconds) == {"1024", "4096"} and all(t > 0 for t in seconds.values())
    assert calls.count(1024) == 2 + 28 and calls.count(4096) == 2 + 7  # warm-up, then the budget
    blocks = [calls[i + 1] for i, c in enumerate(calls) if c == 0]  # each block's size
    assert blocks.count(1024) == 21 and blocks.count(4096) == 7
    # the size with fewer blocks than turns has them spread over the run, not at its start
    turns = [blocks[: i + 1].count(1024) for i, b in enumerate(blocks) if b == 4096]
    assert turns[0] <= 3 and turns[-1] >= 19


def test_throughput_rounds_keep_the_compared_arms_side_by_side() -> None:
    from benchmarks.suites.throughput import DIRECT, MAGIC, MPIEXEC, ORDERS

    arms = set(ORDERS[0])
    for place in range(len(arms)):  # every arm takes every place once
        assert {order[place] for order in ORDERS} == arms
    for order in ORDERS:
        assert abs(order.index(MAGIC) - order.index(DIRECT)) == 1
    assert sum(order.index(MAGIC) < order.index(DIRECT) for order in ORDERS) == len(ORDERS) // 2
    assert sum(abs(order.index(MAGIC) - order.index(MPIEXEC)) == 1 for order in ORDERS) >= 2


def test_latency_reports_a_peer_that_hung_with_the_pairs_it_gave() -> None:
    from benchmarks.kernels import Cell
    from benchmarks.report import Report
    from benchmarks.suites.latency import _report

    def cells(*ms: float) -> list[Cell]:
        return [Cell(m / 1000, m / 1000, 0.0) for m in ms]

    times = {
        "%%distributed (dashboard)": cells(10, 10, 10, 10),
        "%%distributed --no-widget": cells(9, 9, 9, 9),
        "%%px (same engines)": cells(8, 8, 8, 8),
        "accelerate notebook_launcher": cells(100, 200),  # hung in round 3
        "nbdistributed %%distributed": [],  # hung in the warm-up
    }
    gave_up = {
        "accelerate notebook_launcher": "round 3: CellTimeoutError: no reply",
        "nbdistributed %%distributed": "warm-up: CellTimeoutError: no reply",
    }
    report = Report({}, {})
    _report(report, times, [], gave_up)
    accelerate = [r for r in report.rows if r.peer == "accelerate notebook_launcher"]
    assert [r.ratio["n"] for r in accelerate if r.ratio] == [2]  # the rounds it ran, paired
    assert accelerate[0].ratio and accelerate[0].ratio["median"] == (0.1 + 0.05) / 2
    left_out = {r.peer: r.peer_value for r in report.rows if r.peer_value.startswith("left out")}
    assert left_out == {
        "accelerate notebook_launcher": "left out after 2 pairs",
        "nbdistributed %%distributed": "left out after 0 pairs",
    }
    assert any("round 3: CellTimeoutError" in note for note in report.notes)


def test_unknown_suite_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "nonsense"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "unknown suite" in done.stderr


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "benchmarks", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--ranks", "0"], "--ranks must be at least 1"),
        # this test runs where torch sees no GPU (the gpu-marked tests are the GPU ones)
        (["--device", "cuda", "--only", "soak"], "--device cuda needs a GPU per rank"),
    ],
)
def test_ranks_the_machine_cannot_give_are_refused(args: list[str], says: str) -> None:
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda would run")
    done = _bench(*args)
    assert done.returncode == 2 and says in done.stderr, done.stderr[-2000:]


@pytest.mark.cluster
@pytest.mark.timeout(280)
def test_a_one_rank_run_as_on_a_one_gpu_machine(tmp_path: Path) -> None:
    """``--ranks 1`` (what ``--device cuda`` picks on one GPU): the suites run on one rank, and
    allreduce, which needs two, says it did not run."""
    done = _bench("--quick", "--ranks", "1", "--only", "replicas,allreduce", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(next(tmp_path.glob("*-cpu-quick.json")).read_text())
    assert data["options"]["ranks"] == 1 and data["failures"] == {}
    assert {r["suite"] for r in data["rows"]} == {"replicas"}
    assert any("Allreduce: not run, as it takes 2 ranks" in n for n in data["notes"])
    assert any("check_replicas on 1 rank of" in n for n in data["notes"])


@pytest.mark.cluster
@pytest.mark.timeout(280)
def test_quick_run_writes_the_report(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "soak", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "soak" in done.stdout and "measure" in done.stdout  # the printed table

    json_files = list(tmp_path.glob("*-cpu-quick.json"))
    md_files = list(tmp_path.glob("*-cpu-quick.md"))
    assert len(json_files) == 1 and len(md_files) == 1, sorted(p.name for p in tmp_path.iterdir())
    assert not list(tmp_path.glob("latest*")), "a quick run must not replace the latest table"

    data = json.loads(json_files[0].read_text())
    machine = data["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["memory_gib"] > 0
    assert isinstance(machine["gpus"], list)
    assert data["options"]["quick"] is True and data["options"]["suites"] == ["soak"]
    assert data["failures"] == {}
    rows = data["rows"]
    assert rows and all(set(r) == ROW_FIELDS for r in rows)
    assert {r["suite"] for r in rows} == {"soak"}
    soak = data["raw"]["soak"]
    for run in soak.values():
        assert run["messages"] > 0 and run["seconds"] > 0
        assert run["messages_by_type"].get("comm_msg", 0) > 0  # the dashboard's updates arrived

    markdown = md_files[0].read_text()
    assert "| suite | measure |" in markdown and "Measured " in markdown
    assert machine["cpu"] in markdown
