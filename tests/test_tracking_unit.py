"""Runs sent to MLflow, without a cluster: the setting, a record logged and read back with
MLflow's own client, failures as one warning line, and the sentence when MLflow is missing."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.magic_arguments import magic_arguments, parse_argstring

from dtrain_magics import tracking
from dtrain_magics.config.flags import setting_arguments, settings_from_args
from dtrain_magics.config.settings import DistributedSettings
from dtrain_magics.errors import SettingError
from dtrain_magics.store.records import RunRecord, RunStore
from dtrain_magics.tracking import mlflow_run
from dtrain_magics.tracking.worker import Worker

mlflow = pytest.importorskip("mlflow")  # the test extra installs it


@magic_arguments()
@setting_arguments(DistributedSettings)
def magic(line: str) -> None:
    """Every setting."""


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("--mlflow", "on"),
        ("--mlflow --nodes 2", "on"),
        ("--mlflow on", "on"),
        ("--mlflow OFF", ""),
        ("--mlflow sqlite:///runs.db", "sqlite:///runs.db"),
        ("--mlflow http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ],
)
def test_the_flag_alone_means_mlflow_default_store(line: str, value: str) -> None:
    flags = settings_from_args(parse_argstring(magic, line), DistributedSettings)
    assert flags["mlflow"] == value
    assert DistributedSettings().mlflow == ""  # off unless asked for


def test_the_setting_is_one_trait_with_flag_form_and_config() -> None:
    trait = DistributedSettings.setting_traits()["mlflow"]
    assert trait.metadata["label"] == "MLflow" and trait.metadata["config"] is True
    assert DistributedSettings(mlflow="on").magic_line() == "%%distributed --mlflow on"
    assert "--mlflow [URI]" in (magic.__doc__ or "")
    with pytest.raises(SettingError, match="--mlflow takes on, off or a tracking URI"):
        DistributedSettings(mlflow="my runs")


def test_without_mlflow_the_magic_says_how_to_install_it(ip: Any, monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    assert not tracking.available()
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("distributed", "--nodes 2 --mlflow", "print('never')")
    message = str(info.value)
    assert message == tracking.INSTALL_HINT
    assert "pip install 'dtrain-magics[mlflow]'" in message and "\n" not in message
    monkeypatch.undo()
    assert tracking.available()


def _record(tmp_path: Path, status: str = "succeeded") -> RunRecord:
    """A finished 2-rank run's record, written to disk as a run writes it."""
    store = RunStore("20260101-120000-abcdef", 2, root=tmp_path / "runs")
    t0 = time.time() - 10
    for rank in (0, 1):
        points = [(step, "loss", float(rank + step), t0 + step) for step in range(5)]
        store.append_points(rank, points)
        store.append_log(rank, f"hello from rank {rank}\n")
    store.append_points(0, [(4, "accuracy", 0.9, t0 + 5)])  # only rank 0 logs this one
    summary: dict[str, Any] = {
        "id": "20260101-120000-abcdef",
        "status": status,
        "started": t0,
        "ended": t0 + 6,
        "throughput": {"steps/s": 1.5, "samples/s": 96.0},
    }
    store.write_summary(summary)  # type: ignore[arg-type]
    store.close()
    info = {
        "backend": "torch",
        "device": "cpu",
        "launcher": "local",
        "nodes": 2,
        "procs_per_node": 1,
        "cell": "dtrain.log(loss=1.0)",
        "flags": "--nodes 2 --backend torch --mlflow",
        "versions": {"python": "3.11.7", "torch": "2.13.0+cpu", "horovod": None},
    }
    return RunRecord(
        id=summary["id"],
        status=status,  # type: ignore[arg-type]
        exit_reason="every rank finished",
        wall_time=6.0,
        ranks=[{"rank": 0}, {"rank": 1}],  # type: ignore[list-item]
        options=info,
        dir=store.dir,
        log_paths=dict(store.log_paths),
    )


def test_a_run_read_back_with_mlflows_client(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    notebook_dir = tmp_path / "notebooks"
    notebook_dir.mkdir()
    monkeypatch.chdir(notebook_dir)  # MLflow puts the default store's artifacts here too
    record = _record(tmp_path)
    worker = Worker()
    export = worker.submit(record, "on", notebook_dir)
    run_id = export.wait(120)
    assert run_id and not export.error, export.error
    assert export.uri == f"sqlite:///{notebook_dir / 'mlflow.db'}"  # MLflow 3's default store
    assert worker.take_warnings() == []

    client = mlflow.tracking.MlflowClient(export.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == record.id
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "dtrain-magics"
    assert run.data.params == {
        "flags": "--nodes 2 --backend torch --mlflow",
        "ranks": "2",
        "nodes": "2",
        "procs_per_node": "1",
        "launcher": "local",
        "backend": "torch",
        "device": "cpu",
        "python_version": "3.11.7",
        "torch_version": "2.13.0+cpu",
        "horovod_version": "not installed",
    }
    loss = [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]
    assert sorted(loss) == [(s, s + 0.5) for s in range(5)]  # the mean of the 2 ranks
    accuracy = client.get_metric_history(run_id, "accuracy")
    assert [(m.step, m.value) for m in accuracy] == [(4, 0.9)]  # rank 0's own
    assert run.data.metrics["dtrain/samples_per_s"] == 96.0
    assert run.data.metrics["dtrain/wall_time_s"] == 6.0
    assert run.data.tags["dtrain.run_id"] == record.id
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"rank-0.log", "rank-1.log", "run.json", "metrics.jsonl", "cell.py"} <= artifacts
    local = Path(client.download_artifacts(run_id, "rank-1.log", str(tmp_path)))
    assert local.read_text() == "hello from rank 1\n"
    assert (notebook_dir / "mlflow.db").exists()


def test_a_given_uri_and_experiment_name(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "digits")
    monkeypatch.chdir(tmp_path)  # where MLflow puts a SQL store's artifacts
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    export = Worker().submit(_record(tmp_path, status="failed"), uri, tmp_path)
    run_id = export.wait(120)
    assert run_id and export.uri == uri, export.error
    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert client.get_experiment(run.info.experiment_id).name == "digits"


def test_a_failure_is_one_warning_line_and_never_raises(tmp_path: Path) -> None:
    worker = Worker()
    export = worker.submit(_record(tmp_path), "nosuchscheme://nowhere", tmp_path)
    assert export.wait(60) is None and export.done
    assert export.error
    (warning,) = worker.take_warnings()
    assert warning.startswith(
        "dtrain_magics: run 20260101-120000-abcdef was not logged to MLflow "
        "(nosuchscheme://nowhere): "
    )
    assert "\n" not in warning
    assert worker.take_warnings() == []  # shown once
    assert "failed" in repr(export)


def test_a_server_that_takes_no_connection_is_reported_at_once(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """MLflow's client retries a refused request for minutes; the worker says so at once."""
    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)  # a server behind a proxy is left to MLflow
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    worker = Worker()
    export = worker.submit(_record(tmp_path), f"http://127.0.0.1:{port}", tmp_path)
    assert export.wait(30) is None and export.done
    (warning,) = worker.take_warnings()
    assert f"no MLflow server answers at 127.0.0.1:{port} (Connection refused)" in warning


def test_long_series_are_bounded(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(mlflow_run, "MAX_POINTS", 10)
    store = RunStore("r", 1, root=tmp_path)
    store.append_points(0, [(s, "loss", float(s), 0.0) for s in range(100)])
    store.close()
    (series,) = mlflow_run.metric_series(store.dir / "metrics.jsonl").values()
    assert len(series) == 10
    assert series[0][:2] == (0, 4.5) and series[-1][:2] == (90, 94.5)
