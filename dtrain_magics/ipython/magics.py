"""``%%distributed`` and ``%dtrain``: parsing and IPython glue over the runner and cluster."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import (
    MagicArgumentParser,
    argument,
    magic_arguments,
)

from .. import tracking
from ..cluster.launchers import LaunchSpec, Layout, check_spec, cores_here
from ..cluster.training_cluster import TrainingCluster
from ..cluster.where import ask_sync
from ..config.flags import setting_arguments, settings_from_args
from ..config.options import RunOptions, parse_names, parse_ranks
from ..config.settings import DistributedSettings
from ..config.store import SettingsStore
from ..errors import BadOptions, ClusterStartError, RankError
from ..run.runner import DistributedRunner
from ..run.script import Script
from ..run.where import combine, report_lines
from ..store import diagnostics, kernel_state
from ..store.records import last_run
from ..ui.headline import cluster_line, plural
from ..ui.views import view_factory
from . import cluster_choice as choice
from .status_line import StatusLine

COMMANDS = ("status", "where", "stop", "restart", "config")
log = logging.getLogger(__name__)
_CELL_COUNT = re.compile(r"In\[\d+\]")


@magics_class
class DistributedMagics(Magics):
    """Magics that run cells on every rank of a warm MPI + Horovod cluster."""

    def __init__(self, shell: Any, cluster: TrainingCluster | None = None) -> None:
        super().__init__(shell)
        self.cluster = cluster or TrainingCluster()
        self.runner = DistributedRunner(self.cluster)
        self.settings = SettingsStore(parent=shell)
        self._cluster_version = -1  # the settings' version the cluster was last asked for
        self._ranks_ran: choice.RanksRan | None = None  # kept through restarts, not a stop
        self._cluster_ran: tuple[Layout, LaunchSpec] | None = None  # the same
        self._warned_crowded = False
        try:
            self.settings.load()
        except BadOptions as e:  # a broken config file must not break %load_ext
            print(f"dtrain_magics: ignoring the config file: {e}")

    @magic_arguments()
    @argument(
        "--push",
        default=None,
        help="Comma-separated notebook variables to send to every rank first.",
    )
    @argument(
        "--pull",
        default=None,
        help="Comma-separated names to copy from rank 0 (the first of --ranks) into the "
        "notebook after.",
    )
    @argument(
        "--ranks",
        default=None,
        metavar="0,2-3",
        help="Run on these ranks only (numbers and ranges); the others keep their state and "
        "stay idle. A collective fails at once there: collectives need every rank.",
    )
    @argument(
        "--check-replicas",
        nargs="?",
        const="",
        default=None,
        metavar="NAMES",
        help="After the cell, check that these models (comma-separated; alone: every "
        "torch.nn.Module bound on the ranks) are the same on every rank.",
    )
    @argument(
        "--no-widget",
        action="store_true",
        help="Print labelled output and text summaries instead of the live dashboard.",
    )
    @setting_arguments(DistributedSettings)
    @line_cell_magic
    def distributed(self, line: str, cell: str | None = None) -> None:
        """Run the cell on every rank of a warm ipyparallel MPI cluster with Horovod initialised.

        Before the cell runs, every rank has ``hvd`` (``horovod.torch``, initialised; with
        ``--backend torch``, ``dist`` instead), ``rank``, ``local_rank``, ``size``, ``device``
        (a ``torch.device``, ``cuda:<local_rank>`` on GPU nodes) and ``dtrain`` (rank helpers).
        Rank namespaces persist between cells. Each rank's output streams in, labelled by rank,
        and the value of the cell's last expression is shown per rank as ``%%px`` shows it
        (``Out[rank 0-1]: ...`` for ranks with the same value; rich reprs as in a plain cell).
        An error on any rank fails the cell with that rank's traceback and interrupts the others.
        A live dashboard shows per-rank progress (``dtrain.progress``), metrics logged with
        ``dtrain.log`` as charts, throughput, per-rank output, each rank's step split into
        computing and waiting in collectives, a "Where are the ranks?" button (the report also
        comes by itself after ``--where-after`` seconds without progress) and a Stop button;
        afterwards ``_dtrain`` (also ``dtrain_magics.last_run()``) holds the run's record. With
        ``--mlflow`` the kernel then sends the run to MLflow in the background
        (``_dtrain.mlflow.wait()``). ``--max-restarts N`` restarts the cluster and runs the cell
        again when a rank dies (not when the cell raises); ``--check-replicas`` then checks that
        every rank holds the same models.

        The line form, ``%distributed [flags] train.py [its arguments]``, runs an unchanged
        script on the ranks as ``mpiexec -n N python train.py ...`` would from the notebook's
        working directory: as ``__main__``, with its own ``sys.argv``, in a fresh namespace.
        ``sys.exit(0)`` is a success, another code a failure naming the rank.

        Flags override the defaults applied with ``%dtrain config`` (the form), which override
        the config file saved from it, which overrides ``c.DistributedSettings`` in
        ``ipython_config.py``.

        Examples
        --------
        ::

            In [1]: %load_ext dtrain_magics

            In [2]: %%distributed --nodes 2
               ...: x = hvd.allreduce(torch.tensor([rank + 1.0]), op=hvd.Sum)
               ...: print(rank, size, x.item())
               ...: rank * 10
            [rank 0] 0 2 3.0
            [rank 1] 1 2 3.0
            Out[rank 0]: 0
            Out[rank 1]: 10

            In [3]: %%distributed --nodes 2 --push lr --pull model --timeout 600
               ...: model = train(lr * size)

            In [4]: %%distributed --ranks 0
               ...: model.weight.shape

            In [5]: %distributed --nodes 2 train.py --epochs 3 --lr 0.1

            In [6]: %%distributed --launcher slurm --nodes 2 --procs-per-node 4 --partition gpu
               ...: ...

            In [7]: %%distributed --nodes 2 --max-restarts 2 --check-replicas model
               ...: saved = dtrain.load_checkpoint("run.pt")  # a dead rank: run again, resume
        """
        code, options, kwargs, mlflow = self._run_arguments(line, cell)
        with self._reporting(mlflow):
            self.runner.run(code, options, self._namespace(), **kwargs)

    async def distributed_async(self, line: str, cell: str | None = None) -> None:
        """``%%distributed`` (or ``%distributed`` with ``cell`` None) as awaited in a kernel, so
        the dashboard's Stop button stays live."""
        code, options, kwargs, mlflow = self._run_arguments(line, cell)
        with self._reporting(mlflow):
            await self.runner.run_async(code, options, self._namespace(), **kwargs)

    async def distributed_line_async(self, line: str) -> None:
        """``%distributed train.py ...`` as awaited in a kernel: ``$name`` and ``{name}`` are
        expanded from the notebook's namespace first, as IPython does for line magics."""
        from IPython.utils.text import DollarFormatter

        try:
            line = DollarFormatter().vformat(line, args=[], kwargs=self._namespace())
        except Exception:  # as IPython does: an expansion that fails leaves the line as it is
            log.debug("could not expand %r", line, exc_info=True)
        await self.distributed_async(line)

    def _run_arguments(
        self, line: str, cell: str | None
    ) -> tuple[str | Script, RunOptions, dict[str, Any], str]:
        """The runner's code, options and keyword arguments, and where the run is tracked
        (``UsageError`` if bad); the line form (``cell`` None) runs a script."""
        settings, options, sources, widget = self.parse(line, script=cell is None)
        if settings.mlflow and not tracking.available():
            raise UsageError(tracking.INSTALL_HINT)
        args = self._parse_flags(line, cell is None)
        code: str | Script
        try:
            code = cell if cell is not None else Script.from_command(args.command)
        except BadOptions as e:
            raise UsageError(str(e)) from None
        flags = set(settings_from_args(args, self.settings.settings_class))
        changed = self.settings.version != self._cluster_version  # applied in the form since
        try:
            layout, spec, note = choice.cluster_for(
                self.cluster, flags, settings, changed, self._cluster_ran
            )
            choice.check_launcher_flags(flags, spec.launcher, type(settings))
            if self.cluster.needs_start(layout, spec):  # a bad spec keeps the running cluster
                check_spec(spec, layout, ask_scheduler=True)
        except (BadOptions, ClusterStartError) as e:
            raise UsageError(str(e)) from None
        options = dataclasses.replace(
            options,
            nodes=layout.nodes,
            procs_per_node=layout.procs_per_node,
            launcher=spec.launcher,
        )
        if cell is not None:  # a script runs as under mpiexec: with the flags' backend alone
            options = choice.ranks_as_they_are(self._ranks_ran, flags, options, changed)
        self._cluster_version = self.settings.version
        self.cluster.start_timeout = settings.start_timeout  # for a start this cell makes
        notes = [n for n in (note, self._crowded(layout, spec)) if n]
        kwargs = {
            "view": view_factory(widget),
            "spec": spec,
            "info": {"sources": sources, "flags": line.strip()},
            "notes": notes,
        }
        return code, options, kwargs, settings.mlflow

    def _crowded(self, layout: Layout, spec: LaunchSpec) -> str | None:
        """A sentence, once per kernel, when a new local cluster would crowd the cores that
        another notebook's cluster uses already."""
        if self._warned_crowded or spec.launcher != "local":
            return None
        if not self.cluster.needs_start(layout, spec):
            return None
        others, cores = kernel_state.other_local_ranks(), cores_here()
        if not others or others + layout.ranks <= cores:
            return None
        self._warned_crowded = True
        return (
            f"Another notebook's cluster already runs {plural(others, 'rank')} on this "
            f"machine's {plural(cores, 'core')}: with {plural(layout.ranks, 'more rank')} they "
            "share the cores and each one is slower; stop the other one with %dtrain stop in "
            "its notebook or from the Distributed training sidebar."
        )

    @contextlib.contextmanager
    def _reporting(self, mlflow: str = "") -> Iterator[None]:
        """Turn the user's mistakes into ``UsageError``; bind ``_dtrain`` whatever happens, and
        send the run to MLflow (in the background) if ``mlflow`` says where."""
        before = last_run()
        try:
            yield
        except BadOptions as e:
            raise UsageError(str(e)) from None
        except RankError as e:
            # the rank numbers the cell by its own count: show the notebook's, as a plain cell does
            count = kernel_state.execution_count()
            if count is not None:
                e.remote_traceback = _CELL_COUNT.sub(f"In[{count}]", e.remote_traceback)
            raise
        finally:
            key, ran = self.cluster.backends.key, self.cluster.backends.ran
            if ran is not None:  # the ranks' backend and device, for cells that name neither
                self._ranks_ran = (ran[0], ran[1])  # also if they died and were replaced
            if key is not None and self.cluster.layout is not None:  # one whose ranks worked,
                self._cluster_ran = (self.cluster.layout, self.cluster.spec)  # to start again
            record = last_run()
            if record is not None:
                self._namespace()["_dtrain"] = record
            if mlflow and record is not None and record is not before:
                record.mlflow = tracking.worker.submit(record, mlflow, Path.cwd())

    def parse(
        self, line: str, script: bool = False
    ) -> tuple[DistributedSettings, RunOptions, str, bool]:
        """Flags → this cell's settings, options, where settings came from, widget?"""
        try:
            args = self._parse_flags(line, script)
            flags = settings_from_args(args, self.settings.settings_class)
            push, pull = parse_names(args.push, "--push"), parse_names(args.pull, "--pull")
            ranks = parse_ranks(args.ranks)
            check = args.check_replicas
            replicas = None if check is None else parse_names(check, "--check-replicas")
            settings, sources = self.settings.resolve(flags)
        except BadOptions as e:
            raise UsageError(str(e)) from None
        described = ", ".join(
            f"{name} from the {source}"
            for name, source in sorted(sources.items())
            if source != "flag"
        )
        options = RunOptions.from_settings(settings, push, pull, ranks, replicas)
        return settings, options, described, not args.no_widget

    @functools.lru_cache(maxsize=64)  # noqa: B019 (one instance per kernel; lines repeat)
    def _parse_flags(self, line: str, script: bool = False) -> argparse.Namespace:
        """The parsed flags of a ``%%distributed`` line (its cells run again and again), or of
        a ``%distributed`` line with ``script`` (the flags, then the script's command). Words
        split as a shell splits them: quotes group, and go (``--env "MSG=hello world"``)."""
        try:
            words = shlex.split(line)
        except ValueError as e:
            raise UsageError(f"the line does not split into words ({e}): close it.") from None
        parser = self._script_parser if script else self.distributed.parser
        return parser.parse_args(words)

    @functools.cached_property
    def _script_parser(self) -> MagicArgumentParser:
        """The line form's parser: the cell's flags, then the script and its arguments (every
        word from the script on is the script's, as for ``mpiexec``)."""
        parser = MagicArgumentParser(
            prog="%distributed",
            parents=[self.distributed.parser],
            usage="%distributed [flags] SCRIPT [ARG ...]",
        )
        parser.add_argument("command", nargs=argparse.REMAINDER, metavar="SCRIPT [ARG ...]")
        return parser

    def _namespace(self) -> dict[str, Any]:
        assert self.shell is not None
        return self.shell.user_ns  # type: ignore[no-any-return]

    @line_magic
    def dtrain(self, line: str) -> Any:
        """Control the training cluster and its settings.

        ``%dtrain status``, ``%dtrain where`` (each rank's line of code and the collective it
        waits in), ``%dtrain stop``, ``%dtrain restart``, and ``%dtrain config`` (the
        configuration form: settings, detected resources, Apply/Save/Reset, Start/Stop).

        Examples
        --------
        ::

            In [1]: %dtrain status
            local cluster: running, 2 ranks (2 nodes × 1 proc), 2/2 engines registered, 0 busy
        """
        command = line.strip() or "status"
        if command not in COMMANDS:
            raise UsageError(
                f"unknown %dtrain command {command!r}; use status, where, stop, restart or config."
            )
        return getattr(self, f"_dtrain_{command}")()

    def _dtrain_status(self) -> None:
        print(cluster_line(self.cluster.status()))
        print(f"diagnostics log: {diagnostics.log_path()}")

    def _dtrain_where(self) -> None:
        if not self.cluster.running or self.cluster.backends.key is None:
            raise UsageError("no cluster is running a backend yet; run a %%distributed cell first.")
        report = combine(ask_sync(self.cluster.client, self._engine_ids()), "asked")
        print("\n".join(report_lines(report)))

    def _engine_ids(self) -> list[int]:
        return [self.cluster.engine_id(r) for r in range(len(self.cluster.engines))]

    def stop_cluster(self) -> None:
        """Stop the cluster (``%dtrain stop``, the form's Stop): the next starts from the
        settings, not as this one ran."""
        self.cluster.stop()
        self.cluster.backends.ran = None
        self._ranks_ran = self._cluster_ran = None

    def _dtrain_stop(self) -> None:
        was, owned = self.cluster.running, self.cluster.owns_processes
        self.stop_cluster()
        if was and not owned:
            print("Disconnected; the cluster was not started here, so it keeps running.")
        else:
            print("Cluster stopped." if was else "No cluster was running.")

    def _dtrain_restart(self) -> None:
        if self.cluster.layout is None:
            raise UsageError("no cluster is running to restart; a %%distributed cell starts one.")
        status = StatusLine()
        try:
            self.cluster.restart(report=status.update)
        finally:
            status.close()

    def _dtrain_config(self) -> Any:
        from ..ui.config_form import ConfigPanel

        runner = self.runner
        return ConfigPanel(
            self.settings, self.cluster, runner.gate, runner.request_stop, self.stop_cluster
        )


def show_tracking_warnings(*_: Any) -> None:
    """After each cell: one line for each run that could not be sent to MLflow since the last.

    (The sending happens in the background; a cell that ended before it failed shows nothing.)
    """
    for warning in tracking.worker.take_warnings():
        print(warning, file=sys.stderr)
