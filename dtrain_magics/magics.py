"""``%%distributed`` and ``%dtrain``: parsing and IPython glue over the runner and cluster."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import TraitError

from .cluster import TrainingCluster
from .display import StatusLine
from .launchers import LAUNCHERS
from .options import BACKENDS, DEVICES, BadOptions, RunOptions, parse_names
from .records import last_run
from .runner import DistributedRunner
from .settings import DistributedSettings, SettingsStore


def _typed(flag: str, cast: Any, what: str) -> Any:
    """An argparse type that turns a bad value into one sentence naming the flag."""

    def parse(text: str) -> Any:
        try:
            return cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be {what}, got {text!r}") from None

    return parse


def _int_arg(flag: str) -> Any:
    return _typed(flag, int, "a positive integer")


def _seconds(flag: str) -> Any:
    return _typed(flag, float, "a positive number of seconds")


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--env takes NAME=VALUE, got {text!r}")
    return name, value


# flag destination → settings name, for the flags that are settings
_SETTING_FLAGS = {
    "nodes": "nodes",
    "procs_per_node": "procs_per_node",
    "backend": "backend",
    "device": "device",
    "timeout": "timeout",
    "launcher": "launcher",
    "hostfile": "hostfile",
    "partition": "slurm_partition",
    "account": "slurm_account",
    "time_limit": "slurm_time_limit",
    "sbatch_option": "slurm_options",
    "pending_timeout": "slurm_pending_timeout",
    "profile": "profile",
    "cluster_id": "cluster_id",
    "env": "env",
}


@magics_class
class DistributedMagics(Magics):
    """Magics that run cells on every rank of a warm MPI + Horovod cluster."""

    def __init__(self, shell: Any, cluster: TrainingCluster | None = None) -> None:
        super().__init__(shell)
        self.cluster = cluster or TrainingCluster()
        self.runner = DistributedRunner(self.cluster)
        self.settings = SettingsStore()
        try:
            self.settings.load()
        except (TraitError, ValueError) as e:  # a broken config file must not break %load_ext
            print(f"dtrain_magics: ignoring the config file: {e}")

    @magic_arguments()
    @argument(
        "--nodes",
        "-n",
        type=_int_arg("--nodes"),
        default=None,
        help="Number of nodes (default 1); on the local launcher each node is simulated.",
    )
    @argument(
        "--procs-per-node",
        "-p",
        type=_int_arg("--procs-per-node"),
        default=None,
        help="Ranks per node (default 1); total ranks = nodes × procs-per-node.",
    )
    @argument(
        "--backend", "-b", default=None, help=f"One of {', '.join(BACKENDS)} (default horovod)."
    )
    @argument(
        "--device",
        "-d",
        default=None,
        help=f"One of {', '.join(DEVICES)} (default auto: a GPU per local rank if any).",
    )
    @argument(
        "--timeout",
        "-t",
        type=_seconds("--timeout"),
        default=None,
        help="Interrupt every rank after this many seconds (default: no timeout).",
    )
    @argument(
        "--push",
        default=None,
        help="Comma-separated notebook variables to send to every rank first.",
    )
    @argument(
        "--pull",
        default=None,
        help="Comma-separated names to copy from rank 0 into the notebook after.",
    )
    @argument(
        "--no-widget",
        action="store_true",
        help="Print labelled output and text summaries instead of the live dashboard.",
    )
    @argument(
        "--launcher", "-l", default=None, help=f"One of {', '.join(LAUNCHERS)} (default local)."
    )
    @argument("--hostfile", default=None, help="Open MPI hostfile (launcher mpi).")
    @argument("--partition", default=None, help="Slurm partition (launcher slurm).")
    @argument("--account", default=None, help="Slurm account (launcher slurm).")
    @argument("--time-limit", default=None, help="Slurm time limit, e.g. 01:00:00.")
    @argument(
        "--sbatch-option",
        action="append",
        default=None,
        help="Extra sbatch option, e.g. --sbatch-option=--qos=debug (repeatable).",
    )
    @argument(
        "--pending-timeout",
        type=_seconds("--pending-timeout"),
        default=None,
        help="Seconds a Slurm job may stay pending (default 300).",
    )
    @argument(
        "--profile", default=None, help="ipyparallel profile to connect to (launcher profile)."
    )
    @argument("--cluster-id", default=None, help="ipyparallel cluster id (launcher profile).")
    @argument(
        "--env",
        type=_env_pair,
        action="append",
        default=None,
        help="NAME=VALUE environment variable for every rank (repeatable).",
    )
    @cell_magic
    def distributed(self, line: str, cell: str) -> None:
        """Run the cell on every rank of a warm ipyparallel MPI cluster with Horovod initialised.

        Before the cell runs, every rank has ``hvd`` (``horovod.torch``, initialised; with
        ``--backend torch``, ``dist`` instead), ``rank``, ``local_rank``, ``size``, ``device``
        (a ``torch.device``, ``cuda:<local_rank>`` on GPU nodes) and ``dtrain`` (rank helpers).
        Rank namespaces persist between cells. Each rank's output streams in, labelled by rank.
        An error on any rank fails the cell with that rank's traceback and interrupts the others.
        A live dashboard shows per-rank progress (``dtrain.progress``), metrics logged with
        ``dtrain.log`` as charts, throughput, per-rank output and a Stop button; afterwards
        ``_dtrain`` (also ``dtrain_magics.last_run()``) holds the run's record.

        Flags override the defaults applied with ``%dtrain config`` (the form), which override
        the config file saved from it.

        Examples
        --------
        ::

            In [1]: %load_ext dtrain_magics

            In [2]: %%distributed --nodes 2
               ...: x = hvd.allreduce(torch.tensor([rank + 1.0]), op=hvd.Sum)
               ...: print(rank, size, x.item())
            [rank 0] 0 2 3.0
            [rank 1] 1 2 3.0

            In [3]: %%distributed --nodes 2 --push lr --pull model --timeout 600
               ...: model = train(lr * size)

            In [4]: %%distributed --launcher slurm --nodes 2 --procs-per-node 4 --partition gpu
               ...: ...
        """
        args, kwargs = self._run_arguments(line, cell)
        with self._reporting():
            self.runner.run(*args, **kwargs)

    async def distributed_async(self, line: str, cell: str) -> None:
        """``%%distributed`` as awaited in a kernel, so the dashboard's Stop button stays live."""
        args, kwargs = self._run_arguments(line, cell)
        with self._reporting():
            await self.runner.run_async(*args, **kwargs)

    def _run_arguments(self, line: str, cell: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The runner's arguments for one cell (raises ``UsageError`` for bad flags)."""
        settings, options, sources, widget = self.parse(line)
        kwargs = {"widget": widget, "spec": settings.launch_spec(), "info": {"sources": sources}}
        return (cell, options, self._namespace()), kwargs

    @contextlib.contextmanager
    def _reporting(self) -> Iterator[None]:
        """Turn the user's mistakes into ``UsageError``; bind ``_dtrain`` whatever happens."""
        try:
            yield
        except BadOptions as e:
            raise UsageError(str(e)) from None
        finally:
            self._publish_record()

    def parse(self, line: str) -> tuple[DistributedSettings, RunOptions, str, bool]:
        """Flags → this cell's settings, validated options, where settings came from, widget?"""
        try:
            args = parse_argstring(self.distributed, line)
            flags = {
                name: getattr(args, dest)
                for dest, name in _SETTING_FLAGS.items()
                if getattr(args, dest) is not None
            }
            if "env" in flags:
                flags["env"] = dict(flags["env"])
            push, pull = parse_names(args.push), parse_names(args.pull)
            defaults = self.settings.defaults()
            RunOptions(
                **{
                    k: flags.get(k, getattr(defaults, k))
                    for k in ("nodes", "procs_per_node", "backend", "device", "launcher", "timeout")
                },
                push=push,
                pull=pull,
            ).validate()
            settings, sources = self.settings.resolve(flags)
            options = settings.run_options(push, pull).validate()
        except (BadOptions, TraitError) as e:
            raise UsageError(str(e)) from None
        described = ", ".join(
            f"{name} from the {source}"
            for name, source in sorted(sources.items())
            if source != "flag"
        )
        return settings, options, described, not args.no_widget

    def _namespace(self) -> dict[str, Any]:
        assert self.shell is not None
        return self.shell.user_ns

    def _publish_record(self) -> None:
        record = last_run()
        if record is not None:
            self._namespace()["_dtrain"] = record

    @line_magic
    def dtrain(self, line: str) -> Any:
        """Control the training cluster and its settings.

        ``%dtrain status``, ``%dtrain stop``, ``%dtrain restart``, and ``%dtrain config`` (the
        configuration form: settings, detected resources, Apply/Save/Reset, Start/Stop).

        Examples
        --------
        ::

            In [1]: %dtrain status
            local cluster: running, 2 ranks (2 nodes × 1 procs), 2/2 engines registered, 0 busy
        """
        command = line.strip() or "status"
        if command == "status":
            print(_format_status(self.cluster.status()))
            return None
        if command == "stop":
            was, external = self.cluster.running, self.cluster.launcher == "profile"
            self.cluster.stop()
            if external and was:
                print("Disconnected; the cluster was not started here, so it keeps running.")
            else:
                print("Cluster stopped." if was else "No cluster was running.")
            return None
        if command == "restart":
            if self.cluster.layout is None:
                raise UsageError("no cluster has been started yet; run a %%distributed cell first.")
            status = StatusLine()
            try:
                self.cluster.restart(report=status.update)
            finally:
                status.close()
            return None
        if command == "config":
            from .config_panel import ConfigPanel

            return ConfigPanel(self)
        raise UsageError(
            f"unknown %dtrain command {command!r}; use status, stop, restart or config."
        )


def _format_status(info: dict[str, Any]) -> str:
    if info["state"] == "stopped":
        return (
            f"{info['launcher']} cluster: not running (it starts with the next %%distributed cell)."
        )
    text = (
        f"{info['launcher']} cluster: {info['state']}, {info['ranks']} ranks "
        f"({info['nodes']} nodes × {info['procs_per_node']} procs)"
    )
    if "engines_registered" in info:
        text += f", {info['engines_registered']}/{info['ranks']} engines registered"
    if info.get("busy") is not None:
        text += f", {info['busy']} busy"
    return text
