"""``%%distributed`` and ``%dtrain``: parsing and IPython glue over the runner and cluster."""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .cluster import TrainingCluster
from .display import StatusLine
from .options import BACKENDS, DEVICES, BadOptions, RunOptions, parse_names
from .records import last_run
from .runner import DistributedRunner


def _int_arg(flag: str) -> Any:
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} must be a positive integer, got {text!r}"
            ) from None

    return parse


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--timeout must be a positive number of seconds, got {text!r}"
        ) from None


@magics_class
class DistributedMagics(Magics):
    """Magics that run cells on every rank of a warm MPI + Horovod cluster."""

    def __init__(self, shell: Any, cluster: TrainingCluster | None = None) -> None:
        super().__init__(shell)
        self.cluster = cluster or TrainingCluster()
        self.runner = DistributedRunner(self.cluster)

    @magic_arguments()
    @argument(
        "--nodes",
        "-n",
        type=_int_arg("--nodes"),
        default=1,
        help="Number of nodes (default 1); on the local launcher each node is simulated.",
    )
    @argument(
        "--procs-per-node",
        "-p",
        type=_int_arg("--procs-per-node"),
        default=1,
        help="Ranks per node (default 1); total ranks = nodes × procs-per-node.",
    )
    @argument(
        "--backend",
        "-b",
        default="horovod",
        help=f"One of {', '.join(BACKENDS)} (default horovod).",
    )
    @argument(
        "--device",
        "-d",
        default="auto",
        help=f"One of {', '.join(DEVICES)} (default auto: a GPU per local rank if any).",
    )
    @argument(
        "--timeout",
        "-t",
        type=_seconds,
        default=None,
        help="Interrupt every rank after this many seconds (default: no timeout).",
    )
    @argument(
        "--push",
        default=None,
        help="Comma-separated notebook variables to send to every rank first.",
    )
    @argument(
        "--no-widget",
        action="store_true",
        help="Print labelled output and text summaries instead of the live dashboard.",
    )
    @argument(
        "--pull",
        default=None,
        help="Comma-separated names to copy from rank 0 into the notebook after.",
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
        """
        options, widget = self.parse(line)
        try:
            self.runner.run(cell, options, self._namespace(), widget=widget)
        except BadOptions as e:
            raise UsageError(str(e)) from None
        finally:
            self._publish_record()

    async def distributed_async(self, line: str, cell: str) -> None:
        """``%%distributed`` as awaited in a kernel, so the dashboard's Stop button stays live."""
        options, widget = self.parse(line)
        try:
            await self.runner.run_async(cell, options, self._namespace(), widget=widget)
        except BadOptions as e:
            raise UsageError(str(e)) from None
        finally:
            self._publish_record()

    def parse(self, line: str) -> tuple[RunOptions, bool]:
        """``%%distributed`` flags → validated options and whether to show the widget."""
        try:
            args = parse_argstring(self.distributed, line)
            options = RunOptions(
                nodes=args.nodes,
                procs_per_node=args.procs_per_node,
                backend=args.backend,
                device=args.device,
                timeout=args.timeout,
                push=parse_names(args.push),
                pull=parse_names(args.pull),
            ).validate()
        except BadOptions as e:
            raise UsageError(str(e)) from None
        return options, not args.no_widget

    def _namespace(self) -> dict[str, Any]:
        assert self.shell is not None
        return self.shell.user_ns

    def _publish_record(self) -> None:
        record = last_run()
        if record is not None:
            self._namespace()["_dtrain"] = record

    @line_magic
    def dtrain(self, line: str) -> Any:
        """Control the training cluster: ``%dtrain status``, ``%dtrain stop``, ``%dtrain restart``.

        Examples
        --------
        ::

            In [1]: %dtrain status
            local cluster: running, 2 ranks (2 nodes × 1 procs), 2/2 engines registered, 0 busy
        """
        command = line.strip() or "status"
        if command == "status":
            info = self.cluster.status()
            print(_format_status(info))
            return None
        if command == "stop":
            was = self.cluster.running
            self.cluster.stop()
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
        raise UsageError(f"unknown %dtrain command {command!r}; use status, stop or restart.")


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
