"""Starting the cluster for a run: in a worker thread the run awaits, so an interrupt stops it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable

from ..cluster.launchers import LaunchSpec, Layout
from ..cluster.training_cluster import Report, TrainingCluster
from ..errors import RunInterrupted

START_TICK = 0.5  # seconds between refreshes of the view while the cluster starts


async def ensure_cluster(
    cluster: TrainingCluster,
    layout: Layout,
    spec: LaunchSpec,
    report: Report,
    tick: Callable[[], None] | None = None,
) -> None:
    """Start or resize ``cluster`` in a worker thread the run awaits.

    Awaiting keeps an interrupt deliverable during the start: it sets the cluster's
    ``abort_start``, the start stops what it launched, and ``RunInterrupted`` is raised.
    Progress messages reach ``report`` on this (the notebook's) thread; ``tick`` is called
    every ``START_TICK`` seconds meanwhile (the view's elapsed time, the kernel's status).
    """
    if not cluster.needs_start(layout, spec):
        return
    loop = asyncio.get_running_loop()
    done: concurrent.futures.Future[bool] = concurrent.futures.Future()

    def forward(message: str) -> None:
        loop.call_soon_threadsafe(report, message)

    def start() -> None:
        try:
            done.set_result(cluster.ensure(layout, forward, spec))
        except BaseException as e:  # re-raised in the notebook's thread
            done.set_exception(e)

    worker = threading.Thread(target=start, name="dtrain-start", daemon=True)
    worker.start()
    started = asyncio.wrap_future(done)
    # shielded: an interrupt must not cancel the start midway, but ask it to stop
    shielded = asyncio.shield(started)
    shielded.add_done_callback(_taken)
    try:
        while True:
            finished, _ = await asyncio.wait({shielded}, timeout=START_TICK)
            if finished:
                shielded.result()  # the start's error; its KeyboardInterrupt: a Stop button's
                return
            if tick is not None:
                tick()
    except (KeyboardInterrupt, asyncio.CancelledError):
        cluster.abort_start.set()
        worker.join(timeout=60)
        if cluster.running:  # it had finished starting before it saw the interrupt
            cluster.stop(kill=True)
        raise RunInterrupted(
            "interrupted while the cluster was starting: it was stopped and none of its "
            "processes are left; the next cell starts a new one."
        ) from None


def _taken(future: asyncio.Future[bool]) -> None:
    """Take the start's error, so that asyncio logs no "exception was never retrieved"."""
    if not future.cancelled():
        future.exception()
