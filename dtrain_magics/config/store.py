"""The settings of one kernel, in layers: flag over form over config file over IPython config.

The config file (``<jupyter config dir>/dtrain_magics_config.json``) is what the form's Save
writes, in traitlets' own JSON format, and traitlets' JSON loader reads it. ``ipython_config.py``
reaches the settings through the shell, their parent. Each resolved value remembers its source.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from traitlets.config import Config
from traitlets.config.loader import ConfigFileNotFound, JSONFileConfigLoader

from ..errors import BadOptions
from .settings import DistributedSettings

CONFIG_FILE = "dtrain_magics_config.json"
SECTION = "DistributedSettings"
RESOLVED_KEPT = 64  # the flag lines of one notebook's cells, with room to spare


def config_path() -> Path:
    from jupyter_core.paths import jupyter_config_dir

    return Path(jupyter_config_dir()) / CONFIG_FILE


def load_file(
    path: Path | None = None, settings_class: type[DistributedSettings] = DistributedSettings
) -> dict[str, Any]:
    """The settings stored in the config file (empty if there is none), validated."""
    path = path or config_path()
    try:
        config = JSONFileConfigLoader(path.name, str(path.parent)).load_config()
    except ConfigFileNotFound:
        return {}
    except ValueError as e:
        raise BadOptions(f"{path} is not valid JSON ({e}); fix or delete it.") from None
    section = dict(config.get(SECTION, {}))
    unknown = sorted(set(section) - set(settings_class.setting_traits()))
    if unknown:
        raise BadOptions(f"{path} has unknown settings {', '.join(unknown)}.")
    settings_class(**section).check()  # validate
    return section


def save_file(
    values: dict[str, Any],
    path: Path | None = None,
    settings_class: type[DistributedSettings] = DistributedSettings,
) -> Path:
    """Write the settings that differ from the defaults, as a traitlets JSON config file."""
    path = path or config_path()
    defaults = settings_class().values()
    changed = {k: v for k, v in values.items() if defaults.get(k) != v}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({SECTION: changed}, indent=1) + "\n", encoding="utf-8")
    return path


class SettingsStore:
    """The kernel's settings: IPython config, config file, values applied from the form."""

    def __init__(
        self, parent: Any = None, settings_class: type[DistributedSettings] = DistributedSettings
    ) -> None:
        self.parent = parent  # the shell: c.DistributedSettings.* in ipython_config.py
        self.settings_class = settings_class
        self.file_values: dict[str, Any] = {}
        self.applied: dict[str, Any] = {}
        self.version = 0  # counts changes of the form's and the file's values
        self._resolved: dict[str, tuple[DistributedSettings, dict[str, str]]] = {}

    def load(self, path: Path | None = None) -> None:
        self.file_values = load_file(path, self.settings_class)
        self.version += 1

    def save(self, values: dict[str, Any], path: Path | None = None) -> Path:
        """Write ``values`` to the config file; they become the file layer (the form's empty)."""
        path = save_file(values, path, self.settings_class)
        self.file_values, self.applied = load_file(path, self.settings_class), {}
        self.version += 1
        return path

    def _ipython_values(self) -> dict[str, Any]:
        config = getattr(self.parent, "config", None) or Config()
        section = config.get(SECTION, {})
        traits = self.settings_class.setting_traits()
        return {k: v for k, v in section.items() if k in traits}

    def _make(self, values: dict[str, Any]) -> DistributedSettings:
        config = Config()
        config[SECTION] = Config({**self._ipython_values(), **values})
        return self.settings_class(parent=self.parent, config=config)

    def defaults(self) -> DistributedSettings:
        """Form over file over IPython config over built-in defaults."""
        return self._make({**self.file_values, **self.applied})

    def apply(self, values: dict[str, Any]) -> None:
        """Make ``values`` the defaults of later cells (validated first, all or nothing)."""
        self.settings_class(**values).check()
        base = self._make(self.file_values).values()
        self.applied = {k: v for k, v in values.items() if base.get(k) != v}
        self.version += 1

    def reset(self) -> None:
        self.applied = {}
        self.version += 1

    def resolve(self, flags: dict[str, Any]) -> tuple[DistributedSettings, dict[str, str]]:
        """Settings for one cell and the source of each value that is not the default.

        The same flags over the same layers give the same settings: a cell run again reuses
        them rather than building and validating a configurable each time (callers treat them
        as read-only)."""
        ipython = self._ipython_values()
        layers = (
            ("flag", flags),
            ("form", self.applied),
            ("config file", self.file_values),
            ("IPython config", ipython),
        )
        key = repr([sorted(values.items()) for _, values in layers])
        known = self._resolved.get(key)
        if known is not None:
            return known[0], dict(known[1])
        settings = self._make({**self.file_values, **self.applied, **flags}).check()
        sources = {}
        for source, values in reversed(layers):
            sources.update(dict.fromkeys(values, source))
        if len(self._resolved) >= RESOLVED_KEPT:
            self._resolved.clear()
        self._resolved[key] = (settings, sources)
        return settings, dict(sources)
