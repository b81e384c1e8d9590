"""One finished run, as an MLflow run: read from its record on disk, logged with MLflow's client.

Parameters: the cell's flags, the layout, backend and device, and the ranks' Python, torch and
Horovod versions. Metrics: every series logged with ``dtrain.log``, the mean across the ranks
that logged each step (rank 0's values where only rank 0 logs), with their steps and times; and
the run's wall time and throughput. Artifacts: the rank logs, ``run.json``, ``metrics.jsonl``
(every rank's points) and the cell as ``cell.py``. Only the notebook's kernel runs this; the
ranks never talk to MLflow.
"""

from __future__ import annotations

import json
import math
import os
import socket
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ..store.paths import read_json
from ..store.records import RunRecord

DEFAULT_EXPERIMENT = "dtrain-magics"
BATCH = 1000  # MLflow takes at most 1000 metrics per log_batch
MAX_POINTS = 20_000  # per metric; longer series are averaged over neighbouring steps
REACH_TIMEOUT = 5.0  # seconds to connect to an MLflow server before calling it unreachable
STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
THROUGHPUT = {"steps/s": "dtrain/steps_per_s", "samples/s": "dtrain/samples_per_s"}
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. /")


def tracking_uri(target: str, directory: Path) -> str:
    """The tracking URI for the setting's value: a URI as given, or for ``on`` MLflow's own
    default (``MLFLOW_TRACKING_URI``, else its local store) placed in ``directory``."""
    if target != "on":
        return target
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    import mlflow.store.tracking as stores

    mlruns = directory / stores.DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    default = getattr(stores, "DEFAULT_TRACKING_URI", None)  # MLflow 3: sqlite:///mlflow.db
    if default is None or _holds_runs(mlruns):  # as MLflow does: an mlruns/ in use stays in use
        return mlruns.resolve().as_uri()
    if default.startswith("sqlite:///") and not default.startswith("sqlite:////"):
        return "sqlite:///" + str((directory / default[len("sqlite:///") :]).resolve())
    return str(default)  # a remote default (an MLflow that set one): as given


def check_reachable(uri: str, timeout: float = REACH_TIMEOUT) -> None:
    """Raise ``ConnectionError`` if ``uri`` names an HTTP(S) server that takes no connection:
    MLflow's client retries such a request for minutes before it gives up. Servers reached
    through a proxy (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``) are left to MLflow."""
    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        return
    proxies = urllib.request.getproxies()
    if (parts.scheme in proxies or "all" in proxies) and not urllib.request.proxy_bypass(host):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise ConnectionError(
            f"no MLflow server answers at {host}:{port} ({reason}); start it, or check the URI"
        ) from None


def _holds_runs(mlruns: Path) -> bool:
    try:
        return any((d / "meta.yaml").exists() for d in mlruns.iterdir() if d.name.isdigit())
    except OSError:
        return False


def experiment_name() -> str:
    """``MLFLOW_EXPERIMENT_NAME``, else the notebook's name, else ``dtrain-magics``."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if name:
        return name
    notebook = os.environ.get("JPY_SESSION_NAME")  # the notebook's path, set by Jupyter
    return Path(notebook).stem if notebook else DEFAULT_EXPERIMENT


def params(record: RunRecord) -> dict[str, str]:
    """The run's parameters, as MLflow stores them (text)."""
    info = record.options
    versions = info.get("versions") or {}
    values = {
        "flags": info.get("flags", ""),
        "ranks": len(record.ranks),
        "nodes": info.get("nodes"),
        "procs_per_node": info.get("procs_per_node"),
        "launcher": info.get("launcher"),
        "backend": info.get("backend"),
        "device": info.get("device"),
        "python_version": versions.get("python"),
        "torch_version": versions.get("torch"),
        "horovod_version": versions.get("horovod") or "not installed",
    }
    return {k: str(v)[:6000] for k, v in values.items() if v is not None}


def metric_series(path: Path) -> dict[str, list[tuple[int, float, float]]]:
    """``{name: [(step, mean across ranks, time), ...]}`` from a run's ``metrics.jsonl``."""
    by_step: dict[str, dict[int, list[float]]] = {}
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return {}
    with f:
        for line in f:
            try:
                row = json.loads(line)
                step, value, when = int(row["step"]), float(row["value"]), float(row["time"])
                name = str(row["name"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
            if not math.isfinite(value):
                continue
            acc = by_step.setdefault(name, {}).get(step)
            if acc is None:
                by_step[name][step] = [value, 1.0, when]
            else:
                acc[0] += value
                acc[1] += 1
                acc[2] = min(acc[2], when)
    return {name: _bounded(steps) for name, steps in by_step.items() if _valid_key(name)}


def _bounded(steps: dict[int, list[float]]) -> list[tuple[int, float, float]]:
    """Each step's mean, in step order; past ``MAX_POINTS`` steps, neighbours are averaged."""
    ordered = sorted(steps.items())
    width = max(1, math.ceil(len(ordered) / MAX_POINTS))
    out = []
    for i in range(0, len(ordered), width):
        group = ordered[i : i + width]
        total = sum(acc[0] for _, acc in group)
        count = sum(acc[1] for _, acc in group)
        out.append((group[0][0], total / count, group[0][1][2]))
    return out


def _valid_key(name: str) -> bool:
    return bool(name) and len(name) <= 250 and set(name) <= _KEY_CHARS


def log_run(client: Any, record: RunRecord) -> str:
    """Log ``record`` as a new MLflow run with ``client``; return MLflow's run id."""
    from mlflow.entities import Metric

    summary = read_json(record.dir / "run.json") or {}
    started = float(summary.get("started") or 0.0)
    ended = float(summary.get("ended") or started + record.wall_time)
    run = client.create_run(
        _experiment_id(client),
        start_time=_ms(started),
        run_name=record.id,
        tags=_tags(record),
    )
    run_id = str(run.info.run_id)
    try:
        metrics = [
            Metric(name, value, _ms(when), step)
            for name, points in metric_series(record.dir / "metrics.jsonl").items()
            for step, value, when in points
        ]
        metrics.append(Metric("dtrain/wall_time_s", record.wall_time, _ms(ended), 0))
        for key, name in THROUGHPUT.items():
            rate = (summary.get("throughput") or {}).get(key)
            if rate:
                metrics.append(Metric(name, float(rate), _ms(ended), 0))
        client.log_batch(run_id, params=[_param(k, v) for k, v in params(record).items()])
        for i in range(0, len(metrics), BATCH):
            client.log_batch(run_id, metrics=metrics[i : i + BATCH])
        client.log_text(run_id, str(record.options.get("cell", "")).rstrip() + "\n", "cell.py")
        client.log_artifacts(run_id, str(record.dir))
    except BaseException:
        client.set_terminated(run_id, status="FAILED", end_time=_ms(ended))
        raise
    client.set_terminated(run_id, status=STATUS.get(record.status, "KILLED"), end_time=_ms(ended))
    return run_id


def _experiment_id(client: Any) -> str:
    from mlflow.exceptions import MlflowException

    name = experiment_name()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:  # another kernel created it meanwhile
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def _tags(record: RunRecord) -> dict[str, str]:
    tags = {
        "dtrain.run_id": record.id,
        "dtrain.status": record.status,
        "dtrain.exit_reason": record.exit_reason,
        "dtrain.run_dir": str(record.dir),
        "mlflow.source.type": "NOTEBOOK",
    }
    if record.failing_rank is not None:
        tags["dtrain.failing_rank"] = str(record.failing_rank)
    if record.dropped_points:  # the metrics lack these: logged faster than they travel
        tags["dtrain.dropped_points"] = str(record.dropped_points)
    notebook = os.environ.get("JPY_SESSION_NAME")
    if notebook:
        tags["mlflow.source.name"] = notebook
    cell = str(record.options.get("cell", ""))
    if cell:  # the run's description in MLflow's UI
        tags["mlflow.note.content"] = f"```python\n{cell}\n```"
    return tags


def _param(key: str, value: str) -> Any:
    from mlflow.entities import Param

    return Param(key, value)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
