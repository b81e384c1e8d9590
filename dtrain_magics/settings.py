"""The settings of distributed runs: one traitlets object shared by flags, form and config file.

Precedence: a ``%%distributed`` flag beats a value applied from the form, which beats the
config file (``<jupyter config dir>/dtrain_magics_config.json``, loaded by ``%load_ext``),
which beats the default. Each resolved value remembers where it came from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from traitlets import Dict, Enum, Float, HasTraits, Integer, List, TraitError, Unicode, validate
from traitlets.config import Configurable

from .launchers import LAUNCHERS, LaunchSpec, SlurmOptions
from .options import BACKENDS, DEVICES, MAX_RANKS, RunOptions

CONFIG_FILE = "dtrain_magics_config.json"

# settings that only matter for one launcher (the form shows them only for that launcher)
LAUNCHER_FIELDS = {
    "local": (),
    "mpi": ("hostfile",),
    "slurm": (
        "slurm_partition",
        "slurm_account",
        "slurm_time_limit",
        "slurm_options",
        "slurm_pending_timeout",
    ),
    "profile": ("profile", "cluster_id"),
}
COMMON_FIELDS = ("launcher", "nodes", "procs_per_node", "device", "backend", "timeout", "env")
FLAGS = {  # setting → %%distributed flag
    "launcher": "--launcher",
    "nodes": "--nodes",
    "procs_per_node": "--procs-per-node",
    "device": "--device",
    "backend": "--backend",
    "timeout": "--timeout",
    "env": "--env",
    "hostfile": "--hostfile",
    "slurm_partition": "--partition",
    "slurm_account": "--account",
    "slurm_time_limit": "--time-limit",
    "slurm_options": "--sbatch-option",
    "slurm_pending_timeout": "--pending-timeout",
    "profile": "--profile",
    "cluster_id": "--cluster-id",
}


class DistributedSettings(Configurable):
    """Defaults for ``%%distributed`` cells."""

    launcher = Enum(
        LAUNCHERS,
        default_value="local",
        config=True,
        help="How engines start: local (mpiexec here), mpi (hostfile), slurm, "
        "or profile (connect to a running ipyparallel cluster).",
    )
    nodes = Integer(1, config=True, help="Number of nodes.")
    procs_per_node = Integer(1, config=True, help="Ranks per node.")
    device = Enum(
        DEVICES,
        default_value="auto",
        config=True,
        help="auto: one GPU per local rank where there are GPUs, else CPU.",
    )
    backend = Enum(
        BACKENDS,
        default_value="horovod",
        config=True,
        help="horovod, or torch (torch.distributed).",
    )
    timeout = Float(
        None,
        allow_none=True,
        config=True,
        help="Interrupt every rank after this many seconds (None: no timeout).",
    )
    env = Dict(
        value_trait=Unicode(),
        key_trait=Unicode(),
        config=True,
        help="Environment variables for every rank.",
    )
    hostfile = Unicode("", config=True, help="Open MPI hostfile (launcher mpi).")
    slurm_partition = Unicode("", config=True, help="Slurm partition (launcher slurm).")
    slurm_account = Unicode("", config=True, help="Slurm account (launcher slurm).")
    slurm_time_limit = Unicode("", config=True, help="Slurm time limit, e.g. 01:00:00.")
    slurm_options = List(Unicode(), config=True, help="Extra sbatch options, e.g. --qos=debug.")
    slurm_pending_timeout = Float(
        300.0, config=True, help="Seconds a Slurm job may stay pending before giving up."
    )
    profile = Unicode("", config=True, help="ipyparallel profile to connect to (launcher profile).")
    cluster_id = Unicode("", config=True, help="ipyparallel cluster id (launcher profile).")

    @validate("nodes", "procs_per_node")
    def _positive(self, proposal: Any) -> int:
        value = proposal["value"]
        if value < 1 or value > MAX_RANKS:
            flag = FLAGS[proposal["trait"].name]
            raise TraitError(f"{flag} must be a positive integer up to {MAX_RANKS}, got {value!r}.")
        return int(value)

    @validate("timeout", "slurm_pending_timeout")
    def _seconds(self, proposal: Any) -> float | None:
        value = proposal["value"]
        if value is not None and (not math.isfinite(value) or value <= 0):
            flag = FLAGS[proposal["trait"].name]
            raise TraitError(f"{flag} must be a positive number of seconds, got {value!r}.")
        return value

    @validate("env")
    def _env(self, proposal: Any) -> dict[str, str]:
        for name in proposal["value"]:
            if not name or "=" in name or not name.replace("_", "a").isalnum():
                raise TraitError(
                    f"--env names must be like NAME=VALUE, and {name!r} is not a name."
                )
        return dict(proposal["value"])

    def values(self) -> dict[str, Any]:
        """Every setting as a plain dict."""
        return {name: getattr(self, name) for name in FLAGS}

    def launch_spec(self) -> LaunchSpec:
        return LaunchSpec(
            launcher=self.launcher,
            hostfile=self.hostfile,
            slurm=SlurmOptions(
                partition=self.slurm_partition,
                account=self.slurm_account,
                time_limit=self.slurm_time_limit,
                extra_sbatch_options=list(self.slurm_options),
                pending_timeout=self.slurm_pending_timeout,
                gpus_per_task=1 if self.device == "cuda" else 0,
            ),
            profile=self.profile,
            cluster_id=self.cluster_id,
            env=tuple(sorted(self.env.items())),
        )

    def run_options(self, push: tuple[str, ...] = (), pull: tuple[str, ...] = ()) -> RunOptions:
        return RunOptions(
            nodes=self.nodes,
            procs_per_node=self.procs_per_node,
            backend=self.backend,
            device=self.device,
            launcher=self.launcher,
            timeout=self.timeout,
            push=push,
            pull=pull,
        )

    def magic_line(self, defaults: DistributedSettings | None = None) -> str:
        """The ``%%distributed`` line that asks for these settings (differences from defaults)."""
        base = (defaults or DistributedSettings()).values()
        parts = ["%%distributed"]
        for name, value in self.values().items():
            if name not in _relevant(self.launcher) or value == base[name]:
                continue
            flag = FLAGS[name]
            if name == "env":
                parts += [f"{flag} {k}={v}" for k, v in sorted(value.items())]
            elif name == "slurm_options":
                parts += [f"{flag}={opt}" for opt in value]
            else:
                parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
        return " ".join(parts)


def _relevant(launcher: str) -> tuple[str, ...]:
    return COMMON_FIELDS + LAUNCHER_FIELDS.get(launcher, ())


def config_path() -> Path:
    from jupyter_core.paths import jupyter_config_dir

    return Path(jupyter_config_dir()) / CONFIG_FILE


def load_file(path: Path | None = None) -> dict[str, Any]:
    """The settings stored in the config file (empty if there is none)."""
    path = path or config_path()
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    section = data.get("DistributedSettings", {})
    unknown = sorted(set(section) - set(FLAGS))
    if unknown:
        raise TraitError(f"{path} has unknown settings {', '.join(unknown)}.")
    DistributedSettings(**section)  # validate
    return dict(section)


def save_file(values: dict[str, Any], path: Path | None = None) -> Path:
    """Write settings that differ from the defaults to the config file."""
    path = path or config_path()
    defaults = DistributedSettings().values()
    changed = {k: v for k, v in values.items() if defaults.get(k) != v}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"DistributedSettings": changed}, indent=1) + "\n", encoding="utf-8")
    return path


class SettingsStore(HasTraits):
    """The kernel's settings: file values, values applied from the form, their sources."""

    def __init__(self) -> None:
        super().__init__()
        self.file_values: dict[str, Any] = {}
        self.applied: dict[str, Any] = {}

    def load(self) -> None:
        self.file_values = load_file()

    def defaults(self) -> DistributedSettings:
        """Form over file over built-in defaults."""
        return DistributedSettings(**{**self.file_values, **self.applied})

    def apply(self, values: dict[str, Any]) -> None:
        base = DistributedSettings(**self.file_values).values()
        DistributedSettings(**values)  # validate everything before taking any of it
        self.applied = {k: v for k, v in values.items() if base.get(k) != v}

    def reset(self) -> None:
        self.applied = {}

    def resolve(self, flags: dict[str, Any]) -> tuple[DistributedSettings, dict[str, str]]:
        """Settings for one cell (flags over form over file) and the source of each non-default."""
        values = {**self.file_values, **self.applied, **flags}
        settings = DistributedSettings(**values)
        sources = {}
        for name in values:
            sources[name] = (
                "flag" if name in flags else "form" if name in self.applied else "config file"
            )
        return settings, sources
