"""``--max-restarts``: a rank killed mid-training, through the real cluster (2 ranks, Horovod).

The cell resumes from ``dtrain.load_checkpoint``; the test SIGKILLs rank 1's engine process
from outside (as the OOM killer would) once the rank says it is in epoch ``KILL_AT``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import rank_values

import dtrain_magics
from dtrain_magics.errors import RankError

pytestmark = pytest.mark.cluster

EPOCHS = 8
TOLERANCE = 0.01  # held-out accuracy, killed and resumed vs uninterrupted
TRAIN = """import os, time
import torch
import torch.nn.functional as F
from dtrain_magics.examples import accuracy, load_digits_split, make_model

x_train, x_test, y_train, y_test = load_digits_split()
per_rank = len(x_train) // size
shard = slice(rank * per_rank, (rank + 1) * per_rank)
x, y = x_train[shard], y_train[shard]
torch.manual_seed(0)
model = make_model()
optimizer = hvd.DistributedOptimizer(
    torch.optim.Adam(model.parameters(), lr=0.002 * size), named_parameters=model.named_parameters()
)
saved = dtrain.load_checkpoint(CHECKPOINT)
if saved is None:
    start, history = 0, []
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
else:
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    start, history = saved["epoch"] + 1, saved["history"]
for epoch in range(start, EPOCHS):
    if epoch == KILL_AT and rank == 1 and not os.path.exists(KILLED):
        open(READY, "w").close()  # the test kills this process now
        time.sleep(60)
    order = torch.randperm(per_rank, generator=torch.Generator().manual_seed(epoch))
    for first in range(0, per_rank, 32):
        idx = order[first:first + 32]
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
    history.append(epoch)
    dtrain.log(step=epoch, loss=loss.item(), test_accuracy=accuracy(model, x_test, y_test))
    dtrain.checkpoint(
        {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
         "history": history},
        CHECKPOINT,
    )
held_out = accuracy(model, x_test, y_test)
"""
FLAGS = "--nodes 2 --no-widget --timeout 240 --push CHECKPOINT,EPOCHS,KILL_AT,READY,KILLED"


def _kill_rank_when_ready(cluster: Any, ready: Path, killed: Path) -> threading.Thread:
    """A thread that SIGKILLs rank 1's engine once ``ready`` exists (marking ``killed`` first)."""
    pid = next(e.pid for e in cluster.engines if e.rank == 1)

    def kill() -> None:
        deadline = time.monotonic() + 180
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if ready.exists():
            killed.write_text(str(time.time()))
            os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def _train(ip: Any, tmp_path: Path, name: str, kill_at: int | None, flags: str) -> Any:
    ip.user_ns.update(
        CHECKPOINT=str(tmp_path / f"{name}.pt"),
        EPOCHS=EPOCHS,
        KILL_AT=kill_at,
        READY=str(tmp_path / f"{name}.ready"),
        KILLED=str(tmp_path / f"{name}.killed"),
    )
    ip.run_cell_magic("distributed", flags, TRAIN)
    record = dtrain_magics.last_run()
    assert record is not None
    return record


def test_a_killed_rank_restarts_the_cluster_and_the_cell_resumes_to_the_end(
    ip: Any, cluster: Any, tmp_path: Path, capsys: Any
) -> None:
    baseline = _train(ip, tmp_path, "uninterrupted", None, f"{FLAGS} --pull history,held_out")
    assert baseline.status == "succeeded" and len(baseline.attempts) == 1
    expected = ip.user_ns["held_out"]
    capsys.readouterr()

    pids = [e.pid for e in cluster.engines]
    killer = _kill_rank_when_ready(cluster, tmp_path / "killed.ready", tmp_path / "killed.killed")
    started = time.monotonic()
    record = _train(ip, tmp_path, "killed", 3, f"{FLAGS} --max-restarts 2 --pull history,held_out")
    took = time.monotonic() - started
    killer.join(timeout=5)
    printed = capsys.readouterr().out

    assert (tmp_path / "killed.killed").exists(), "rank 1 was never killed"
    assert record.status == "succeeded", record.exit_reason
    assert [a["status"] for a in record.attempts] == ["failed", "succeeded"]
    cause = record.attempts[0]["cause"]
    assert cause.startswith("rank 1 died") and "SIGKILL" in cause, cause
    assert record.attempts[0]["failing_rank"] == 1
    assert "restart 1 of 2" in printed and "rank 1 died" in printed
    # the epoch history has no gap: the second attempt resumed where the checkpoint left off
    assert ip.user_ns["history"] == list(range(EPOCHS))
    logged = {step for step, _ in record.metric("test_accuracy")}
    assert logged == set(range(EPOCHS))
    assert abs(ip.user_ns["held_out"] - expected) <= TOLERANCE, (ip.user_ns["held_out"], expected)
    # the cluster was restarted (new engine processes) and works for the next cell
    assert [e.pid for e in cluster.engines] != pids
    held_out = ip.user_ns["held_out"]
    killed_at = float((tmp_path / "killed.killed").read_text())
    resumed = min(m["time"] for m in record.metrics if m["time"] > killed_at) - killed_at
    print(
        f"cell with the kill {took:.1f} s (uninterrupted {baseline.wall_time:.1f} s); from the "
        f"kill to the first epoch logged after resuming {resumed:.1f} s; accuracy "
        f"{held_out:.4f} vs {expected:.4f}"
    )
    ip.run_cell_magic("distributed", "--nodes 2 --no-widget", "ok = rank + 1")
    assert rank_values(cluster, "ok") == [1, 2]


def test_an_exception_of_the_cell_is_not_retried(ip: Any, cluster: Any) -> None:
    ip.run_cell_magic("distributed", "--nodes 2 --no-widget", "kept = rank")
    pids = [e.pid for e in cluster.engines]
    with pytest.raises(RankError) as info:
        ip.run_cell_magic(
            "distributed",
            "--nodes 2 --no-widget --max-restarts 2",
            "if rank == 1:\n    raise ValueError('boom')\n",
        )
    assert str(info.value).startswith("rank 1 failed with ValueError: boom")
    record = dtrain_magics.last_run()
    assert record is not None and len(record.attempts) == 1
    assert [e.pid for e in cluster.engines] == pids  # not restarted: namespaces kept
    assert rank_values(cluster, "kept") == [0, 1]


def test_when_the_restarts_run_out_the_cell_fails_naming_the_death(ip: Any, cluster: Any) -> None:
    code = (
        "import os, signal, torch\n"
        "if rank == 1:\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "hvd.allreduce(torch.ones(1))\n"
    )
    with pytest.raises(RankError) as info:
        ip.run_cell_magic("distributed", "--nodes 2 --no-widget --max-restarts 1", code)
    message = str(info.value)
    assert message.startswith("rank 1 died"), message
    assert "run again once after a rank died (--max-restarts)" in message
    record = dtrain_magics.last_run()
    assert record is not None and record.status == "failed"
    assert [a["status"] for a in record.attempts] == ["failed", "failed"]
    assert all(a["cause"].startswith("rank 1 died") for a in record.attempts)
    # the cluster is up again for the next cell
    ip.run_cell_magic("distributed", "--nodes 2 --no-widget", "ok = rank + 1")
    assert rank_values(cluster, "ok") == [1, 2]


def test_a_value_of_the_attempt_that_died_is_not_shown(
    ip: Any, cluster: Any, tmp_path: Path
) -> None:
    """Rank 0 ended the first attempt with a value before rank 1 died; the second attempt's
    rank 0 fails: the run shows rank 1's value of the second attempt only."""
    ip.user_ns["DIED"] = str(tmp_path / "died-once")
    code = (
        "import os, time, torch\n"
        "first = not os.path.exists(DIED)\n"
        "hvd.allreduce(torch.ones(1))\n"
        "if rank == 1 and first:\n"
        "    time.sleep(1)\n"
        "    open(DIED, 'w').close()\n"
        "    os._exit(3)\n"
        "if rank == 0 and not first:\n"
        "    raise ValueError('second attempt')\n"
        "f'rank {rank} first={first}'\n"
    )
    with pytest.raises(RankError) as info:
        ip.run_cell_magic("distributed", "--nodes 2 --no-widget --max-restarts 1 --push DIED", code)
    assert str(info.value).startswith("rank 0 failed with ValueError: second attempt")
    record = dtrain_magics.last_run()
    assert record is not None and len(record.attempts) == 2
    assert record.values == [{"ranks": [1], "text": "'rank 1 first=False'"}], record.values
