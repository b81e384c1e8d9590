"""Where records live, and the one way they are written (atomically)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any


def runs_dir() -> Path:
    """Run records: ``$DTRAIN_RUNS_DIR`` or ``<jupyter data dir>/dtrain-magics/runs``."""
    return _runs_dir(os.environ.get("DTRAIN_RUNS_DIR"), os.environ.get("JUPYTER_DATA_DIR"))


@functools.lru_cache(maxsize=8)
def _runs_dir(runs_env: str | None, data_env: str | None) -> Path:
    if runs_env:
        return Path(runs_env)
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "dtrain-magics" / "runs"


def clusters_dir() -> Path:
    """Each kernel's cluster state, under the runs directory (``$DTRAIN_RUNS_DIR`` moves it
    too, and leaves nothing beside it)."""
    return runs_dir() / "_clusters"


def logs_dir() -> Path:
    """The kernels' diagnostics logs, under the runs directory."""
    return runs_dir() / "_logs"


def write_json_atomic(path: Path, data: Any, indent: int | None = None) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=indent, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if it is missing or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
