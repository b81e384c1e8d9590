"""Rank-side metrics and progress, coalesced and published at most once a second.

``log`` and ``progress`` only append to a bounded buffer and compare a clock; a message to the
notebook goes out when 1 s has passed since the last one (and when the cell ends). Each message
carries every point logged since the previous one; if more than ``MAX_BUFFER`` points pile up
inside one interval, every other point is dropped (and counted), so a million calls cost bounded
memory and bounded messages.

Messages travel on ipyparallel's data channel (``datapub.publish_data``) under the keys
``dtrain-0``, ``dtrain-1``, ... so the notebook reads them in order and loses none.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from .collectives import clock as _clock

T = TypeVar("T")

# Seconds between messages. Each message wakes the engine's I/O thread, the controller and the
# notebook, which on a small machine share the cores with the ranks: on 2 busy cores it delays
# the steps around it by about 3 ms in all, and a delayed rank holds the others up in the next
# collective. Measured on 2 cores (benchmarks, throughput suite): twice a second cost 2.2% of
# the logged steps' time; once a second halves that, and the dashboard still moves every second.
INTERVAL = 1.0
MAX_BUFFER = 2048


def publish_data(data: dict[str, Any]) -> None:
    """Send ``data`` to the notebook on ipyparallel's data channel; nothing outside an engine
    (a script that reports progress also runs under plain ``mpiexec``)."""
    from IPython import get_ipython

    # set by ipyparallel's engine (``data_pub`` itself makes one, with a warning, anywhere)
    publisher = getattr(get_ipython(), "_data_pub", None)
    if publisher is not None:
        publisher.publish_data(data)


def _scalar(name: str, value: Any) -> Any:
    """``value`` as a float, or, for a tensor on a GPU, a copy of it read when the buffer is sent:
    reading it now would wait for the GPU at every ``dtrain.log``."""
    if getattr(value, "is_cuda", False):
        if value.numel() != 1:
            raise ValueError(f"dtrain.log: {name} has {value.numel()} elements; log a scalar.")
        return value.detach().clone()
    return float(value.item() if hasattr(value, "item") else value)


def _read_gpu_scalars(points: list[tuple[int, str, Any, float]]) -> list[Any]:
    """``points`` with the GPU scalars ``_scalar`` kept read as floats, in one copy from the
    GPU (one wait for it, not one per point)."""
    pending = [i for i, p in enumerate(points) if type(p[2]) is not float]
    if not pending:
        return points
    import torch

    tensors = [points[i][2].reshape(()).float() for i in pending]
    try:
        read = torch.stack(tensors).tolist()
    except RuntimeError:  # on several GPUs
        read = [t.item() for t in tensors]
    out = list(points)
    for i, value in zip(pending, read, strict=True):
        step, name, _, at = points[i]
        out[i] = (step, name, float(value), at)
    return out


class Telemetry:
    """One rank's metric buffer and progress state."""

    def __init__(self, publish: Callable[[dict[str, Any]], None] = publish_data) -> None:
        self._publish = publish
        self.reset()

    def reset(self) -> None:
        """Start a new cell: step counter, buffer and message sequence from zero."""
        self._points: list[tuple[int, str, Any, float]] = []  # float, or a GPU tensor
        self._dropped = 0
        self._step = 0
        self._progress: dict[str, Any] | None = None
        self._seq = 0
        self._last = 0.0
        self._dirty = False
        # step boundaries (a new step logged, else a progress iteration): how many, the time of
        # the last one and the rank's time waited in collectives then (the straggler view)
        self._logged: int | None = None
        self._marks = {"log": [0, 0.0, 0.0], "progress": [0, 0.0, 0.0]}

    def log(self, step: int | None = None, **scalars: Any) -> None:
        """Record scalar metrics for this rank at ``step`` (default: this rank's next step)."""
        if step is None:
            step = self._step
        self._step = step + 1
        now = time.time()
        if step != self._logged:
            self._logged = step
            mark = self._marks["log"]
            mark[0] += 1
            mark[1], mark[2] = now, _clock.waited
        points = self._points
        for name, value in scalars.items():
            points.append((step, name, _scalar(name, value), now))
        if len(points) > MAX_BUFFER:
            self._dropped += len(points) - len(points[::2])
            self._points = points[::2]
        self._dirty = True
        if now - self._last >= INTERVAL:
            self.flush()

    def progress(
        self, iterable: Iterable[T], total: int | None = None, desc: str | None = None
    ) -> Iterator[T]:
        """Iterate over ``iterable``, reporting this rank's progress (n, total, rate)."""
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        started = time.time()
        state: dict[str, Any] = {
            "n": 0,
            "total": total,
            "desc": desc or "",
            "started": started,
            "rate": 0.0,
            "done": False,
        }
        self._progress = state
        self._dirty = True
        n = 0
        mark = self._marks["progress"]
        for item in iterable:
            yield item
            n += 1
            state["n"] = n
            now = time.time()
            mark[0] += 1
            mark[1], mark[2] = now, _clock.waited
            if now - self._last >= INTERVAL:
                state["rate"] = n / max(now - started, 1e-9)
                self._dirty = True
                self.flush()
        state["rate"] = n / max(time.time() - started, 1e-9)
        state["done"] = True
        self._dirty = True
        self.flush()

    def flush(self) -> None:
        """Publish what was recorded since the last message (nothing if nothing changed)."""
        self._last = time.time()
        if not self._dirty:
            return
        payload = {
            "points": _read_gpu_scalars(self._points),
            "dropped": self._dropped,
            "progress": dict(self._progress) if self._progress else None,
            "timing": self._timing(),
        }
        self._points, self._dropped, self._dirty = [], 0, False
        self._publish({f"dtrain-{self._seq}": payload})
        self._seq += 1

    def _timing(self) -> list[Any] | None:
        """``[source, steps, time of the last step, seconds waited in collectives by then]``."""
        for source in ("log", "progress"):
            mark = self._marks[source]
            if mark[0]:
                return [source, *mark]
        return None


_telemetry = Telemetry()


def current() -> Telemetry:
    """This rank's telemetry."""
    return _telemetry


def install(shell: Any) -> None:
    """Reset before each cell and flush after it, on this rank's IPython shell (idempotent)."""
    events = shell.events
    if _reset_hook not in events.callbacks["pre_execute"]:
        events.register("pre_execute", _reset_hook)
        events.register("post_execute", _flush_hook)


def _reset_hook() -> None:
    _telemetry.reset()


def _flush_hook() -> None:
    _telemetry.flush()
