"""Rank-side compatibility check: a CUDA device needs a Horovod with GPU (NCCL) operations.

Without them Horovod hands CUDA device pointers to MPI, which crashes the rank (a segfault)
instead of failing the cell; this check turns that into one sentence before any collective.
"""

from __future__ import annotations

from typing import Any

FIX = "dtrain-magics install-horovod"


def horovod_device_problem(device_type: str, nccl_built: bool) -> str | None:
    """The sentence for a rank whose device Horovod cannot reduce on, or None if they fit."""
    if device_type == "cuda" and not nccl_built:
        return (
            "this rank's device is a CUDA GPU but its Horovod was built without GPU (NCCL) "
            f"operations; run `{FIX}` in this environment to rebuild Horovod for the installed "
            "torch, or run the cell with --device cpu."
        )
    return None


def check_horovod_device(device: Any) -> None:
    """Raise RuntimeError (one sentence) if this rank's Horovod cannot reduce on ``device``."""
    import horovod.torch as hvd

    problem = horovod_device_problem(device.type, bool(hvd.nccl_built()))
    if problem:
        raise RuntimeError(problem)


def check_backend_device(backend: str, device: Any) -> None:
    """Check ``device`` against the Horovod of a rank that runs the ``horovod`` backend."""
    if backend == "horovod":
        check_horovod_device(device)
