"""Following a cell's ranks to their end, and stopping them when it must end early.

``follow`` collects the ranks' outcomes until every rank is done, one fails, a Stop is asked or
a deadline passes, sleeping until a message arrives (``aio.Wakeup``). ``stop_ranks`` interrupts
the ranks still running, ends their ``torch.distributed`` waits, then resets the backend, or
restarts the cluster when they do not come back (or a rank died: MPI aborts the whole job).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..cluster.training_cluster import TrainingCluster
from .aio import Wakeup
from .outcome import Stop
from .watch import RankWatch

log = logging.getLogger(__name__)


async def follow(
    watch: RankWatch,
    wake: Wakeup,
    deadline: float | None,
    stop_on_failure: bool,
    stop_requested: Callable[[], bool] = lambda: False,
    interrupted: bool = False,
    until_fewer: int | None = None,
) -> Stop | None:
    """Collect outcomes until every rank is done (None), a rank fails, or the deadline; with
    ``until_fewer``, also until fewer ranks than that are pending (None)."""
    while True:
        failed = watch.poll(interrupted)
        if stop_on_failure and failed:
            return "failed"
        if watch.done or (until_fewer is not None and len(watch.pending) < until_fewer):
            return None
        if stop_on_failure and stop_requested():
            return "interrupted"
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return "timeout"
        wait = watch.next_wake(now)
        if deadline is not None:
            wait = min(wait, deadline - now)
        await wake.wait(wait)


async def _end_torch_waits(
    cluster: TrainingCluster, watch: RankWatch, wake: Wakeup, deadline: float, after: float = 0.5
) -> None:
    """From ``after`` seconds after an interrupt until ``deadline``: whenever ranks have stopped
    while others still run, the stopped ones drop their process group. That ends their peers'
    ``torch.distributed`` waits (gloo), which no interrupt ends. A rank inside a long torch op
    stops only when it returns: one look, at ``after``, missed it (4 of 6)."""
    await follow(watch, wake, time.monotonic() + after, stop_on_failure=False, interrupted=True)
    dropped: set[int] = set()
    while watch.pending and time.monotonic() < deadline:
        pending = watch.pending
        fresh = [r for r in range(len(cluster.engines)) if r not in pending and r not in dropped]
        if fresh:
            cluster.backends.abandon(cluster.view(fresh))
            dropped.update(fresh)
        await follow(watch, wake, deadline, False, interrupted=True, until_fewer=len(watch.pending))


async def stop_ranks(
    cluster: TrainingCluster,
    watch: RankWatch,
    wake: Wakeup,
    grace: float,
    restart: bool = False,
    start_again: bool = True,
) -> bool:
    """Interrupt every running rank and give them ``grace`` seconds, then reset the backend;
    restart the cluster if the ranks do not come back, or at once with ``restart`` (a rank
    died: MPI aborts the job; without ``start_again``, or if it was started elsewhere, it is only
    stopped). Returns True if the cluster was stopped."""
    pending = watch.pending
    responsive = not restart
    if pending and responsive and cluster.running:
        try:
            cluster.interrupt(pending)
            deadline = time.monotonic() + grace
            if cluster.backends.name == "torch":
                await _end_torch_waits(cluster, watch, wake, deadline)
            await follow(watch, wake, deadline, stop_on_failure=False, interrupted=True)
        except (KeyboardInterrupt, asyncio.CancelledError):  # a second interrupt: stop waiting
            pass
        except Exception:
            log.debug("interrupting the ranks failed", exc_info=True)
            responsive = False
    watch.kill_pending()
    stopped = all(o.status != "killed" for o in watch.outcomes.values())
    if responsive and stopped and cluster.reset_ranks():
        return False
    layout = cluster.layout
    cluster.stop()  # a cluster started elsewhere: only disconnected, not to be waited for again
    if layout is not None and start_again and cluster.owns_processes:
        cluster.start(layout)
    return True
