"""The training cluster: one ipyparallel controller and one MPI engine per rank.

``TrainingCluster`` owns the cluster's whole life: start (with progress and a timeout), reuse,
resize, interrupt, stop (verified against the process table) and restart, and the backend its
ranks run. The magics, the configuration form and the tests all drive it directly.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

import psutil

from ..errors import ClusterStartError, RankError
from ..install.mpi_flavours import is_hydra
from ..store import diagnostics, kernel_state
from ..store.kernel_state import Activity
from ..store.schema import ClusterRecord, ClusterStatus
from . import controller, engine, mpiexec_output, security, watchdog
from .exit_order import ExitOrder
from .launchers import LaunchSpec, Layout, get_launcher
from .launchers.base import check_horovod_build, find_supported_mpi
from .listeners import StateListeners
from .processes import kill_trees, trees
from .ranks import BackendKey, RankBackends, RankEngine, describe, local_pids, signal_engines
from .registration import launcher_exited, launchers_stopped, wait_for_engines

Report = Callable[[str], None]
log = logging.getLogger(__name__)


def quiet(_: str) -> None:
    """A ``Report`` that shows nothing."""


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
        get_launcher(launcher)  # unknown names fail here
        self.spec = spec or LaunchSpec(launcher=launcher)
        self.start_timeout = start_timeout
        self.profile = profile
        self.layout: Layout | None = None
        self.engines: list[RankEngine] = []
        self.backends = RankBackends()
        self._cluster: Any = None
        self._client: Any = None
        self._pids: set[int] = set()
        self.exit_order: ExitOrder | None = None  # which engine here ended first
        self.hydra = False  # its mpiexec is MPICH's, which reports a rank's exit code at the end
        self._connected = False  # to a cluster we did not start (a launcher owning no processes)
        # set from another thread to give up a start in progress (the notebook was interrupted)
        self.abort_start = threading.Event()
        self._listeners = StateListeners()
        watchdog.stop_at_exit(self)

    @property
    def launcher(self) -> str:
        return self.spec.launcher

    @property
    def owns_processes(self) -> bool:
        return get_launcher(self.launcher).owns_processes

    # -- state -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the controller and every engine are up."""
        if self._client is None:
            return False
        if not self._connected and (self._cluster is None or launchers_stopped(self._cluster)):
            return False
        return len(self._client.ids) >= len(self.engines)

    @property
    def client(self) -> Any:
        """The connected ``ipyparallel.Client`` (a ``NotifyingClient``)."""
        if self._client is None:
            raise RuntimeError("the cluster is not running.")
        return self._client

    @property
    def cluster_id(self) -> str | None:
        if self._connected:
            return self.spec.get("cluster_id") or None
        return None if self._cluster is None else str(self._cluster.cluster_id)

    @property
    def device(self) -> str | None:
        """The ranks' devices, as their initialisation reported them."""
        return self.backends.device

    def engine_id(self, rank: int) -> int:
        """The engine id of ``rank``."""
        return self.engines[rank].engine_id

    def view(self, ranks: list[int] | None = None) -> Any:
        """A blocking ``DirectView`` on ``ranks`` (all by default), in rank order."""
        ranks = list(range(len(self.engines))) if ranks is None else ranks
        view = self.client[[self.engine_id(r) for r in ranks]]
        view.block = True
        return view

    def rank_view(self, rank: int) -> Any:
        """A blocking ``DirectView`` on ``rank`` alone (results are that rank's, not lists)."""
        view = self.client[self.engine_id(rank)]
        view.block = True
        return view

    def status(self, ask_controller: bool = True) -> ClusterStatus:
        """A summary: launcher, layout, state, engines registered and busy (the controller's
        queue counts, a round trip, unless ``ask_controller`` is False)."""
        started = self._cluster is not None or self._connected
        info: ClusterStatus = {
            "launcher": self.launcher,
            "state": "running" if self.running else ("broken" if started else "stopped"),
            "cluster_id": self.cluster_id,
            "ranks": self.layout.ranks if self.layout else 0,
            "nodes": self.layout.nodes if self.layout else 0,
            "procs_per_node": self.layout.procs_per_node if self.layout else 0,
        }
        if self._client is None:
            return info
        info["engines_registered"] = len(self._client.ids)
        if ask_controller:
            info["busy"] = self._client.busy_engines()
        return info

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: controller, mpiexec, engines and their children."""
        return trees(self._pids)

    # -- lifecycle ---------------------------------------------------------------------------

    def needs_start(self, layout: Layout, spec: LaunchSpec | None = None) -> bool:
        """True unless a cluster of ``layout`` started by ``spec`` is running.

        A launcher that owns no processes (``profile``) takes the cluster as it is.
        """
        spec = spec or self.spec
        same_layout = self._connected or self.layout == layout
        return not (self.running and spec == self.spec and same_layout)

    def ensure(
        self, layout: Layout, report: Report = quiet, spec: LaunchSpec | None = None
    ) -> bool:
        """Make sure a cluster of ``layout`` started by ``spec`` is running; True if (re)started."""
        spec = spec or self.spec
        if not self.needs_start(layout, spec):
            return False
        same_layout = self._connected or self.layout == layout
        if self._cluster is not None or self._connected:
            if spec != self.spec and self.running:
                report(
                    f"Switching from the {self.spec.launcher} launcher to {spec.launcher}: "
                    "restarting the cluster."
                )
            elif not same_layout and self.running:
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

    def start(self, layout: Layout, report: Report = quiet) -> None:
        """Start a controller and ``layout.ranks`` engines (or connect) and wait for them."""
        if self._cluster is not None or self._connected:
            raise RuntimeError("the cluster is already started; stop it first.")
        self.backends.forget()
        launcher = get_launcher(self.launcher)
        self.hydra = False
        if not launcher.owns_processes:
            self._connect(report)
            self.publish_state()
            return
        import ipyparallel as ipp

        hydra = is_hydra(find_supported_mpi())
        kwargs = launcher.cluster_kwargs(self.spec, layout)
        kwargs["config"].LocalControllerLauncher.controller_cmd = controller.command()
        kwargs["config"].EngineLauncher.engine_cmd = engine.command()
        self.layout, self.hydra = layout, hydra
        self._cluster = ipp.Cluster(
            profile=self.profile,
            # this kernel's diagnostics log, not the cell: ipyparallel prints the engines' whole
            # log when it stops a set that exits with an error; the runner reports deaths itself
            log=diagnostics.library_log("ipyparallel"),
            shutdown_atexit=True,
            # engines start with the controller and wait for its connection file themselves
            send_engines_connection_env=False,
            # the hub announces an engine once its heart beats: at ipyparallel's default period
            # (3 s) that is most of a warm start's wait; it also notices a dead engine sooner
            controller_args=["--HeartMonitor.period=500"],
            **kwargs,
        )
        try:
            self._start_and_wait(layout, report)
        except BaseException:
            self.stop(kill=True)
            raise
        self.publish_state()

    def _start_and_wait(self, layout: Layout, report: Report) -> None:
        from .client import connect

        self.abort_start.clear()
        report(f"Starting {layout}: controller")
        self._cluster.start_controller_sync()
        self._track(self._cluster.controller)
        self._cluster.start_engines_sync(layout.ranks)
        for engine_set in self._cluster.engines.values():
            self._track(engine_set)
        watchdog.guard(self, self._pids, watchdog.batch_jobs(self._cluster))  # if the kernel dies
        self._client = connect(self._cluster)
        wait_for_engines(
            self._cluster,
            self._client,
            layout,
            self.spec,
            report,
            self.start_timeout,
            self.abort_start,
        )
        self.engines = describe(self._client)
        self._pids.update(local_pids(self.engines))  # never another host's pid
        self.exit_order = ExitOrder(self.engines)
        security.restrict_files(self._cluster.profile_dir)
        report(f"Cluster ready: {layout}, cluster id {self.cluster_id}")

    def _connect(self, report: Report) -> None:
        """Connect to a running cluster (a launcher that owns no processes)."""
        from .launchers.profile import where

        report(f"Connecting to the running cluster ({where(self.spec)})")
        self._client = get_launcher(self.launcher).connect(self.spec, self.start_timeout)
        self._connected = True
        try:
            self.engines = describe(self._client)
        except ClusterStartError:
            self.stop()  # disconnects only
            raise
        self.layout = Layout(len(self.engines), 1)
        report(f"Connected: {len(self.engines)} engines ({where(self.spec)})")

    def stop(self, kill: bool = False) -> None:
        """Stop the cluster and make sure none of its processes are left.

        ``kill`` ends the processes at once (SIGTERM, then SIGKILL after 2 s) before the
        orderly stop: for a start given up midway, whose engines have nothing to save. A
        cluster we only connected to is left running: we disconnect.
        """
        if kill and self._cluster is not None:
            kill_trees(self.processes(), grace=2.0)
        watchdog.release(self)
        if self.exit_order is not None:
            self.exit_order.close()
            self.exit_order = None
        cluster, client, connected = self._cluster, self._client, self._connected
        self._cluster = self._client = None
        self._connected = False
        self.engines = []
        self.backends.forget()
        if client is not None:
            try:
                client.close()
            except Exception:
                log.debug("closing the client failed", exc_info=True)
        if cluster is not None:
            self._pids.update(p.pid for p in self.processes())
            try:
                cluster.stop_cluster_sync()
            except Exception:  # still reaped below
                log.debug("stop_cluster failed", exc_info=True)
        if connected:
            self._pids.clear()
        else:
            self._reap()
        self.layout = None
        self.publish_state()

    def restart(self, report: Report = quiet) -> None:
        """Stop and start again with the same layout."""
        layout = self.layout
        if layout is None:
            raise RuntimeError("the cluster has not been started; there is nothing to restart.")
        self.stop()
        self.start(layout, report)

    def interrupt(self, ranks: list[int] | None = None, sig: int = signal.SIGINT) -> None:
        """Send ``sig`` (SIGINT, like the notebook's stop button) to ``ranks`` (all by default):
        straight from here to engines on this machine, else through their nanny, waited for a
        few seconds at most (``ranks.signal_engines``)."""
        chosen = range(len(self.engines)) if ranks is None else ranks
        signal_engines(self.client, [self.engines[r] for r in chosen], sig)

    # -- ranks ------------------------------------------------------------------------------

    def prepare_ranks(self, key: BackendKey, timeout: float = 120.0) -> None:
        """Initialise the backend ``key`` on every rank, unless done; stop the cluster on a
        timeout; a rank that dies doing it (an MPI setting) is shown with MPI's report. A
        Horovod built for another MPI than the cluster's is refused first, in one sentence."""
        if key[0] == "horovod" and self.backends.key != key and self.owns_processes:
            check_horovod_build()  # before a rank starts MPI under it
        try:
            local = self.launcher == "local"
            self.backends.prepare(self.view, key, local, timeout, self.owns_processes)
        except TimeoutError:
            self.stop()
            raise ClusterStartError(
                f"initialising {key[0]} did not finish on every rank within {timeout:.0f} s; "
                "the cluster was stopped and the next cell starts a new one."
            ) from None
        except RankError as e:
            if "died" not in str(e) or not self.owns_processes:
                raise
            report = mpiexec_output.mpi_report(self._cluster, self.engines_exited, self.spec.env)
            said = f"; MPI said:\n{report}" if report else " (MPI said nothing more)."
            raise ClusterStartError(f"{e}{said}") from None

    def reset_ranks(self) -> bool:
        """Reset the backend on every rank after an aborted cell; False if that failed."""
        return self.running and self.backends.reset(self.view())

    # -- what others see ----------------------------------------------------------------------

    def engines_exited(self, ask_scheduler: bool = False) -> bool:
        """True once every engine set's launcher (``mpiexec``) has exited, or with
        ``ask_scheduler`` its batch job has left the queue (``squeue``, every 2 s at most);
        never for a cluster we connected to: its launcher is not ours to see."""
        if self._cluster is None:
            return False
        ended = get_launcher(self.launcher).job_ended if ask_scheduler else lambda _: False
        return all(launcher_exited(s) or ended(s) for s in self._cluster.engines.values())

    def mpiexec_output_files(self) -> list[str]:
        """The files ``mpiexec`` writes its output to (none for a cluster we connected to)."""
        return mpiexec_output.output_files(self._cluster)

    def mpiexec_output(self) -> str:
        """The end of what ``mpiexec`` printed, also once it has exited."""
        return mpiexec_output.read_tail(self._cluster)

    def publish_state(self, activity: Activity | None = None, run_id: str | None = None) -> None:
        """Write this cluster's state where the lab extension's server reads it, and tell
        the listeners (the ``%dtrain config`` form's status line) when on the main thread."""
        status = self.status(ask_controller=False)
        kernel_state.publish(status, activity, run_id)
        if threading.current_thread() is not threading.main_thread():
            return  # widgets are updated from the kernel's main thread only
        self._listeners.notify(kernel_state.record(status, activity, run_id))

    def add_listener(self, listener: Callable[[ClusterRecord], None]) -> None:
        """Call ``listener(record)`` on every state change (held weakly: a bound method)."""
        self._listeners.add(listener)

    # -- helpers -----------------------------------------------------------------------------

    def _track(self, launcher: Any) -> None:
        pid = getattr(launcher, "pid", None)
        if pid:
            self._pids.add(int(pid))

    def _reap(self, timeout: float = 10.0) -> None:
        procs = self.processes()
        if procs:
            kill_trees(procs, grace=timeout, term=False)
        self._pids.clear()
