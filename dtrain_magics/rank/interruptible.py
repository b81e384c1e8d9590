"""Make Horovod's blocking waits interruptible.

Horovod 0.28's ``synchronize`` waits in C++ (``horovod_torch_wait_and_clear``) without ever
returning to Python, so a SIGINT (the notebook's stop button, ``--timeout``, or another rank's
failure) cannot interrupt a rank blocked in a collective whose peer will never arrive. We wait
in Python instead, polling the handle with short sleeps; Python then raises
``KeyboardInterrupt`` as soon as the signal lands. Finished handles are released by Horovod's
own ``synchronize``, so results and errors are unchanged.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

_MODULES = (
    "horovod.torch",
    "horovod.torch.mpi_ops",
    "horovod.torch.functions",
    "horovod.torch.optimizer",
    "horovod.torch.sync_batch_norm",
)
# Longest sleep between polls. A rank wakes at most this long after its collective completes,
# and the other ranks then wait for it in the next one: 1 ms cost about 15% of the steps/s of a
# small model on 2 ranks (benchmarks/logging_overhead.py), 0.2 ms keeps that within noise.
_MAX_SLEEP = 0.0002


def _interruptible(original: Callable[[Any], Any], mpi_ops: Any) -> Callable[[Any], Any]:
    poll = mpi_ops.poll

    def synchronize(handle: Any) -> Any:
        # hvd.init() rebinds mpi_ops._handle_map, so look it up on every call
        if handle in mpi_ops._handle_map:
            delay = 0.00002
            while not poll(handle):
                time.sleep(delay)  # the signal check happens here
                delay = min(delay * 2, _MAX_SLEEP)
        return original(handle)

    synchronize.__doc__ = original.__doc__
    synchronize.__wrapped__ = original  # type: ignore[attr-defined]
    return synchronize


def make_horovod_interruptible() -> None:
    """Replace ``synchronize`` in Horovod's torch modules with an interruptible wait."""
    import horovod.torch.functions
    import horovod.torch.mpi_ops as mpi_ops
    import horovod.torch.optimizer
    import horovod.torch.sync_batch_norm  # noqa: F401

    if hasattr(mpi_ops.synchronize, "__wrapped__"):
        return
    patched = _interruptible(mpi_ops.synchronize, mpi_ops)
    for name in _MODULES:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "synchronize"):
            setattr(module, "synchronize", patched)  # noqa: B010 (module attribute)
