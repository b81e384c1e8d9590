"""Which cluster a cell runs on, and with which backend: the running one as it is, changed only
where the cell's flags, or settings applied in the form since it started, say so."""

from __future__ import annotations

import dataclasses

from ..cluster.launchers import LaunchSpec, Layout
from ..cluster.training_cluster import TrainingCluster
from ..config.options import RunOptions


def cluster_for(
    cluster: TrainingCluster,
    flags: set[str],
    layout: Layout,
    spec: LaunchSpec,
    settings_changed: bool,
) -> tuple[Layout, LaunchSpec, str | None]:
    """The cluster a cell runs on, and a sentence if that restarts the running one.

    ``flags``: the cell's flags for the cluster (layout, launcher, rank environment);
    ``layout`` and ``spec``: what those flags and the settings ask for; ``settings_changed``:
    settings were applied in the form (or the config file) since the cluster started. A cell
    without such flags runs on the running cluster as it is; one with some of them changes what
    they name and keeps the rest as the running cluster has it. Changed settings apply in full.
    """
    ran = cluster.layout
    if not cluster.running or ran is None or not cluster.needs_start(layout, spec):
        return layout, spec, None
    if not flags:
        if not settings_changed:
            return ran, cluster.spec, None
        why = "the settings applied in the form changed since it started"
    else:
        if not settings_changed:
            layout, spec = running_except(ran, cluster.spec, flags, layout, spec)
            if not cluster.needs_start(layout, spec):
                return layout, spec, None
        why = "this cell's flags ask for another cluster"
    was, now = described(ran, cluster.spec), described(layout, spec)
    return layout, spec, f"The cluster was restarted ({was} → {now}): {why}."


def running_except(
    ran: Layout, ran_spec: LaunchSpec, flags: set[str], layout: Layout, spec: LaunchSpec
) -> tuple[Layout, LaunchSpec]:
    """The running cluster's layout and spec (``ran``, ``ran_spec``), with what ``flags`` name
    taken from ``layout`` and ``spec``: ``--env FOO=1`` alone keeps the running nodes."""
    layout = Layout(
        layout.nodes if "nodes" in flags else ran.nodes,
        layout.procs_per_node if "procs_per_node" in flags else ran.procs_per_node,
    )
    env = spec.env if "env" in flags else ran_spec.env
    if "launcher" in flags and spec.launcher != ran_spec.launcher:
        return layout, dataclasses.replace(spec, env=env)  # another launcher, its own settings
    options = dict(ran_spec.options)
    if spec.launcher == ran_spec.launcher:
        options.update((name, value) for name, value in spec.options if name in flags)
    return layout, LaunchSpec(ran_spec.launcher, tuple(sorted(options.items())), env)


def ranks_as_they_are(
    cluster: TrainingCluster, flags: set[str], options: RunOptions, settings_changed: bool
) -> RunOptions:
    """``options`` with the backend and device the running ranks have, where the cell names
    neither and no settings were applied in the form since: the defaults are for new ranks."""
    key = cluster.backends.key
    if key is None or not cluster.running or settings_changed:
        return options
    backend = options.backend if "backend" in flags else key[0]
    device = options.device if "device" in flags else key[1]
    return dataclasses.replace(options, backend=backend, device=device)


def described(layout: Layout, spec: LaunchSpec) -> str:
    """``2 ranks (2 nodes × 1 proc), local launcher, --env FOO=bar``."""
    env = "".join(f" {name}={value}" for name, value in spec.env)
    return f"{layout}, {spec.launcher} launcher" + (f", --env{env}" if env else "")
