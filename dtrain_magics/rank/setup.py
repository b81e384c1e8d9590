"""Initialise a rank for a cell: backend, device, and the names bound in its namespace."""

from __future__ import annotations

import logging
import os
import socket
import warnings
from typing import Any

from . import collectives, idle, interrupts, subset, where
from . import rank_context as _context
from .backends import Backend, make_backend
from .checkpoint import install as count_broadcasts
from .compat import check_backend_device
from .devices import resolve_device
from .world import place

_backend: Backend | None = None
_bound: set[str] = set()


def init_rank(
    backend: str,
    kind: str,
    procs_per_node: int,
    simulate_nodes: bool,
    rendezvous: str | None = None,
    own_engine: bool = False,
) -> dict[str, Any]:
    """Initialise ``backend`` on this rank and bind ``hvd``/``dist``, ``rank``, ``local_rank``,
    ``size``, ``device`` and ``dtrain`` in the rank's namespace.

    ``kind``: ``cpu`` or ``cuda``, chosen for every rank (``cluster/devices.py``).
    ``simulate_nodes`` treats consecutive blocks of ``procs_per_node`` ranks as one node, for a
    local cluster on CPUs whose ranks all share this host (on GPUs ``local_rank`` stays the
    rank's index on its host, the index of its GPU where the ranks see all of the host's);
    ``rendezvous`` is the torch backend's address on rank 0 (``backends.rendezvous_address``);
    ``own_engine``: the magic started this engine, so its log is the magic's to tune
    (``quiet_requests``).

    Returns a picklable summary.
    """
    global _backend
    from IPython import get_ipython

    import dtrain_magics.rank as dtrain

    from .telemetry import install

    shell = get_ipython()
    ns: dict[str, Any] = shell.user_ns if shell is not None else {}
    if shell is not None:
        install(shell)
        interrupts.ignore_after_cell(shell)
        subset.install(shell)
        where.install(shell)
        count_broadcasts(shell)
        # a cell's sys.exit() fails it on the rank; IPython's hint for a console is not for it
        warnings.filterwarnings("ignore", "To exit: use 'exit', 'quit'", UserWarning)
        if backend == "horovod":
            idle.install(shell, suspend=kind != "cuda")
        if own_engine:
            quiet_requests(shell)
    # a torch process group is made for one device kind (gloo on CPU, NCCL on CUDA)
    if _backend is not None and (_backend.name, _backend.kind) != (backend, kind):
        shutdown_rank()
        for name in _bound:
            ns.pop(name, None)

    here = place()
    torch_device = resolve_device(kind, here.host_rank)
    check_backend_device(backend, torch_device)
    _backend = make_backend(backend, torch_device, rendezvous)
    rank, size, names = _backend.init()
    if simulate_nodes and kind != "cuda":
        local_rank, local_size = rank % procs_per_node, procs_per_node
    else:
        local_rank, local_size = here.host_rank, here.host_size
    ctx = _context.RankContext(
        rank=rank,
        size=size,
        local_rank=local_rank,
        local_size=local_size,
        backend=backend,
        device=torch_device,
        hostname=socket.gethostname(),
    )
    _context.set_current(ctx)
    _set_torchrun_environment(ctx if backend == "torch" else None)
    names.update(rank=rank, size=size, local_rank=local_rank, device=torch_device, dtrain=dtrain)
    ns.update(names)
    _bound.update(names)
    return {
        "rank": rank,
        "size": size,
        "local_rank": local_rank,
        "device": str(torch_device),
        "hostname": ctx.hostname,
        "pid": os.getpid(),
        "versions": _versions(),
    }


def quiet_requests(shell: Any) -> None:
    """Keep only warnings and errors in the engine's log from now on, if it logs at ipyparallel's
    default level (INFO).

    ipyparallel's engine logs a line for every request it handles ("Handling execute_request:
    ...") to its stderr, which ``mpiexec`` copies into its output file: a millisecond of every
    warm cell on a small machine, and a file that grows with every cell. Its start-up lines,
    written by now, stay; so does a DEBUG log asked for on purpose (``c.IPEngine.log_level``
    in the profile's ``ipengine_config.py``, or ``--log-level`` in the engines' arguments).
    """
    log = getattr(getattr(shell, "kernel", None), "log", None)
    if log is not None and _written_level(log) == logging.INFO:
        log.setLevel(logging.WARNING)


def _written_level(log: logging.Logger) -> int:
    """The lowest level of what ``log`` writes out: traitlets leaves an application's loggers at
    DEBUG and gives their handlers the ``log_level`` asked for."""
    handlers: list[logging.Handler] = []
    node: logging.Logger | None = log
    while node is not None:
        handlers += node.handlers
        node = node.parent if node.propagate else None
    lowest = min((h.level for h in handlers), default=logging.NOTSET)
    return max(log.getEffectiveLevel(), lowest)


def _versions() -> dict[str, str | None]:
    """Python, torch and Horovod as this rank runs them (what a tracked run records), as plain
    strings: ``torch.__version__`` is a ``TorchVersion``, and unpickling one in the notebook's
    kernel imports torch there (1.5 s of the first cell, and its memory, for nothing)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        horovod: str | None = version("horovod")
    except PackageNotFoundError:
        horovod = None
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "horovod": horovod,
    }


def reset_rank(rendezvous: str | None = None) -> None:
    """Reset the backend after a failed or interrupted cell (aborted collectives);
    ``rendezvous``: a new address for the torch backend's."""
    collectives.forget_pending()
    if _backend is not None:
        _backend.reset(rendezvous)


def abandon_rank() -> None:
    """Drop the backend's connections so that peers waiting in a collective get an error;
    ``reset_rank`` connects again."""
    if _backend is not None:
        _backend.shutdown()


def shutdown_rank() -> None:
    """Shut the backend down on this rank."""
    global _backend
    if _backend is not None:
        _backend.shutdown()
        _backend = None
    _context.set_current(None)
    _set_torchrun_environment(None)


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
_torchrun_set = False


def _set_torchrun_environment(ctx: _context.RankContext | None) -> None:
    """Set what ``torchrun`` sets for a script that reads it (``int(os.environ["LOCAL_RANK"])``)
    under the torch backend; remove what this set before otherwise."""
    global _torchrun_set
    if ctx is not None:
        values = (ctx.rank, ctx.size, ctx.local_rank, ctx.local_size)
        os.environ.update(zip(TORCHRUN_VARIABLES, map(str, values), strict=True))
    elif _torchrun_set:
        for name in TORCHRUN_VARIABLES:
            os.environ.pop(name, None)
    _torchrun_set = ctx is not None
