"""The settings of distributed runs: every one declared once, as a tagged traitlet.

``DistributedSettings`` is a traitlets ``Configurable``: ``c.DistributedSettings.nodes = 2`` in
``ipython_config.py`` works, and so does the JSON file the form saves. The ``%%distributed``
flags and the ``%dtrain config`` form are generated from the traits (see ``flags.py`` and
``ui/config_form.py``); adding a setting means adding one trait here.
"""

from __future__ import annotations

import functools
import shlex
from typing import Any

from traitlets import TraitType
from traitlets.config import Configurable

from ..cluster.launchers import LAUNCHERS, LaunchSpec, get_launcher
from ..errors import SettingError
from .traits import (
    MAX_RANKS,
    Choice,
    Count,
    EnvVars,
    PositiveInt,
    Seconds,
    Text,
    TextList,
    Tracking,
    flag_of,
    setting,
)

BACKENDS = ("horovod", "torch")
DEVICES = ("auto", "cpu", "cuda")


class DistributedSettings(Configurable):
    """Defaults for ``%%distributed`` cells."""

    launcher = setting(
        Choice(
            list(LAUNCHERS),
            default_value="local",
            help="How engines start: local (mpiexec here), mpi (hostfile), slurm, or profile "
            "(connect to a running ipyparallel cluster).",
        ),
        label="Launcher",
        short="-l",
    )
    nodes = setting(
        PositiveInt(
            1, help="Number of nodes (default 1); on the local launcher each node is simulated."
        ),
        label="Nodes",
        short="-n",
    )
    procs_per_node = setting(
        PositiveInt(1, help="Ranks per node (default 1); total ranks = nodes × procs-per-node."),
        label="Procs per node",
        short="-p",
    )
    device = setting(
        Choice(
            list(DEVICES),
            default_value="auto",
            help="auto: one GPU per local rank where there are GPUs, else CPU; or cpu, cuda.",
        ),
        label="Device",
        short="-d",
    )
    backend = setting(
        Choice(
            list(BACKENDS),
            default_value="horovod",
            help="horovod (binds hvd), or torch (torch.distributed, binds dist).",
        ),
        label="Backend",
        short="-b",
    )
    timeout = setting(
        Seconds(
            None,
            allow_none=True,
            help="Interrupt every rank after this many seconds (default: no timeout).",
        ),
        label="Timeout (s)",
        short="-t",
        placeholder="none",
    )
    where_after = setting(
        Seconds(
            30.0,
            allow_none=True,
            help="Show where every rank is after this many seconds without progress (no output, "
            "dtrain.log/progress or finished collective); none: only when asked (default 30).",
        ),
        label="Where after (s)",
        placeholder="none",
    )
    max_restarts = setting(
        Count(
            0,
            help="When a rank dies (killed, out of memory, segfault, lost node, preemption), "
            "restart the cluster and run the cell again, up to this many times (default 0); "
            "an exception raised by the cell is not retried.",
        ),
        label="Max restarts",
        placeholder="0",
    )
    start_timeout = setting(
        Seconds(
            120.0,
            help="Seconds a new cluster's engines have to register before the start is given "
            "up (default 120); a Slurm job's wait in the queue is not counted.",
        ),
        label="Start timeout (s)",
    )
    env = setting(
        EnvVars(help="NAME=VALUE environment variable for every rank (repeatable)."),
        label="Rank env",
        placeholder="NAME=VALUE, one per line",
        metavar="NAME=VALUE",
    )
    mlflow = setting(
        Tracking(
            "",
            help="Send each run to MLflow: --mlflow alone uses MLflow's default "
            "(MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the notebook's directory); or "
            "give a tracking URI; off by default.",
        ),
        label="MLflow",
        placeholder="off, on, or a tracking URI",
        metavar="URI",
        const="on",
    )
    hostfile = setting(
        Text("", help="Hostfile, Open MPI's or MPICH's (launcher mpi)."),
        label="Hostfile",
        launcher="mpi",
        placeholder="/path/to/hostfile",
    )
    slurm_partition = setting(
        Text("", help="Slurm partition (launcher slurm)."),
        label="Partition",
        flag="--partition",
        launcher="slurm",
    )
    slurm_account = setting(
        Text("", help="Slurm account (launcher slurm)."),
        label="Account",
        flag="--account",
        launcher="slurm",
    )
    slurm_time_limit = setting(
        Text("", help="Slurm time limit, e.g. 01:00:00."),
        label="Time limit",
        flag="--time-limit",
        launcher="slurm",
        placeholder="01:00:00",
    )
    slurm_options = setting(
        TextList(help="Extra sbatch option, e.g. --sbatch-option=--qos=debug (repeatable)."),
        label="sbatch options",
        flag="--sbatch-option",
        launcher="slurm",
        placeholder="--qos=debug, one per line",
    )
    slurm_pending_timeout = setting(
        Seconds(300.0, help="Seconds a Slurm job may stay pending (default 300)."),
        label="Pending timeout (s)",
        flag="--pending-timeout",
        launcher="slurm",
    )
    profile = setting(
        Text("", help="ipyparallel profile to connect to (launcher profile)."),
        label="Profile",
        launcher="profile",
        placeholder="default",
    )
    cluster_id = setting(
        Text("", help="ipyparallel cluster id (launcher profile)."),
        label="Cluster id",
        launcher="profile",
    )

    @classmethod
    def setting_traits(cls) -> dict[str, TraitType[Any, Any]]:
        """Every setting's trait, in the order they are declared (subclasses' last)."""
        return dict(_setting_traits(cls))

    @classmethod
    def relevant(cls, launcher: str) -> list[str]:
        """The settings that matter with ``launcher``: the common ones and its own."""
        return [
            name
            for name, trait in cls.setting_traits().items()
            if trait.metadata.get("launcher") in ("", launcher)
        ]

    @classmethod
    def cluster_settings(cls) -> set[str]:
        """The settings that define the cluster itself: its layout, launcher and environment."""
        return {"nodes", "procs_per_node", "launcher", "env"} | {
            name for name, trait in cls.setting_traits().items() if trait.metadata.get("launcher")
        }

    def values(self) -> dict[str, Any]:
        """Every setting as a plain dict."""
        return {name: getattr(self, name) for name in self.setting_traits()}

    def check(self) -> DistributedSettings:
        """Raise ``SettingError`` for settings that are fine alone but not together."""
        if self.nodes * self.procs_per_node > MAX_RANKS:
            trait = self.setting_traits()["nodes"]
            raise SettingError(
                "nodes",
                flag_of(trait),
                str(trait.metadata["label"]),
                f"{self.nodes} × --procs-per-node {self.procs_per_node} asks for "
                f"{self.nodes * self.procs_per_node} ranks; at most {MAX_RANKS} are supported.",
            )
        return self

    def launch_spec(self, launcher: str | None = None) -> LaunchSpec:
        """The launcher's own settings (and those it uses) and the ranks' environment; for
        ``launcher`` if given, else for the one these settings name."""
        chosen = launcher or self.launcher
        traits = self.setting_traits()
        names = [n for n, t in traits.items() if t.metadata.get("launcher") == chosen]
        uses = get_launcher(chosen).uses
        options = {name: _frozen(getattr(self, name)) for name in [*names, *uses]}
        return LaunchSpec(
            launcher=chosen,
            options=tuple(sorted(options.items())),
            env=tuple(sorted(self.env.items())),
        )

    def magic_line(self, defaults: DistributedSettings | None = None) -> str:
        """The ``%%distributed`` line that asks for these settings (differences from defaults)."""
        base = (defaults or type(self)()).values()
        traits = self.setting_traits()
        parts = ["%%distributed"]
        for name in self.relevant(self.launcher):
            value = getattr(self, name)
            if value == base[name]:
                continue
            flag = flag_of(traits[name])
            if isinstance(value, dict):
                parts += [f"{flag} {shlex.quote(f'{k}={v}')}" for k, v in sorted(value.items())]
            elif isinstance(value, list):
                parts += [shlex.quote(f"{flag}={item}") for item in value]
            else:
                text = f"{value:g}" if isinstance(value, float) else str(value)
                parts.append(f"{flag} {shlex.quote(text)}")
        return " ".join(parts)


@functools.cache
def _setting_traits(cls: type[DistributedSettings]) -> tuple[tuple[str, TraitType[Any, Any]], ...]:
    traits = cls.class_traits()
    found: dict[str, TraitType[Any, Any]] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, TraitType) and "label" in value.metadata:
                found[name] = traits[name]
    return tuple(found.items())


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
