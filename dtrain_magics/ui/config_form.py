"""``%dtrain config``: a form for the run settings and the cluster, from core ipywidgets.

One field per setting, made from its trait (a dropdown for a choice, a text box otherwise);
launcher-specific fields show only for the chosen launcher. Invalid values are marked beside the
field with the reason and are not applied. The equivalent ``%%distributed`` line follows every
change.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
import threading
from collections.abc import Callable
from html import escape
from typing import Any

from traitlets import Enum, Integer, TraitType

from ..cluster.launchers import Layout, check_spec, cores_here
from ..cluster.training_cluster import TrainingCluster
from ..config.store import SettingsStore
from ..config.traits import SettingTrait, check_value, label_of
from ..errors import ClusterStartError, SettingError
from ..run.gate import RunGate
from ..store.schema import ClusterRecord
from .headline import cluster_line

log = logging.getLogger(__name__)


def _fill(resources: Any) -> None:
    resources.value = f"<small>{detected_resources()}</small>"


@functools.cache
def detected_resources() -> str:
    """Cores, GPUs (names) and Slurm nodes of this machine, as one line each."""
    lines = [f"{cores_here()} CPU cores"]
    gpus = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    lines.append(f"GPUs: {', '.join(gpus.splitlines())}" if gpus else "GPUs: none")
    nodes = _run(["sinfo", "-h", "-N", "-o", "%N %c %t"], timeout=3)
    if nodes:
        lines.append("Slurm nodes: " + "; ".join(nodes.splitlines()))
    return "<br>".join(escape(line) for line in lines)


def copy_button(line: str) -> str:
    """HTML for a button that copies ``line`` to the clipboard (where the browser allows it)."""
    script = (
        "navigator.clipboard.writeText(this.dataset.line)"
        ".then(() => { this.textContent = 'Copied'; })"
        ".catch(() => { this.textContent = 'Select the line and copy it'; });"
    )
    return (
        f'<button class="dtrain-copy jupyter-button" title="Copy the magic line" '
        f'data-line="{escape(line, quote=True)}" onclick="{escape(script, quote=True)}">'
        "Copy</button>"
    )


def _run(cmd: list[str], timeout: float = 10) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        log.debug("%s failed", cmd[0], exc_info=True)
        return ""


def field_for(trait: TraitType[Any, Any]) -> Any:
    """The widget that edits ``trait``: a dropdown, an integer box, a text box or area."""
    import ipywidgets as w

    placeholder = str(trait.metadata.get("placeholder") or "")
    if isinstance(trait, Enum):
        return w.Dropdown(options=list(trait.values or ()))
    # continuous_update: the magic line follows every keystroke, not only a lost focus
    if isinstance(trait, Integer):
        return w.IntText(continuous_update=True)
    if isinstance(trait.default_value, dict | list):
        return w.Textarea(placeholder=placeholder, continuous_update=True)
    return w.Text(placeholder=placeholder, continuous_update=True)


def as_text(value: Any) -> Any:
    """A setting's value as its field shows it (text, except for integer boxes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, dict):
        return "\n".join(f"{k}={v}" for k, v in sorted(value.items()))
    if isinstance(value, list):
        return "\n".join(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class ConfigPanel:
    """The settings form and cluster controls for one kernel's settings and cluster."""

    def __init__(
        self,
        store: SettingsStore,
        cluster: TrainingCluster,
        runs: RunGate | None = None,
        stop_run: Callable[[], None] = lambda: None,
        stop_cluster: Callable[[], None] | None = None,
    ) -> None:
        import ipywidgets as w

        self.store = store
        self.cluster = cluster
        self.runs = runs or RunGate()  # a cell running on the cluster, stopped by ``stop_run``
        self.stop_run = stop_run
        self.stop_cluster = stop_cluster  # the magics' (it also forgets the last cluster)
        self.traits = store.settings_class.setting_traits()
        self.fields: dict[str, Any] = {name: field_for(t) for name, t in self.traits.items()}
        # a fixed place for each field's error, so that the form does not move when one shows
        self.errors = {
            name: w.HTML(layout=w.Layout(width="30em", min_height="1.8em")) for name in self.fields
        }
        self.rows = {
            name: w.HBox(
                [
                    w.Label(label_of(self.traits[name]), layout=w.Layout(width="10em")),
                    field,
                    self.errors[name],
                ]
            )
            for name, field in self.fields.items()
        }
        self.magic_line = ""
        self.line = w.HTML(layout=w.Layout(min_height="1.8em"))  # read-only, with its Copy button
        self.copy = w.HTML()  # a plain <button> copying the line (no custom widget needed)
        self.message = w.HTML()
        self.status = w.HTML()
        self.buttons = {
            name: w.Button(description=name)
            for name in ("Apply", "Save", "Reset", "Start", "Stop", "Restart")
        }
        for name, button in self.buttons.items():
            action = getattr(self, name.lower())
            button.on_click(lambda _, action=action: action())
        resources = w.HTML(f"<small>{cores_here()} CPU cores; looking for GPUs …</small>")
        # nvidia-smi and sinfo can take seconds (sinfo waits for an unreachable controller)
        threading.Thread(target=_fill, args=(resources,), daemon=True).start()
        self.widget = w.VBox(
            [
                w.HTML("<b>Distributed training settings</b>"),
                w.HBox([w.VBox(list(self.rows.values())), resources]),
                w.HBox([self.line, self.copy], layout=w.Layout(width="100%")),
                w.HBox([self.buttons[n] for n in ("Apply", "Save", "Reset")]),
                w.HBox([self.buttons[n] for n in ("Start", "Stop", "Restart")] + [self.status]),
                self.message,
            ]
        )
        self.load(self.store.defaults().values())
        for field in self.fields.values():
            field.observe(self._changed, names="value")
        self.refresh_status()
        self.cluster.add_listener(self.refresh_status)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- values -----------------------------------------------------------------------------

    def load(self, values: dict[str, Any]) -> None:
        """Show ``values`` in the fields."""
        for name, value in values.items():
            self.fields[name].value = as_text(value)
        self._changed()

    def values(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The fields as settings values, and the reason each invalid one is invalid."""
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        launcher = self.fields["launcher"].value
        hidden = set(self.traits) - set(self.store.settings_class.relevant(launcher))
        defaults = self.store.defaults().values() if hidden else {}
        for name, field in self.fields.items():
            trait = self.traits[name]
            if name in hidden:  # another launcher's field: as the defaults have it
                values[name] = defaults[name]
                continue
            try:
                value = field.value
                if isinstance(trait, SettingTrait) and isinstance(value, str):
                    value = trait.from_text(value)
                values[name] = check_value(trait, value)
            except SettingError as e:
                errors[name] = e.for_form()
        if not errors:
            try:
                settings = self.store.settings_class(**values).check()
                layout = Layout(settings.nodes, settings.procs_per_node)
                check_spec(settings.launch_spec(), layout)
            except SettingError as e:
                errors[e.name] = e.for_form()
            except ClusterStartError as e:  # beside the field it is about
                errors["hostfile" if "hostfile" in str(e) else "launcher"] = str(e)
        return values, errors

    def _changed(self, change: Any = None) -> None:
        values, errors = self.values()
        for name, label in self.errors.items():
            label.value = (
                f'<span style="color:#c62828">{escape(errors[name])}</span>'
                if name in errors
                else ""
            )
        launcher = values.get("launcher", "local")
        shown = set(self.store.settings_class.relevant(launcher))
        for name, row in self.rows.items():
            row.layout.display = "" if name in shown else "none"
        self.message.value = ""  # an earlier "Applied" no longer says anything about these values
        if errors:
            self.magic_line = ""
            self.line.value = "<i>Correct the marked fields to get the magic line.</i>"
            self.copy.value = ""
        else:
            self.magic_line = self.store.settings_class(**values).magic_line()
            self.line.value = f"<code>{escape(self.magic_line)}</code>"
            self.copy.value = copy_button(self.magic_line)

    # -- buttons ----------------------------------------------------------------------------

    def apply(self) -> bool:
        """Make the fields the defaults of later cells in this kernel; False if any is invalid."""
        values, errors = self.values()
        if errors:
            self._say("Not applied: " + "; ".join(errors.values()), error=True)
            return False
        self.store.apply(values)
        self._say("Applied: cells without flags use these settings.")
        return True

    def save(self) -> bool:
        """Apply, then write the settings to the config file that ``%load_ext`` reads."""
        if not self.apply():
            return False
        values, _ = self.values()
        path = self.store.save(values)
        self._say(f"Saved to {path}; new kernels load it with %load_ext dtrain_magics.")
        return True

    def reset(self) -> None:
        """Forget applied values and show the config file's (or the built-in) defaults."""
        self.store.reset()
        self.load(self.store.defaults().values())
        self._say("Reset to the config file's settings.")

    def _refuse_while_a_cell_runs(self) -> bool:
        if self.runs.busy:
            self._say("A cell runs on the cluster: stop it first (Stop here, or the cell's).", True)
        return self.runs.busy

    def start(self) -> None:
        if self._refuse_while_a_cell_runs() or not self.apply():
            return
        settings = self.store.defaults()
        self._say("Starting the cluster …")
        layout = Layout(settings.nodes, settings.procs_per_node)
        self.cluster.start_timeout = settings.start_timeout
        try:
            self.cluster.ensure(layout, self._say, settings.launch_spec())
        except Exception as e:
            log.debug("the cluster did not start", exc_info=True)
            self._say(f"The cluster did not start: {e}", error=True)
        self.refresh_status()

    def stop(self) -> None:
        """Stop the cluster; a cell running on it first, as its own Stop button does."""
        if self.runs.busy:
            self._say("Stopping the running cell; the cluster stops once the cell has ended.")
            self.stop_run()
        self.runs.after_run(self._stop_cluster)

    def _stop_cluster(self) -> None:
        (self.stop_cluster or self.cluster.stop)()
        self._say("Cluster stopped.")
        self.refresh_status()

    def restart(self) -> None:
        if self._refuse_while_a_cell_runs():
            return
        if self.cluster.layout is None:
            self.start()
            return
        self.cluster.restart(self._say)
        self.refresh_status()

    def refresh_status(self, record: ClusterRecord | None = None) -> None:
        """Show the cluster's state (``record`` as the cluster reports a change, else asked)."""
        if record is None:
            info: dict[str, Any] = dict(self.cluster.status())
            busy = info.get("busy")
            activity = "" if busy is None else ("busy" if busy else "idle")
        else:
            activity = record["state"] if record["state"] in ("starting", "busy", "idle") else ""
            info = {**record, "state": "running" if activity else record["state"]}
        state = f" · {activity}" if activity else ""
        self.status.value = f"<code>{escape(cluster_line(info))}{state}</code>"

    def _say(self, text: str, error: bool = False) -> None:
        colour = "#c62828" if error else "#2e7d32"
        self.message.value = f'<span style="color:{colour}">{escape(text)}</span>'
