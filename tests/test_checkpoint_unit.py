"""Checkpoint temporaries: what a killed writer leaves is removed, nothing else is."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from helpers import exited_pid

from dtrain_magics.rank.checkpoint import remove_stale_temps, save_atomic


def test_only_temporaries_of_exited_writers_on_this_host_are_removed(tmp_path: Path) -> None:
    host = socket.gethostname()
    dead, live = exited_pid(), os.getpid()
    names = {
        "dead": f".model.pt.{host}-{dead}.k2j_x9.tmp",
        "live": f".model.pt.{host}-{live}.abc123.tmp",
        "other host": f".model.pt.node-17.cluster-{dead}.abc123.tmp",
        "old shape": ".model.pt.q8w1e2.tmp",
        "other file": f".weights.pt.{host}-{dead}.abc123.tmp",
        "the checkpoint": "model.pt",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temps(str(tmp_path / "model.pt")) == [names["dead"]]
    assert sorted(os.listdir(tmp_path)) == sorted(v for k, v in names.items() if k != "dead")


def test_a_save_removes_a_dead_writers_temporary_and_leaves_only_the_checkpoint(
    tmp_path: Path,
) -> None:
    torch = pytest.importorskip("torch")
    stale = tmp_path / f".model.pt.{socket.gethostname()}-{exited_pid()}.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    save_atomic({"step": 5}, str(tmp_path / "model.pt"))
    assert os.listdir(tmp_path) == ["model.pt"]
    assert torch.load(tmp_path / "model.pt", weights_only=True) == {"step": 5}


def test_a_missing_directory_removes_nothing(tmp_path: Path) -> None:
    assert remove_stale_temps(str(tmp_path / "absent" / "model.pt")) == []
