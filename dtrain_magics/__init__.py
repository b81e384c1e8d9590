"""dtrain-magics: run notebook cells on every rank of a warm ipyparallel + MPI + Horovod cluster.

Load with ``%load_ext dtrain_magics``; then ``%%distributed --nodes 2`` runs a cell on two ranks.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .records import last_run, runs

__all__ = [
    "ConfigPanel",
    "__version__",
    "last_run",
    "load_ipython_extension",
    "runs",
    "unload_ipython_extension",
]

_magics: Any = None
_MAGIC = "%%distributed"


def ConfigPanel(magics: Any = None) -> Any:
    """The settings form of ``%dtrain config``, for the loaded extension's magics."""
    from .config_panel import ConfigPanel as Panel

    if magics is None and _magics is None:
        raise RuntimeError("load the extension first: %load_ext dtrain_magics")
    return Panel(magics or _magics)


def _await_distributed_cells(lines: list[str]) -> list[str]:
    """Input transformer: in a kernel, run a ``%%distributed`` cell as an awaited coroutine.

    The cell then yields to the kernel's event loop while the ranks run, so widget events (the
    dashboard's Stop button) are handled during the run. ``%%distributed?`` is left alone.
    """
    if not lines or not lines[0].startswith(_MAGIC) or lines[0].rstrip().endswith("?"):
        return lines
    line = lines[0][len(_MAGIC) :].rstrip("\n")
    if line and not line[0].isspace():
        return lines  # another magic whose name starts with "distributed"
    cell = "".join(lines[1:])
    return [f"await __import__('dtrain_magics')._magics.distributed_async({line!r}, {cell!r})\n"]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where JupyterLab finds the built front-end extension."""
    return [{"src": "labextension", "dest": "dtrain-magics"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The server extension behind the lab extension's sidebar (``/dtrain/`` endpoints)."""
    return [{"module": "dtrain_magics.server"}]


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%%distributed`` and ``%dtrain`` (heavy imports happen on first use)."""
    global _magics
    from .magics import DistributedMagics

    if _magics is None or _magics.shell is not ipython:
        _magics = DistributedMagics(ipython)
    ipython.register_magics(_magics)
    in_kernel = getattr(ipython, "kernel", None) is not None
    cleanup = ipython.input_transformers_cleanup
    if in_kernel and ipython.autoawait and _await_distributed_cells not in cleanup:
        cleanup.append(_await_distributed_cells)


def unload_ipython_extension(ipython: Any) -> None:
    """Stop the cluster this extension started."""
    global _magics
    if _await_distributed_cells in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.remove(_await_distributed_cells)
    if _magics is not None:
        _magics.cluster.stop()
        _magics = None
