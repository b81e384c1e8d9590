"""dtrain-magics: run notebook cells on every rank of a warm ipyparallel + MPI + Horovod cluster.

Load with ``%load_ext dtrain_magics``; then ``%%distributed --nodes 2`` runs a cell on two ranks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .store.records import last_run, runs

if TYPE_CHECKING:
    from .ipython.magics import DistributedMagics
    from .ui.config_form import ConfigPanel as Panel

__all__ = [
    "ConfigPanel",
    "__version__",
    "last_run",
    "load_ipython_extension",
    "runs",
    "unload_ipython_extension",
]

_magics: DistributedMagics | None = None


def ConfigPanel(magics: DistributedMagics | None = None) -> Panel:
    """The settings form of ``%dtrain config``, for the loaded extension's magics."""
    magics = magics or _magics
    if magics is None:
        raise RuntimeError("load the extension first: %load_ext dtrain_magics")
    return magics._dtrain_config()  # type: ignore[no-any-return]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where JupyterLab finds the built front-end extension."""
    return [{"src": "labextension", "dest": "dtrain-magics"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """The server extension behind the lab extension's sidebar (``/dtrain/`` endpoints)."""
    return [{"module": "dtrain_magics.server"}]


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%%distributed`` and ``%dtrain`` (heavy imports happen on first use)."""
    global _magics
    from .ipython.magics import DistributedMagics, show_tracking_warnings
    from .ipython.transformer import await_distributed_cells
    from .store import diagnostics, kernel_state

    diagnostics.enable()
    kernel_state.forget_dead_kernels()
    if _magics is None or _magics.shell is not ipython:
        _magics = DistributedMagics(ipython)
    ipython.register_magics(_magics)
    if show_tracking_warnings not in ipython.events.callbacks["post_run_cell"]:
        ipython.events.register("post_run_cell", show_tracking_warnings)
    in_kernel = getattr(ipython, "kernel", None) is not None
    cleanup = ipython.input_transformers_cleanup
    if in_kernel and ipython.autoawait and await_distributed_cells not in cleanup:
        cleanup.append(await_distributed_cells)


def unload_ipython_extension(ipython: Any) -> None:
    """Stop the cluster this extension started."""
    global _magics
    from .ipython.magics import show_tracking_warnings
    from .ipython.transformer import await_distributed_cells

    if show_tracking_warnings in ipython.events.callbacks["post_run_cell"]:
        ipython.events.unregister("post_run_cell", show_tracking_warnings)
    if await_distributed_cells in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.remove(await_distributed_cells)
    if _magics is not None:
        _magics.cluster.stop()
        _magics = None
