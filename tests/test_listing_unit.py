"""Unit tests of how the server extension reads run and cluster records (pure logic)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from dtrain_magics.server.listing import describe_run, find_run, list_clusters, list_runs


def _summary(run_id: str, status: str, pid: int, **info: Any) -> dict[str, Any]:
    return {
        "id": run_id,
        "status": status,
        "message": "",
        "failure": "RuntimeError: boom\nmore",
        "failing_rank": 1,
        "latest_metrics": {"loss": 0.5},
        "info": {"backend": "horovod", "kernel_pid": pid, **info},
        "ranks": [{"rank": 0, "n": 5, "total": 10}, {"rank": 1, "n": 10, "total": 10}],
    }


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_progress_failure_and_notebook_path() -> None:
    run = describe_run(
        _summary("r1", "failed", os.getpid(), kernel_id="k1", cell_id="c1"), {"k1": "a/b.ipynb"}
    )
    assert run["progress"] == 0.75
    assert run["failure"] == "RuntimeError: boom"
    assert (run["path"], run["cell_id"], run["live"]) == ("a/b.ipynb", "c1", True)


def test_a_running_run_of_a_dead_kernel_is_lost() -> None:
    run = describe_run(_summary("r1", "running", _dead_pid(), kernel_id="k1"), {})
    assert run["status"] == "lost"
    assert run["live"] is False


def test_runs_newest_first_and_limited(tmp_path: Path) -> None:
    for name in ("20260101-000000-aa", "20260102-000000-bb", "20260103-000000-cc"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(_summary(name, "succeeded", 1)))
    (tmp_path / "20260104-000000-dd").mkdir()  # a run whose summary is not written yet
    assert [r["id"] for r in list_runs(tmp_path, {}, limit=2)] == [
        "20260103-000000-cc",
        "20260102-000000-bb",
    ]
    assert find_run(tmp_path, "20260101-000000-aa", {})["id"] == "20260101-000000-aa"  # type: ignore[index]
    assert find_run(tmp_path, "../etc", {}) is None


def test_only_clusters_of_this_servers_kernels(tmp_path: Path) -> None:
    for kernel in ("k1", "k2"):
        (tmp_path / f"{kernel}.json").write_text(json.dumps({"kernel_id": kernel, "state": "idle"}))
    found = list_clusters(tmp_path, {"k2": "x.ipynb"})
    assert found == [{"kernel_id": "k2", "state": "idle", "path": "x.ipynb"}]


def test_a_cluster_whose_kernel_died_shows_stopped(tmp_path: Path) -> None:
    """JupyterLab restarts a dead kernel under the same id: its record still named the old
    cluster busy until another kernel pruned it."""
    record = {"kernel_id": "k1", "kernel_pid": _dead_pid(), "state": "busy", "run_id": "r1"}
    (tmp_path / "k1.json").write_text(json.dumps(record))
    (found,) = list_clusters(tmp_path, {"k1": "x.ipynb"})
    assert (found["state"], found["run_id"]) == ("stopped", None)


def test_a_run_keeps_its_notebook_after_its_kernel_is_gone(tmp_path: Path) -> None:
    summary = _summary("r1", "succeeded", _dead_pid(), kernel_id="gone")
    summary["info"]["notebook"] = str(tmp_path / "work" / "train.ipynb")  # JPY_SESSION_NAME
    assert describe_run(summary, {}, str(tmp_path))["path"] == "work/train.ipynb"
    assert describe_run(summary, {}, str(tmp_path / "other"))["path"] is None  # not under it
    assert describe_run(summary, {})["path"] is None
    summary["info"]["notebook"] = "rel/nb.ipynb"  # a server that gave the path itself
    assert describe_run(summary, {}, str(tmp_path))["path"] == "rel/nb.ipynb"
    run = describe_run(summary, {"gone": "live.ipynb"}, str(tmp_path))
    assert run["path"] == "live.ipynb" and run["live"]  # a live kernel's session comes first


def test_state_files_of_dead_kernels_and_unreadable_ones_are_forgotten(tmp_path: Path) -> None:
    from dtrain_magics.store.kernel_state import UNREADABLE_AFTER, forget_dead_kernels

    live = {"kernel_id": "k1", "kernel_pid": os.getpid(), "state": "idle"}
    (tmp_path / "k1.json").write_text(json.dumps(live))
    (tmp_path / "k2.json").write_text(json.dumps({**live, "kernel_pid": _dead_pid()}))
    for name in ("pid-11343.json", "new.json"):  # a write cut short, before writes were atomic
        (tmp_path / name).write_text('{"kernel_pid": 11343, "updated": 1.0}7}')
    old = (tmp_path / "pid-11343.json").stat().st_mtime - UNREADABLE_AFTER - 1
    os.utime(tmp_path / "pid-11343.json", (old, old))
    forget_dead_kernels(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k1.json", "new.json"]
