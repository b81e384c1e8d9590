"""Clusters and runs as the sidebar shows them, read from the records kernels write to disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psutil

from ..store.paths import read_json
from ..store.schema import ACTIVE_RUN


def notebook_path(notebook: str | None, root: str | None) -> str | None:
    """A run's notebook (``JPY_SESSION_NAME``: a file system path) as a path under the server's
    ``root``; None outside it, or when the run's kernel did not say."""
    if not notebook:
        return None
    if not os.path.isabs(notebook):
        return notebook
    if not root:
        return None
    relative = os.path.relpath(notebook, root)
    return None if relative.startswith("..") else relative.replace(os.sep, "/")


def describe_run(
    summary: dict[str, Any], paths: dict[str, str], root: str | None = None
) -> dict[str, Any]:
    """One run for the sidebar: status, progress, latest metrics, failing rank, where it ran
    (the notebook of a live kernel, else the one the run recorded, under ``root``)."""
    info = summary.get("info") or {}
    ranks = summary.get("ranks") or []
    kernel_id = info.get("kernel_id")
    status = summary.get("status", "unknown")
    message = summary.get("message", "")
    pid = info.get("kernel_pid") or summary.get("kernel_pid")
    if status in ACTIVE_RUN and pid and not psutil.pid_exists(int(pid)):
        status, message = "lost", "the kernel exited while the run was going on"
    totals = [r for r in ranks if r.get("total")]
    progress = (
        sum(min(r.get("n", 0), r["total"]) for r in totals) / sum(r["total"] for r in totals)
        if totals
        else None
    )
    failure = str(summary.get("failure") or "").strip().splitlines()
    return {
        "id": summary.get("id"),
        "status": status,
        "message": message,
        "started": summary.get("started"),
        "ended": summary.get("ended"),
        "elapsed": summary.get("elapsed"),
        "eta": summary.get("eta"),
        "ranks": len(ranks),
        "progress": progress,
        "latest_metrics": summary.get("latest_metrics") or {},
        "throughput": summary.get("throughput") or {},
        "failing_rank": summary.get("failing_rank"),
        "failure": failure[0] if failure else "",
        "backend": info.get("backend"),
        "device": info.get("device"),
        "launcher": info.get("launcher"),
        "kernel_id": kernel_id,
        "cell_id": info.get("cell_id"),
        "execution_count": info.get("execution_count"),
        "path": paths.get(kernel_id or "") or notebook_path(info.get("notebook"), root),
        "live": bool(kernel_id and kernel_id in paths),
    }


def list_runs(
    root: Path, paths: dict[str, str], limit: int = 30, server_root: str | None = None
) -> list[dict[str, Any]]:
    """The newest ``limit`` runs, newest first (run ids start with their start time)."""
    if not root.is_dir():
        return []
    found = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir()), reverse=True):
        summary = read_json(folder / "run.json")
        if summary is not None:
            found.append(describe_run(summary, paths, server_root))
        if len(found) >= limit:
            break
    return found


def find_run(
    root: Path, run_id: str, paths: dict[str, str], server_root: str | None = None
) -> dict[str, Any] | None:
    if not run_id or "/" in run_id or run_id.startswith((".", "_")):
        return None
    summary = read_json(root / run_id / "run.json")
    return describe_run(summary, paths, server_root) if summary else None


def list_clusters(root: Path, paths: dict[str, str]) -> list[dict[str, Any]]:
    """The clusters of this server's kernels (``paths`` maps kernel id to notebook path)."""
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.glob("*.json")):
        record = read_json(path)
        if record is None or record.get("kernel_id") not in paths:
            continue
        pid = record.get("kernel_pid")
        if pid and not psutil.pid_exists(int(pid)):  # its kernel died (restarted: the same id)
            record = {**record, "state": "stopped", "run_id": None}
        found.append({**record, "path": paths[record["kernel_id"]]})
    return found
