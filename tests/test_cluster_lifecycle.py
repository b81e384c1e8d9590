"""The cluster's life on its own: progress, resize, status, stop, start failures."""

from __future__ import annotations

import os
import time
from typing import Any

import psutil
import pytest
from helpers import MPI_LAUNCHERS, alive

from dtrain_magics.cluster import TrainingCluster
from dtrain_magics.cluster.launchers import Layout
from dtrain_magics.errors import ClusterStartError

pytestmark = pytest.mark.cluster


def _names(procs: list[psutil.Process]) -> str:
    return " ".join(" ".join(p.cmdline()) for p in procs)


def test_start_reports_progress_resizes_and_stops_clean() -> None:
    messages: list[str] = []
    cluster = TrainingCluster()
    try:
        assert cluster.ensure(Layout(1, 2), messages.append) is True
        assert any("engines registered 2/2" in m for m in messages)
        assert cluster.status()["state"] == "running"
        first = cluster.processes()
        assert any(p.name().startswith(MPI_LAUNCHERS) for p in first), _names(first)
        assert "dtrain_magics.cluster.engine" in _names(first)
        first_pids = [p.pid for p in first]
        assert cluster.ensure(Layout(1, 2)) is False  # reused, not restarted

        messages.clear()
        assert cluster.ensure(Layout(3, 1), messages.append) is True
        assert messages[0].startswith("Resizing the cluster from 2 ranks")
        assert [e.rank for e in cluster.engines] == [0, 1, 2]
        assert len(set(cluster.view().apply_sync(os.getpid))) == 3
        assert not alive(first_pids)
    finally:
        tracked = [p.pid for p in cluster.processes()]
        cluster.stop()
    assert len(tracked) >= 5, "the cluster's processes were not tracked"
    assert not alive(tracked)
    assert cluster.status()["state"] == "stopped"


def test_mpiexec_failure_raises_with_the_output_tail(monkeypatch: Any) -> None:
    from dtrain_magics.cluster.launchers.local import LocalLauncher

    original = LocalLauncher.cluster_kwargs
    monkeypatch.setattr(
        LocalLauncher,
        "cluster_kwargs",
        lambda self, spec, layout: _with_bad_args(original(self, spec, layout)),
    )
    cluster = TrainingCluster(start_timeout=60)
    started = time.monotonic()
    with pytest.raises(
        ClusterStartError, match="mpiexec exited before all engines registered"
    ) as info:
        cluster.start(Layout(2, 1))
    assert time.monotonic() - started < 30
    assert "no-such-mpiexec-option" in str(info.value)
    assert cluster.status()["state"] == "stopped" and not cluster.processes()


def _with_bad_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs["config"].MPIEngineSetLauncher.mpi_args = ["--no-such-mpiexec-option"]
    return kwargs


def test_missing_mpiexec_is_one_clear_sentence(monkeypatch: Any, tmp_path: Any) -> None:
    from dtrain_magics.cluster.launchers import base as launchers

    monkeypatch.setattr(launchers.sys, "prefix", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterStartError, match="mpiexec was not found in"):
        launchers.find_mpiexec()


def test_the_start_timeout_setting_bounds_a_start(magics: Any) -> None:
    started = time.monotonic()
    with pytest.raises(ClusterStartError) as info:  # engines take seconds to import torch
        magics.distributed("--no-widget --start-timeout 0.5", "x = 1")
    assert time.monotonic() - started < 30
    assert "engines registered within 0.5 s; raise the start timeout (--start-timeout" in str(
        info.value
    )
    assert magics.cluster.status()["state"] == "stopped" and not magics.cluster.processes()


def test_the_local_launcher_keeps_its_ranks_here_inside_a_slurm_allocation(
    monkeypatch: Any,
) -> None:
    # what salloc puts into the notebook's environment: Open MPI would start the ranks on
    # these nodes through srun (it failed: "srun returned non-zero exit status")
    allocation = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOBID": "4242",
        "SLURM_NODELIST": "othernode[1-2]",
        "SLURM_JOB_NODELIST": "othernode[1-2]",
        "SLURM_TASKS_PER_NODE": "2(x2)",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NNODES": "2",
        "SLURM_JOB_CPUS_PER_NODE": "2(x2)",
    }
    for name, value in allocation.items():
        monkeypatch.setenv(name, value)
    cluster = TrainingCluster(start_timeout=60)
    try:
        cluster.ensure(Layout(1, 2))
        assert [e.rank for e in cluster.engines] == [0, 1]
        assert all(e.pid in {p.pid for p in cluster.processes()} for e in cluster.engines)
    finally:
        cluster.stop()
