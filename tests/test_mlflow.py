"""Runs tracked in MLflow through a real kernel and a real 2-rank cluster, read back with
MLflow's own client: parameters, metrics with their steps, rank logs; failures as one line."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
from kernel_session import KernelSession

pytestmark = pytest.mark.cluster
mlflow = pytest.importorskip("mlflow")  # the test extra installs it

CELL = (
    "%%distributed --nodes 2 --mlflow --no-widget\n"
    "for step in range(5):\n"
    "    dtrain.log(step=step, loss=float(rank + step))\n"
    "print('hello from', rank)"
)


def test_a_run_goes_to_mlflow_and_a_failure_is_one_warning(
    kernel: KernelSession, tmp_path: Path
) -> None:
    # the kernel's working directory stands for the notebook's
    setup = kernel.run(f"import os\nos.chdir({str(tmp_path)!r})\n%load_ext dtrain_magics")
    assert setup.status == "ok", setup.text
    reply = kernel.run(CELL)
    assert reply.status == "ok", reply.text
    assert "MLflow" not in reply.text  # MLflow's own log lines stay out of the cell
    reply = kernel.run("print('RUN', _dtrain.id, _dtrain.mlflow.wait(180), _dtrain.mlflow.uri)")
    assert reply.status == "ok", reply.text
    ours, run_id, uri = reply.text.split("RUN ")[1].split()[:3]
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"

    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == ours
    params = run.data.params
    assert params["flags"] == "--nodes 2 --mlflow --no-widget"
    assert (params["ranks"], params["nodes"], params["procs_per_node"]) == ("2", "2", "1")
    assert (params["backend"], params["device"], params["launcher"]) == ("horovod", "cpu", "local")
    assert params["torch_version"] == version("torch")
    assert params["horovod_version"] == version("horovod")
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert history == [(step, step + 0.5) for step in range(5)]  # the mean across the ranks
    logs = {a.path for a in client.list_artifacts(run_id)}
    assert {"rank-0.log", "rank-1.log"} <= logs
    rank1 = Path(client.download_artifacts(run_id, "rank-1.log", str(tmp_path)))
    assert "hello from 1" in rank1.read_text()

    # points logged faster than they travel are thinned out, and the run says how many
    reply = kernel.run(
        "%%distributed --nodes 2 --mlflow --no-widget\nfor i in range(6000):\n"
        "    dtrain.log(loss=float(i))"
    )
    assert "logged points thinned out" in reply.text, reply.text
    reply = kernel.run("print('RUN', _dtrain.dropped_points, _dtrain.mlflow.wait(180))")
    dropped, thinned = reply.text.split("RUN ")[1].split()[:2]
    assert int(dropped) > 0
    assert client.get_run(thinned).data.tags["dtrain.dropped_points"] == dropped

    # a store MLflow cannot reach: the cell succeeds, and one line says the run was not logged
    reply = kernel.run("%%distributed --nodes 2 --mlflow nosuchscheme://x --no-widget\nx = rank")
    assert reply.status == "ok", reply.text
    reply = kernel.run("_dtrain.mlflow.wait(60)")
    assert reply.status == "ok", reply.text
    lines = [line for line in reply.text.splitlines() if "not logged to MLflow" in line]
    assert len(lines) == 1, reply.text
    assert "(nosuchscheme://x)" in lines[0]
