"""Which collective this rank waits in, and for how long it waited in all: for ``%dtrain where``
and the straggler view.

Horovod's collectives are asynchronous: a call enqueues the operation and returns a handle, and
``synchronize(handle)`` waits for it in C++ (``mpi_lib.horovod_torch_wait_and_clear``), for
``hvd.allreduce`` as for ``DistributedOptimizer.step``. Two thin wrappers cover all of them: the
enqueue functions of ``horovod.torch.mpi_ops`` (``_allreduce_async``, ``_broadcast_async``, ...)
note each handle's operation and the name Horovod gives it (``allreduce.<name>`` or
``allreduce.noname.<handle>``), and the wait notes which handle the main thread waits on, since
when, and adds the time spent there to this rank's total. ``torch.distributed``'s blocking
collectives (``dist.all_reduce``, ``dist.broadcast``, ...) are wrapped the same way, and the
package's own MPI calls mark their waits (``mpi_wait``). Each wrapper costs about a microsecond
per collective; nothing runs between collectives.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

HOROVOD_ENQUEUE = {
    "_allreduce_async": "allreduce",
    "_grouped_allreduce_async": "grouped_allreduce",
    "_allgather_async": "allgather",
    "_grouped_allgather_async": "grouped_allgather",
    "_broadcast_async": "broadcast",
    "_alltoall_async": "alltoall",
    "_reducescatter_async": "reducescatter",
    "_grouped_reducescatter_async": "grouped_reducescatter",
}
HOROVOD_DIRECT = {"horovod_torch_join": "join", "horovod_torch_barrier": "barrier"}
TORCH_COLLECTIVES = (
    "all_reduce",
    "broadcast",
    "all_gather",
    "all_gather_into_tensor",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "gather",
    "scatter",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "all_gather_object",
    "broadcast_object_list",
    "gather_object",
    "scatter_object_list",
)
PROCESS_SET = "process set "  # in a wait's detail: Horovod's, not the global one
MAX_PENDING = 4096  # handles enqueued and not yet waited on (a rank that only polls)


@dataclass
class Waiting:
    """The collective the main thread waits in."""

    op: str
    name: str
    since: float  # time.monotonic()
    detail: str = ""  # the reduction (Sum, Average, ...), and a Horovod process set
    backend: str = "horovod"  # or "torch" (torch.distributed), "mpi" (the package's own)
    subgroup: bool = False  # some of the ranks only (a process set, a torch group)


@dataclass
class CollectiveClock:
    """This rank's collectives: what is enqueued, what the main thread waits in, time waited."""

    waited: float = 0.0  # seconds spent waiting in collectives (this process, all cells)
    done: int = 0  # collectives waited for that finished
    last_done: float = 0.0  # time.monotonic() when the last one finished
    waiting: Waiting | None = None
    pending: dict[int, tuple[str, str, str]] = field(default_factory=dict)

    def enqueued(self, handle: int, op: str, name: str | None, detail: str = "") -> None:
        pending = self.pending
        if len(pending) >= MAX_PENDING:
            pending.clear()
        pending[handle] = (op, f"{op}.{name}" if name else f"{op}.noname.{handle}", detail)

    def finished(self, started: float) -> None:
        """The main thread's wait that began at ``started`` has ended (or raised)."""
        ended = time.monotonic()
        self.waiting = None
        self.waited += ended - started
        self.done += 1
        self.last_done = ended

    def names_pending(self) -> list[str]:
        """The Horovod names of the collectives enqueued and not yet waited on."""
        return [name for _, name, _ in list(self.pending.values())]


clock = CollectiveClock()
_installed: set[str] = set()
_lock = threading.Lock()
horovod_lock = threading.Lock()
"""Held around each ``hvd.shutdown()`` and ``hvd.init()`` of this process: the threads that
end a stuck wait (``subset``, ``interrupts``) and the idle suspension shut Horovod down beside
the main thread, and two threads in Horovod's shutdown at once both join its background thread
(the rank hung there, or aborted). The stuck wait fails as soon as that shutdown begins (it clears
the pending handles), before it ends: the main thread's reset waits for it here."""
_originals: list[tuple[Any, str, Any]] = []  # (object, attribute, what it was)


def shutdown_horovod() -> None:
    """``hvd.shutdown()`` under ``horovod_lock``, from whichever thread ends a wait."""
    import horovod.torch as hvd

    with horovod_lock:
        hvd.shutdown()


def _patch(obj: Any, attr: str, wrapper: Callable[..., Any]) -> None:
    _originals.append((obj, attr, getattr(obj, attr)))
    setattr(obj, attr, wrapper)


def _reduce_ops() -> dict[int, str]:
    from horovod.torch import mpi_ops

    names = ("Average", "Sum", "Adasum", "Min", "Max", "Product")
    return {getattr(mpi_ops, n): n for n in names if hasattr(mpi_ops, n)}


def _wrap_enqueue(original: Callable[..., Any], op: str, ops: dict[int, str]) -> Callable[..., Any]:
    params = list(inspect.signature(original).parameters)
    name_at = params.index("name")
    op_at = params.index("op") if "op" in params else None
    set_at = params.index("process_set") if "process_set" in params else None

    @functools.wraps(original)
    def enqueue(*args: Any, **kwargs: Any) -> Any:
        handle = original(*args, **kwargs)
        name = args[name_at] if len(args) > name_at else kwargs.get("name")
        detail = ""
        if op_at is not None:
            value = args[op_at] if len(args) > op_at else kwargs.get("op")
            detail = ops.get(value, "") if isinstance(value, int) else ""
        if set_at is not None:
            chosen = args[set_at] if len(args) > set_at else kwargs.get("process_set")
            number = getattr(chosen, "process_set_id", 0)
            if number:  # not the global set: some of the ranks
                detail = f"{detail} {PROCESS_SET}{number}".strip()
        clock.enqueued(handle, op, name, detail)
        return handle

    return enqueue


def _wrap_direct(original: Callable[..., Any], op: str) -> Callable[..., Any]:
    def enqueue(*args: Any, **kwargs: Any) -> Any:
        handle = original(*args, **kwargs)
        clock.enqueued(handle, op, None)
        return handle

    return enqueue


def _wait_and_clear(original: Callable[[int], None]) -> Callable[[int], None]:
    monotonic = time.monotonic

    def wait_and_clear(handle: int) -> None:
        op, name, detail = clock.pending.pop(handle, ("collective", f"handle {handle}", ""))
        started = monotonic()
        clock.waiting = Waiting(op, name, started, detail, subgroup=PROCESS_SET in detail)
        try:
            original(handle)
        finally:
            clock.finished(started)

    return wait_and_clear


WAIT_CODE_NAMES = ("wait_and_clear", "blocking")
"""Names of the wrappers' frames that stand for a wait in C++ (see ``interrupts.py``)."""


def install_horovod() -> None:
    """Wrap Horovod's enqueue and wait functions (once per process)."""
    with _lock:
        if "horovod" in _installed:
            return
        from horovod.torch import mpi_ops

        lib = mpi_ops.mpi_lib
        ops = _reduce_ops()
        for attr, op in HOROVOD_ENQUEUE.items():
            original = getattr(mpi_ops, attr, None)
            if original is not None and "name" in inspect.signature(original).parameters:
                _patch(mpi_ops, attr, _wrap_enqueue(original, op, ops))
        for attr, op in HOROVOD_DIRECT.items():
            original = getattr(lib, attr, None)
            if original is not None:
                _patch(lib, attr, _wrap_direct(original, op))
        wait = lib.horovod_torch_wait_and_clear
        _patch(lib, "horovod_torch_wait_and_clear", _wait_and_clear(wait))
        _installed.add("horovod")


def _wrap_torch(original: Callable[..., Any], op: str, dist: Any) -> Callable[..., Any]:
    monotonic = time.monotonic
    groups = dist.ProcessGroup

    @functools.wraps(original)
    def blocking(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("async_op"):
            return original(*args, **kwargs)
        started = monotonic()
        group = kwargs.get("group") or next((a for a in args if isinstance(a, groups)), None)
        some = group is not None and group is not dist.group.WORLD
        clock.waiting = Waiting(op, op, started, "a subgroup" if some else "", "torch", some)
        try:
            return original(*args, **kwargs)
        except BaseException as e:
            _release_group(e)
            raise
        finally:
            clock.finished(started)

    return blocking


def _release_group(error: BaseException) -> None:
    """Clear the finished frames of a collective's ``error`` and of the errors it arose from
    (an interrupt that waited for the collective to fail comes on top of its error). Torch's
    frames hold the process group (``group``, ``work``): kept by the error (IPython keeps the
    last one), they kept its connections open after ``destroy_process_group``, and a peer's wait
    for this rank never ended."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__


def install_torch() -> None:
    """Wrap ``torch.distributed``'s blocking collectives (once per process)."""
    with _lock:
        if "torch" in _installed:
            return
        import torch.distributed as dist

        for op in TORCH_COLLECTIVES:
            original = getattr(dist, op, None)
            if original is not None:
                _patch(dist, op, _wrap_torch(original, op, dist))
        _installed.add("torch")


def uninstall() -> None:
    """Put every wrapped function back (to measure what the wrappers cost)."""
    with _lock:
        while _originals:
            obj, attr, original = _originals.pop()
            setattr(obj, attr, original)
        _installed.clear()


@contextlib.contextmanager
def mpi_wait(name: str, op: str) -> Iterator[None]:
    """The main thread waits in one of the package's own MPI collectives (``dtrain.barrier``,
    checkpoints, the replica check), as the where report shows it."""
    started = time.monotonic()
    clock.waiting = Waiting(op, name, started, backend="mpi")
    try:
        yield
    finally:
        clock.finished(started)


def forget_pending() -> None:
    """The backend was reset: its handles start again."""
    clock.pending.clear()
    clock.waiting = None
