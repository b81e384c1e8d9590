"""``%dtrain config``: a form for the run settings and the cluster, from core ipywidgets.

Each field is a setting of ``DistributedSettings``; launcher-specific fields show only for the
chosen launcher. Invalid values are marked beside the field with the reason and are not applied.
The equivalent ``%%distributed`` line follows every change.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html import escape
from typing import TYPE_CHECKING, Any

from traitlets import TraitError

from .settings import (
    COMMON_FIELDS,
    FLAGS,
    LAUNCHER_FIELDS,
    DistributedSettings,
    load_file,
    save_file,
)

if TYPE_CHECKING:
    from .magics import DistributedMagics

_LABELS = {
    "launcher": "Launcher",
    "nodes": "Nodes",
    "procs_per_node": "Procs per node",
    "device": "Device",
    "backend": "Backend",
    "timeout": "Timeout (s)",
    "env": "Rank env",
    "hostfile": "Hostfile",
    "slurm_partition": "Partition",
    "slurm_account": "Account",
    "slurm_time_limit": "Time limit",
    "slurm_options": "sbatch options",
    "slurm_pending_timeout": "Pending timeout (s)",
    "profile": "Profile",
    "cluster_id": "Cluster id",
}


def detected_resources() -> str:
    """Cores, GPUs (names) and Slurm nodes of this machine, as one line each."""
    lines = [f"{os.cpu_count() or 1} CPU cores"]
    gpus = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    lines.append(f"GPUs: {', '.join(gpus.splitlines())}" if gpus else "GPUs: none")
    nodes = _run(["sinfo", "-h", "-N", "-o", "%N %c %t"])
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


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class ConfigPanel:
    """The settings form and cluster controls for one kernel's ``%%distributed`` magics."""

    def __init__(self, magics: DistributedMagics) -> None:
        import ipywidgets as w

        self.magics = magics
        self.store = magics.settings
        self.cluster = magics.cluster
        self.fields: dict[str, Any] = {
            "launcher": w.Dropdown(options=list(LAUNCHER_FIELDS)),
            "nodes": w.IntText(),
            "procs_per_node": w.IntText(),
            "device": w.Dropdown(options=["auto", "cpu", "cuda"]),
            "backend": w.Dropdown(options=["horovod", "torch"]),
            "timeout": w.Text(placeholder="none"),
            "env": w.Textarea(placeholder="NAME=VALUE, one per line"),
            "hostfile": w.Text(placeholder="/path/to/hostfile"),
            "slurm_partition": w.Text(),
            "slurm_account": w.Text(),
            "slurm_time_limit": w.Text(placeholder="01:00:00"),
            "slurm_options": w.Textarea(placeholder="--qos=debug, one per line"),
            "slurm_pending_timeout": w.FloatText(),
            "profile": w.Text(placeholder="default"),
            "cluster_id": w.Text(),
        }
        self.errors = {name: w.HTML() for name in self.fields}
        self.rows = {
            name: w.HBox(
                [w.Label(_LABELS[name], layout=w.Layout(width="10em")), field, self.errors[name]]
            )
            for name, field in self.fields.items()
        }
        self.line = w.Text(description="Magic line", disabled=False, layout=w.Layout(width="100%"))
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
        resources = w.HTML(f"<small>{detected_resources()}</small>")
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
        self.load(self.store.defaults())
        for field in self.fields.values():
            field.observe(self._changed, names="value")
        self.refresh_status()
        self.cluster.add_listener(self.refresh_status)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- values -----------------------------------------------------------------------------

    def load(self, settings: DistributedSettings) -> None:
        """Show ``settings`` in the fields."""
        for name, value in settings.values().items():
            field = self.fields[name]
            if name == "env":
                field.value = "\n".join(f"{k}={v}" for k, v in sorted(value.items()))
            elif name == "slurm_options":
                field.value = "\n".join(value)
            elif name == "timeout":
                field.value = "" if value is None else f"{value:g}"
            else:
                field.value = value
        self._changed()

    def values(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The fields as settings values, and the reason each invalid one is invalid."""
        raw = {name: field.value for name, field in self.fields.items()}
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name, value in raw.items():
            try:
                value = _convert(name, value)
                DistributedSettings(**{name: value})
                values[name] = value
            except (TraitError, ValueError) as e:
                errors[name] = _reason(name, e)
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
        shown = set(COMMON_FIELDS) | set(LAUNCHER_FIELDS.get(launcher, ()))
        for name, row in self.rows.items():
            row.layout.display = "" if name in shown else "none"
        if not errors:
            self.line.value = DistributedSettings(**values).magic_line()
            self.copy.value = copy_button(self.line.value)

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
        path = save_file(values)
        self.store.file_values, self.store.applied = load_file(path), {}
        self._say(f"Saved to {path}; new kernels load it with %load_ext dtrain_magics.")
        return True

    def reset(self) -> None:
        """Forget applied values and show the config file's (or the built-in) defaults."""
        self.store.reset()
        self.load(self.store.defaults())
        self._say("Reset to the config file's settings.")

    def start(self) -> None:
        if not self.apply():
            return
        settings = self.store.defaults()
        self._say("Starting the cluster …")
        try:
            self.cluster.ensure(settings.run_options().layout, self._say, settings.launch_spec())
        except Exception as e:
            self._say(f"The cluster did not start: {e}", error=True)
        self.refresh_status()

    def stop(self) -> None:
        self.cluster.stop()
        self._say("Cluster stopped.")
        self.refresh_status()

    def restart(self) -> None:
        if self.cluster.layout is None:
            self.start()
            return
        self.cluster.restart(self._say)
        self.refresh_status()

    def refresh_status(self, info: dict[str, Any] | None = None) -> None:
        """Show the cluster's state (``info`` as the cluster reports a change, else asked now)."""
        from .magics import _format_status

        if info is None:
            info = self.cluster.status()
            busy = info.get("busy")
            activity = "" if busy is None else ("busy" if busy else "idle")
        else:
            activity = info["state"] if info["state"] in ("starting", "busy", "idle") else ""
            info = {**info, "state": "running" if activity else info["state"]}
        state = f" · {activity}" if activity else ""
        self.status.value = f"<code>{escape(_format_status(info))}{state}</code>"

    def _say(self, text: str, error: bool = False) -> None:
        colour = "#c62828" if error else "#2e7d32"
        self.message.value = f'<span style="color:{colour}">{escape(text)}</span>'


def _convert(name: str, value: Any) -> Any:
    if name == "timeout":
        text = str(value).strip()
        if not text or text.lower() == "none":
            return None
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--timeout must be a number of seconds, got {text!r}.") from None
    if name == "env":
        env = {}
        for line in str(value).splitlines():
            if line.strip():
                key, sep, val = line.strip().partition("=")
                if not sep:
                    raise ValueError(f"--env takes NAME=VALUE, got {line.strip()!r}.")
                env[key] = val
        return env
    if name == "slurm_options":
        return [line.strip() for line in str(value).splitlines() if line.strip()]
    return value


def _reason(name: str, error: Exception) -> str:
    text = str(error)
    if "expected any of" in text or "trait of" in text:
        return f"{FLAGS[name]}: {text.split(' trait of ')[0].strip()} has an invalid value."
    return text
