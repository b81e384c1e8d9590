"""The training cluster: one ipyparallel controller and one MPI engine per rank.

``TrainingCluster`` owns the cluster's whole life: start (with progress and a timeout), reuse,
resize, interrupt, stop (verified against the process table) and restart. The magics, the
configuration form and the tests all drive it directly.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from . import kernel_state, security, watchdog
from .errors import ClusterStartError
from .launchers import LAUNCHERS, LaunchSpec, Layout, launch_kwargs, slurm_job_state

Report = Callable[[str], None]

_OUTPUT_TAIL = 3000
_live: weakref.WeakSet[TrainingCluster] = weakref.WeakSet()


def _quiet(_: str) -> None:
    pass


def _describe_rank() -> dict[str, Any]:
    """Runs on an engine: its MPI rank and process facts."""
    import os
    import socket

    from mpi4py import MPI

    return {"rank": MPI.COMM_WORLD.Get_rank(), "pid": os.getpid(), "host": socket.gethostname()}


@dataclass(frozen=True)
class RankEngine:
    """Where a rank lives: its ipyparallel engine id and its process."""

    rank: int
    engine_id: int
    pid: int
    host: str


class TrainingCluster:
    """An ipyparallel cluster whose engines are the ranks of one MPI job.

    Parameters
    ----------
    launcher
        How engines start; ``"local"`` runs ``mpiexec`` on this host, listening on loopback only.
    start_timeout
        Seconds to wait for every engine to register before giving up.
    profile
        The IPython profile holding the cluster's connection files.
    """

    def __init__(
        self,
        launcher: str = "local",
        start_timeout: float = 120.0,
        profile: str = "dtrain",
        spec: LaunchSpec | None = None,
    ) -> None:
        if launcher not in LAUNCHERS:
            raise ValueError(
                f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}."
            )
        self.spec = spec or LaunchSpec(launcher=launcher)
        self.start_timeout = start_timeout
        self.profile = profile
        self.layout: Layout | None = None
        self.engines: list[RankEngine] = []
        self.backend_state: tuple[Any, ...] | None = None
        self.device: str | None = None
        self._cluster: Any = None
        self._client: Any = None
        self._pids: set[int] = set()
        self._external = False  # connected to a cluster we did not start (launcher "profile")
        # set from another thread to give up a start in progress (the notebook was interrupted)
        self.abort_start = threading.Event()
        self._listeners: list[weakref.WeakMethod[Any]] = []
        _live.add(self)

    @property
    def launcher(self) -> str:
        return self.spec.launcher

    # -- state -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the controller and every engine are up."""
        if self._client is None:
            return False
        if self._external:
            return len(self._client.ids) >= len(self.engines)
        if self._cluster is None or self._launchers_stopped():
            return False
        return len(self._client.ids) >= len(self.engines)

    @property
    def client(self) -> Any:
        """The connected ``ipyparallel.Client``."""
        if self._client is None:
            raise RuntimeError("the cluster is not running.")
        return self._client

    @property
    def cluster_id(self) -> str | None:
        if self._external:
            return self.spec.cluster_id or None
        return None if self._cluster is None else str(self._cluster.cluster_id)

    def engine_id(self, rank: int) -> int:
        """The engine id of ``rank``."""
        return self.engines[rank].engine_id

    def view(self, ranks: list[int] | None = None) -> Any:
        """A blocking ``DirectView`` on ``ranks`` (all by default), in rank order."""
        ranks = list(range(len(self.engines))) if ranks is None else ranks
        view = self.client[[self.engine_id(r) for r in ranks]]
        view.block = True
        return view

    def status(self, ask_controller: bool = True) -> dict[str, Any]:
        """A summary: launcher, layout, state, engines registered and busy.

        ``ask_controller=False`` leaves out the controller's queue counts (no round trip).
        """
        started = self._cluster is not None or self._external
        state = "running" if self.running else ("broken" if started else "stopped")
        info: dict[str, Any] = {
            "launcher": self.launcher,
            "state": state,
            "cluster_id": self.cluster_id,
            "ranks": self.layout.ranks if self.layout else 0,
            "nodes": self.layout.nodes if self.layout else 0,
            "procs_per_node": self.layout.procs_per_node if self.layout else 0,
        }
        if self._client is not None:
            info["engines_registered"] = len(self._client.ids)
            if not ask_controller:
                return info
            try:
                if not self._client.outstanding:  # nothing of ours in flight: the controller's
                    info["busy"] = 0  # counts may still lag behind a reply we already have
                    return info
                queues = self._client.queue_status()
                busy = sum(
                    1
                    for k, v in queues.items()
                    if k != "unassigned" and (v.get("queue") or v.get("tasks"))
                )
                info["busy"] = busy
            except Exception:
                info["busy"] = None
        return info

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: controller, mpiexec, engines and their children."""
        found: dict[int, psutil.Process] = {}
        for pid in list(self._pids):
            try:
                proc = psutil.Process(pid)
                found[pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
            except psutil.NoSuchProcess:
                continue
        return [p for p in found.values() if _alive(p)]

    # -- lifecycle ---------------------------------------------------------------------------

    def ensure(
        self, layout: Layout, report: Report = _quiet, spec: LaunchSpec | None = None
    ) -> bool:
        """Make sure a cluster of ``layout`` started by ``spec`` is running; True if (re)started."""
        spec = spec or self.spec
        if self.running and spec == self.spec and (self._external or self.layout == layout):
            return False
        if self._cluster is not None or self._external:
            if spec != self.spec and self.running:
                report(
                    f"Switching from the {self.spec.launcher} launcher to {spec.launcher}: "
                    "restarting the cluster."
                )
            elif self.layout != layout and self.running:
                report(f"Resizing the cluster from {self.layout} to {layout}: restarting it.")
            elif not self.running:
                report(
                    "The cluster is no longer running (a rank or the controller exited): "
                    "starting a new one."
                )
            self.stop()
        self.spec = spec
        self.start(layout, report)
        return True

    def start(self, layout: Layout, report: Report = _quiet) -> None:
        """Start a controller and ``layout.ranks`` engines under mpiexec and wait for them."""
        if self._cluster is not None or self._external:
            raise RuntimeError("the cluster is already started; stop it first.")
        import ipyparallel as ipp

        self.backend_state = None
        if self.spec.launcher == "profile":
            self._connect(report)
            self.publish_state()
            return
        kwargs = launch_kwargs(self.spec, layout)
        self.layout = layout
        self._cluster = ipp.Cluster(
            profile=self.profile, log_level=logging.WARNING, shutdown_atexit=True, **kwargs
        )
        try:
            self._start_and_wait(layout, report)
        except BaseException:
            self.stop()
            raise
        self.publish_state()

    def _start_and_wait(self, layout: Layout, report: Report) -> None:
        self.abort_start.clear()
        n = layout.ranks
        deadline = time.monotonic() + self.start_timeout
        report(f"Starting {layout}: controller")
        self._cluster.start_controller_sync()
        self._track(self._cluster.controller)
        self._cluster.start_engines_sync(n)
        for engine_set in self._cluster.engines.values():
            self._track(engine_set)
        watchdog.guard(self, self._pids)  # kills these trees if the kernel dies
        self._client = self._cluster.connect_client_sync()
        registered = -1
        pending_since = None
        while True:
            if self.abort_start.is_set():  # also while a Slurm job waits in the queue
                raise KeyboardInterrupt("the start was interrupted")
            if self.spec.launcher == "slurm":
                pending_since = self._check_slurm_job(report, pending_since)
                if pending_since is not None:
                    deadline = time.monotonic() + self.start_timeout  # counted once it runs
                    time.sleep(1)
                    continue
            count = len(self._client.ids)
            if count != registered:
                registered = count
                report(f"Starting {layout}: engines registered {count}/{n}")
            if count >= n:
                break
            if self._launchers_stopped():
                raise ClusterStartError(
                    f"mpiexec exited before all engines registered ({count}/{n}).\n"
                    + self._output_tail()
                )
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"only {count}/{n} engines registered within {self.start_timeout:.0f} s; "
                    "raise the start timeout or look at the engine output below.\n"
                    + self._output_tail()
                )
            time.sleep(0.1)
        self._describe_engines()
        security.restrict_files(self._cluster.profile_dir)
        report(f"Cluster ready: {layout}, cluster id {self.cluster_id}")

    def _describe_engines(self) -> None:
        ids = list(self._client.ids)  # fixed first: engines may still be registering
        described = self._client[ids].apply_sync(_describe_rank)
        self.engines = sorted(
            (
                RankEngine(d["rank"], eid, d["pid"], d["host"])
                for eid, d in zip(ids, described, strict=True)
            ),
            key=lambda e: e.rank,
        )
        self._pids.update(e.pid for e in self.engines)

    def _connect(self, report: Report) -> None:
        """Connect to a running cluster by profile or cluster id (launcher ``profile``)."""
        import ipyparallel as ipp

        spec = self.spec
        where = f"profile {spec.profile or 'default'}"
        if spec.cluster_id:
            where += f", cluster id {spec.cluster_id}"
        report(f"Connecting to the running cluster ({where})")
        try:
            client = ipp.Client(
                profile=spec.profile or None,
                cluster_id=spec.cluster_id or None,
                timeout=min(self.start_timeout, 30),
            )
            client.wait_for_engines(1, timeout=self.start_timeout)
            _wait_until_steady(client, settle=2.0, timeout=self.start_timeout)
        except Exception as e:
            raise ClusterStartError(
                f"could not connect to a running ipyparallel cluster ({where}): {e}; start it "
                "with ipcluster or pick another profile or cluster id."
            ) from None
        self._client, self._external = client, True
        self._describe_engines()
        self.layout = Layout(len(self.engines), 1)
        report(f"Connected: {len(self.engines)} engines ({where})")

    def _check_slurm_job(self, report: Report, pending_since: float | None) -> float | None:
        """Watch the engines' Slurm job; return since when it is pending (None once it runs)."""
        engine_set = next(iter(self._cluster.engines.values()))
        job_id = getattr(engine_set, "job_id", None)
        state = slurm_job_state(job_id) if job_id else "PENDING"
        if state == "PENDING":
            now = time.monotonic()
            pending_since = pending_since or now
            waited = now - pending_since
            report(f"Slurm job {job_id} is pending ({waited:.0f} s)")
            if waited > self.spec.slurm.pending_timeout:
                raise ClusterStartError(
                    f"the Slurm job {job_id} stayed pending for {waited:.0f} s and was cancelled; "
                    "check squeue and sinfo, or raise the pending timeout."
                )
            return pending_since
        assert self.layout is not None
        if not state and len(self._client.ids) < self.layout.ranks:
            raise ClusterStartError(
                f"the Slurm job {job_id} ended before all engines registered.\n"
                + self._output_tail()
            )
        return None

    def stop(self) -> None:
        """Stop the cluster and make sure none of its processes are left."""
        watchdog.release(self)
        cluster, client, external = self._cluster, self._client, self._external
        self._cluster = self._client = None
        self._external = False
        self.engines = []
        self.backend_state = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if cluster is not None:
            self._pids.update(p.pid for p in self.processes())
            try:
                cluster.stop_cluster_sync()
            except Exception as e:  # still reap below
                logging.getLogger(__name__).debug("stop_cluster failed: %s", e)
        if external:  # never stop a cluster we only connected to
            self._pids.clear()
        else:
            self._reap()
        self.layout = None
        self.publish_state()

    def publish_state(self, activity: str | None = None, run_id: str | None = None) -> None:
        """Write this cluster's state where the lab extension's server reads it, and tell
        the listeners (the ``%dtrain config`` form's status line) when on the main thread."""
        status = self.status(ask_controller=False)
        kernel_state.publish(status, activity, run_id)
        if threading.current_thread() is not threading.main_thread():
            return  # widgets are updated from the kernel's main thread only
        status["state"] = kernel_state.cluster_state(status, activity)
        for ref in list(self._listeners):
            listener = ref()
            if listener is None:
                self._listeners.remove(ref)
                continue
            with contextlib.suppress(Exception):
                listener(status)

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call ``listener(status)`` on every state change (held weakly: a bound method)."""
        self._listeners.append(weakref.WeakMethod(listener))

    def restart(self, report: Report = _quiet) -> None:
        """Stop and start again with the same layout."""
        layout = self.layout
        if layout is None:
            raise RuntimeError("the cluster has not been started; there is nothing to restart.")
        self.stop()
        self.start(layout, report)

    def interrupt(self, ranks: list[int] | None = None) -> None:
        """Send SIGINT to ``ranks`` (all by default), like the notebook's stop button."""
        targets = [
            self.engine_id(r) for r in (ranks if ranks is not None else range(len(self.engines)))
        ]
        if targets:
            self.client.send_signal(signal.SIGINT, targets=targets, block=True)

    def __enter__(self) -> TrainingCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers -----------------------------------------------------------------------------

    def _track(self, launcher: Any) -> None:
        pid = getattr(launcher, "pid", None)
        if pid:
            self._pids.add(int(pid))

    def _launchers_stopped(self) -> bool:
        """True if the controller or mpiexec has exited (checked on the process itself)."""
        cluster = self._cluster
        for launcher in [cluster.controller, *cluster.engines.values()]:
            proc = getattr(launcher, "process", None)
            if proc is not None and not _alive(proc):
                return True
        return False

    def _output_tail(self) -> str:
        parts = []
        for engine_set in self._cluster.engines.values():
            output = engine_set.get_output() or ""
            if output.strip():
                parts.append("engine output (tail):\n" + output[-_OUTPUT_TAIL:])
        return "\n".join(parts) or "(the engines printed nothing)"

    def _reap(self, timeout: float = 10.0) -> None:
        procs = self.processes()
        if procs:
            _, alive = psutil.wait_procs(procs, timeout=timeout)
            for proc in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            psutil.wait_procs(alive, timeout=5)
        self._pids.clear()


def _wait_until_steady(client: Any, settle: float, timeout: float) -> None:
    """Wait until no engine has registered for ``settle`` seconds (a cluster we did not start
    tells us nothing about how many engines are on their way)."""
    deadline = time.monotonic() + timeout
    count, since = len(client.ids), time.monotonic()
    while time.monotonic() - since < settle and time.monotonic() < deadline:
        time.sleep(0.1)
        if len(client.ids) != count:
            count, since = len(client.ids), time.monotonic()


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@atexit.register
def _stop_all() -> None:
    for cluster in list(_live):
        cluster.stop()
