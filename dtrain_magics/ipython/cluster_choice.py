"""Which cluster a cell runs on, and with which backend: the running one as it is, changed only
where the cell's flags, or settings applied in the form since it started, say so."""

from __future__ import annotations

import dataclasses

from ..cluster.launchers import LAUNCHERS, LaunchSpec, Layout
from ..cluster.training_cluster import TrainingCluster
from ..config.options import RunOptions
from ..config.settings import DistributedSettings
from ..config.traits import MAX_RANKS, flag_of
from ..errors import BadOptions

RanksRan = tuple[str, str]
"""The backend and device (as asked: ``auto``, ``cpu``, ``cuda``) the ranks last ran."""


def cluster_for(
    cluster: TrainingCluster,
    flags: set[str],
    settings: DistributedSettings,
    settings_changed: bool,
    lost: tuple[Layout, LaunchSpec] | None = None,
) -> tuple[Layout, LaunchSpec, str | None]:
    """The cluster a cell runs on, and a sentence if that restarts the running one.

    ``flags``: the settings the cell's flags give; ``settings``: those flags over the defaults;
    ``settings_changed``: settings were applied in the form (or the config file) since the
    cluster started. A cell without flags for the cluster (layout, launcher and what it uses,
    rank environment) runs on the running cluster as it is; one with some of them changes what
    they name and keeps the rest as the running cluster has it. Changed settings apply in full.
    ``lost``: the cluster that ran last, gone without ``%dtrain stop`` (a start or restart
    interrupted, its processes killed), which a cell starts again as the running one.
    """
    layout, spec = Layout(settings.nodes, settings.procs_per_node), settings.launch_spec()
    uses = {name for launcher in LAUNCHERS.values() for name in launcher.uses}
    flags = flags & (type(settings).cluster_settings() | uses)
    if not cluster.running and lost is not None and not settings_changed:
        layout, spec = running_except(*lost, flags, settings) if flags else lost
        return layout, spec, None
    ran = cluster.layout
    if not cluster.running or ran is None or not cluster.needs_start(layout, spec):
        return layout, spec, None
    if settings_changed:
        why = "the settings applied in the form changed since it started"
    elif not flags:
        return ran, cluster.spec, None
    else:
        layout, spec = running_except(ran, cluster.spec, flags, settings)
        if not cluster.needs_start(layout, spec):
            return layout, spec, None
        why = "this cell's flags ask for another cluster"
    was, now = described(ran, cluster.spec), described(layout, spec)
    return layout, spec, f"The cluster was restarted ({was} → {now}): {why}."


def running_except(
    ran: Layout, ran_spec: LaunchSpec, flags: set[str], settings: DistributedSettings
) -> tuple[Layout, LaunchSpec]:
    """The running cluster's layout and spec (``ran``, ``ran_spec``), with what ``flags`` name
    taken from ``settings``: ``--env FOO=1`` alone keeps the running nodes. Another launcher
    takes its own settings and layout, and the running environment unless ``--env`` is given.
    """
    if "launcher" in flags and settings.launcher != ran_spec.launcher:
        spec = settings.launch_spec()
        env = spec.env if "env" in flags else ran_spec.env
        return Layout(settings.nodes, settings.procs_per_node), dataclasses.replace(spec, env=env)
    layout = Layout(
        settings.nodes if "nodes" in flags else ran.nodes,
        settings.procs_per_node if "procs_per_node" in flags else ran.procs_per_node,
    )
    if layout.ranks > MAX_RANKS:
        raise BadOptions(
            f"{layout.nodes} nodes × {layout.procs_per_node} procs per node (the running "
            f"cluster's, where this cell gives none) make {layout.ranks} ranks; at most "
            f"{MAX_RANKS} are supported."
        )
    asked = settings.launch_spec(ran_spec.launcher)  # the running launcher's, as flags say
    options = dict(ran_spec.options)
    options.update((name, value) for name, value in asked.options if name in flags)
    env = asked.env if "env" in flags else ran_spec.env
    return layout, LaunchSpec(ran_spec.launcher, tuple(sorted(options.items())), env)


def check_launcher_flags(
    flags: set[str], launcher: str, settings_class: type[DistributedSettings]
) -> None:
    """``BadOptions`` for a flag of another launcher than the one the cell runs with (it would
    be ignored): ``--partition`` on the local launcher."""
    relevant = set(settings_class.relevant(launcher))
    traits = settings_class.setting_traits()
    for name in sorted(flags - relevant):
        owner = traits[name].metadata.get("launcher")
        if owner:
            flag = flag_of(traits[name])
            raise BadOptions(
                f"{flag} is a setting of the {owner} launcher, and this cell runs with the "
                f"{launcher} launcher: add --launcher {owner}, or leave {flag} out."
            )


def ranks_as_they_are(
    ran: RanksRan | None, flags: set[str], options: RunOptions, settings_changed: bool
) -> RunOptions:
    """``options`` with the backend and device the ranks last ran (``ran``, None where no
    cluster runs), where the cell names neither and no settings were applied in the form
    since: the defaults are for a new cluster."""
    if ran is None or settings_changed:
        return options
    backend = options.backend if "backend" in flags else ran[0]
    device = options.device if "device" in flags else ran[1]
    return dataclasses.replace(options, backend=backend, device=device)


def described(layout: Layout, spec: LaunchSpec) -> str:
    """``2 ranks (2 nodes × 1 proc), local launcher, --env FOO``: the environment's names only
    (its values may be secrets from the form or config file)."""
    env = ", ".join(name for name, _ in spec.env)
    return f"{layout}, {spec.launcher} launcher" + (f", --env {env}" if env else "")
