"""Save and load training state from the ranks: rank 0 writes atomically, every rank agrees.

``checkpoint`` writes on rank 0 only (a temporary file in the target's directory, fsync,
``os.replace``, fsync of the directory), so a crash at any moment leaves either the old file or
the new one, never a torn one; the other ranks wait for it and raise if it failed. A process
killed mid-write (MPI aborting the job after another rank died) leaves its temporary file; the
file names its host and process, and the next save or load on that host removes it once that
process is gone. ``load_checkpoint`` reads on rank 0 and broadcasts the bytes over MPI, so every
rank resumes from the same state. Both use mpi4py's ``COMM_WORLD`` and work with either backend.
"""

from __future__ import annotations

import io
import os
import socket
import tempfile
from typing import Any

from . import telemetry
from .collectives import mpi_wait
from .subset import world_comm

BROADCASTS = "dtrain-broadcasts"
"""The data key a rank publishes at the end of a cell that took part in rank 0's broadcasts
(``checkpoint``, ``load_checkpoint``): how many. A small broadcast leaves rank 0 at once, so
rank 0 alone (``if rank == 0: dtrain.checkpoint(...)``) finishes, and the other ranks would
take its message in their next call instead of their own; the notebook compares the counts
and has the ranks behind take what they missed (``take_missed``)."""
_broadcasts = 0


def _broadcast(comm: Any, obj: Any, name: str) -> Any:
    global _broadcasts
    with mpi_wait(name, "bcast"):
        received = comm.bcast(obj, root=0)
    # counted once done: an interrupt between the two leaves this rank short by one, and the
    # notebook's ``take_missed`` then waits for a message never sent, fails and restarts the
    # cluster; counted first, a rank interrupted before the call would hide a stale message
    _broadcasts += 1
    return received


def take_missed(count: int) -> None:
    """Take ``count`` broadcasts rank 0 made without this rank (sent already: no wait)."""
    from mpi4py import MPI

    for _ in range(count):
        MPI.COMM_WORLD.bcast(None, root=0)


def _before_cell() -> None:
    global _broadcasts
    _broadcasts = 0


def _after_cell() -> None:
    if _broadcasts:
        telemetry.publish_data({BROADCASTS: _broadcasts})


def install(shell: Any) -> None:
    """Count this rank's part in rank 0's broadcasts per cell (idempotent)."""
    if _before_cell not in shell.events.callbacks["pre_execute"]:
        shell.events.register("pre_execute", _before_cell)
        shell.events.register("post_execute", _after_cell)


def _temp_prefix(path: str) -> str:
    """The start of the names of ``path``'s temporary files: ``.NAME.``."""
    return f".{os.path.basename(path)}."


def remove_stale_temps(path: str) -> list[str]:
    """Remove the temporary files of ``path`` left by writers on this host that no longer run.

    A temporary file is named ``.NAME.HOST-PID.RANDOM.tmp``; files of other hosts (a shared
    file system), of live processes and of any other shape are left alone. Returns the removed.
    """
    import psutil

    path = os.path.abspath(path)
    directory, prefix, host = os.path.dirname(path), _temp_prefix(path), socket.gethostname()
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        writer, _, _random = name[len(prefix) : -len(".tmp")].rpartition(".")
        writer_host, _, pid = writer.rpartition("-")
        if writer_host != host or not pid.isdigit() or psutil.pid_exists(int(pid)):
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:  # another process cleaned it first
            continue
        removed.append(name)
    return removed


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save(obj)`` to ``path`` atomically and durably (this process only)."""
    import torch

    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    remove_stale_temps(path)
    prefix = f"{_temp_prefix(path)}{socket.gethostname()}-{os.getpid()}."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def checkpoint(obj: Any, path: str) -> None:
    """Save ``obj`` (e.g. ``{"step", "model", "optimizer"}``) to ``path`` from rank 0.

    Every rank must call it; it returns on all of them once the file is safely on disk. What
    this rank logged before it goes to the notebook first, so a rank that dies after the
    checkpoint loses none of the metrics the checkpoint covers.
    """
    comm = world_comm()
    telemetry.current().flush()
    error = None
    if comm.Get_rank() == 0:
        try:
            save_atomic(obj, path)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
    error = _broadcast(comm, error, "dtrain.checkpoint")
    if error is not None:
        raise RuntimeError(f"saving the checkpoint {path} failed on rank 0: {error}")


def load_checkpoint(path: str, map_location: Any = "cpu", weights_only: bool = True) -> Any:
    """The object saved at ``path``, read on rank 0 and sent to every rank; None if absent.

    ``weights_only`` (torch's safe loader, the default) refuses arbitrary pickled objects.
    """
    import torch

    comm = world_comm()
    message: tuple[str, Any] = ("missing", None)
    if comm.Get_rank() == 0:
        remove_stale_temps(path)
        if os.path.exists(path):
            try:
                with open(path, "rb") as f:
                    message = ("ok", f.read())
            except OSError as e:
                message = ("error", f"{type(e).__name__}: {e}")
    kind, payload = _broadcast(comm, message, "dtrain.load_checkpoint")
    if kind == "missing":
        return None
    if kind == "error":
        raise RuntimeError(f"reading the checkpoint {path} failed on rank 0: {payload}")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=weights_only)
