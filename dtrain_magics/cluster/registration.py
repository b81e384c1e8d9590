"""Waiting for a new cluster's engines to register: progress, the batch queue, and giving up
with the engines' own output when ``mpiexec`` exits or the start takes too long."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import ClusterStartError
from .launchers import LaunchSpec, Layout, get_launcher

Report = Callable[[str], None]
_OUTPUT_TAIL = 3000


def launcher_exited(launcher: Any) -> bool:
    """True once ``launcher``'s process (the controller, ``mpiexec``) has exited.

    ipyparallel's launchers wait on their process from a thread, which ends when it exits; the
    thread then sets ``state`` to ``"after"`` through the event loop, which does not run while
    a sync caller waits. Reading either costs nothing on a warm cell's path.
    """
    if launcher.state == "after":
        return True
    waiter = getattr(launcher, "_wait_thread", None)
    return launcher.state == "running" and waiter is not None and not waiter.is_alive()


def launchers_stopped(ipp_cluster: Any) -> bool:
    """True if the controller or mpiexec has exited."""
    return any(
        launcher_exited(launcher)
        for launcher in [ipp_cluster.controller, *ipp_cluster.engines.values()]
    )


def output_tail(ipp_cluster: Any) -> str:
    """The end of what the engines printed, for an error message."""
    parts = []
    for engine_set in ipp_cluster.engines.values():
        output = engine_set.get_output() or ""
        if output.strip():
            parts.append("engine output (tail):\n" + output[-_OUTPUT_TAIL:])
    return "\n".join(parts) or "(the engines printed nothing)"


def wait_for_engines(
    ipp_cluster: Any,
    client: Any,
    layout: Layout,
    spec: LaunchSpec,
    report: Report,
    timeout: float,
    abort: threading.Event,
) -> None:
    """Return once ``layout.ranks`` engines registered; raise ``ClusterStartError`` if they
    cannot, ``KeyboardInterrupt`` once ``abort`` is set (also while a batch job is queued).

    Registration is checked every 50 ms (the controller is local); the launcher asks the batch
    scheduler at most every few seconds however often ``pending`` and ``job_ended`` are called.
    """
    n = layout.ranks
    launcher = get_launcher(spec.launcher)
    engine_set = next(iter(ipp_cluster.engines.values()))
    deadline = time.monotonic() + timeout
    registered = -1
    pending_since: float | None = None
    job_note = getattr(launcher, "job_note", None)  # a batch job: what it asks for
    if job_note is not None:
        report(job_note(spec, engine_set))
    while True:
        if abort.is_set():
            raise KeyboardInterrupt("the start was interrupted")
        job_id = launcher.pending(engine_set)
        if job_id is not None:
            now = time.monotonic()
            pending_since = pending_since or now
            waited = now - pending_since
            report(f"Slurm job {job_id} is pending ({waited:.0f} s)")
            if waited > float(spec.get("slurm_pending_timeout", 300.0)):
                raise ClusterStartError(
                    f"the Slurm job {job_id} stayed pending for {waited:.0f} s and was cancelled; "
                    "check squeue and sinfo, or raise the pending timeout."
                )
            deadline = time.monotonic() + timeout  # counted once it runs
            time.sleep(1)
            continue
        count = len(client.ids)
        if count != registered:
            registered = count
            report(f"Starting {layout}: engines registered {count}/{n}")
        if count >= n:
            return
        if launcher.job_ended(engine_set):
            raise ClusterStartError(
                "the Slurm job ended before all engines registered.\n" + output_tail(ipp_cluster)
            )
        if launchers_stopped(ipp_cluster):
            raise ClusterStartError(
                f"mpiexec exited before all engines registered ({count}/{n}).\n"
                + output_tail(ipp_cluster)
            )
        if time.monotonic() > deadline:
            raise ClusterStartError(
                f"only {count}/{n} engines registered within {timeout:g} s; raise the start "
                "timeout (--start-timeout, or the form's) or look at the engine output below.\n"
                + output_tail(ipp_cluster)
            )
        time.sleep(0.05)
