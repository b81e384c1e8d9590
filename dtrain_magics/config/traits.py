"""Trait types for settings: each validates its value and says what is wrong in one sentence.

A setting is a trait tagged with its front-end names (see ``setting``): its flag, an optional
short flag, its label in the form, and the launcher it belongs to (none: every launcher). The
flags, the form and the config file are all made from these traits; validation lives here only.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn, TypeVar

from traitlets import Dict, Enum, Float, Integer, List, TraitError, TraitType, Unicode

from ..errors import SettingError

MAX_RANKS = 1024
MAX_COUNT = 100
T = TypeVar("T", bound=TraitType[Any, Any])


def setting(
    trait: T,
    *,
    label: str,
    flag: str = "",
    short: str = "",
    launcher: str = "",
    placeholder: str = "",
    metavar: str = "",
    const: str = "",
) -> T:
    """Tag ``trait`` as a setting (configurable) with the names the front ends show.

    ``const`` is the value of the flag given alone (``--mlflow``); without one the flag takes a
    value.
    """
    return trait.tag(
        config=True,
        label=label,
        flag=flag,
        short=short,
        launcher=launcher,
        placeholder=placeholder,
        metavar=metavar,
        const=const,
    )


def flag_of(trait: TraitType[Any, Any]) -> str:
    """The trait's ``%%distributed`` flag (``--`` and its name with dashes by default)."""
    name = trait.name or ""
    return str(trait.metadata.get("flag") or "--" + name.replace("_", "-"))


def label_of(trait: TraitType[Any, Any]) -> str:
    return str(trait.metadata.get("label") or trait.name)


def fail(trait: TraitType[Any, Any], problem: str) -> NoReturn:
    """Raise the ``SettingError`` for ``trait``: ``problem`` follows the setting's name."""
    raise SettingError(trait.name or "", flag_of(trait), label_of(trait), problem)


def check_value(trait: TraitType[Any, Any], value: Any) -> Any:
    """``value`` as ``trait`` validates it; a ``SettingError`` naming the setting if it is bad."""
    validate = getattr(trait, "validate", None)
    if validate is None:
        return value
    try:
        return validate(None, value)
    except SettingError:
        raise
    except TraitError as e:  # a plain traitlets trait says it its own way
        fail(trait, f"has an invalid value ({e}).")


class SettingTrait:
    """What the flags and the form need of a setting's trait, beyond traitlets' own."""

    def from_text(self, text: str) -> Any:
        """The value a form field's text stands for (validated by the caller)."""
        return text


class PositiveInt(SettingTrait, Integer[Any, Any]):
    """An integer from ``lowest`` (1) to ``highest`` (``MAX_RANKS``)."""

    lowest = 1
    highest = MAX_RANKS

    def validate(self, obj: Any, value: Any) -> int:
        low, high = self.lowest, self.highest
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            kind = "a positive integer" if low == 1 else f"a whole number from {low}"
            fail(self, f"must be {kind} up to {high}, got {value!r}.")
        return int(value)

    def from_text(self, text: str) -> Any:
        try:
            return int(text)
        except ValueError:
            return text  # the validation names it


class Count(PositiveInt):
    """A whole number from 0 to ``MAX_COUNT`` (how many times to do something again)."""

    lowest = 0
    highest = MAX_COUNT


class Seconds(SettingTrait, Float[Any, Any]):
    """A positive, finite number of seconds; ``None`` where ``allow_none`` (no limit)."""

    def validate(self, obj: Any, value: Any) -> float | None:
        if value is None and self.allow_none:
            return None
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                fail(self, f"must be a positive number of seconds, got {value!r}.")
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value <= 0:
            fail(self, f"must be a positive number of seconds, got {value!r}.")
        return float(value)

    def from_text(self, text: str) -> Any:
        text = text.strip()
        if self.allow_none and text.lower() in ("", "none"):
            return None
        return text

    def from_string(self, s: str) -> Any:
        """A flag's text: ``none`` (any case) where ``allow_none``, else the text to validate."""
        return self.from_text(s)


class Choice(SettingTrait, Enum[Any]):
    """One of a fixed list of words."""

    def validate(self, obj: Any, value: Any) -> Any:
        if value not in (self.values or ()):
            fail(self, f"must be one of {', '.join(map(str, self.values or ()))}, got {value!r}.")
        return value


class Text(SettingTrait, Unicode[Any, Any]):
    """Free text (a path, a partition name); surrounding blanks are dropped."""

    def validate(self, obj: Any, value: Any) -> str:
        if not isinstance(value, str):
            fail(self, f"must be text, got {value!r}.")
        return value.strip()


class Tracking(Text):
    """Where runs are tracked: off (``""``), ``"on"`` (the tracker's default store), or a URI."""

    OFF = ("", "off", "none", "no", "false")
    ON = ("on", "yes", "true", "default")

    def validate(self, obj: Any, value: Any) -> str:
        if value is None or isinstance(value, bool):
            value = "on" if value else ""
        text = super().validate(obj, value)
        if text.lower() in self.OFF:
            return ""
        if text.lower() in self.ON:
            return "on"
        if any(c.isspace() for c in text):
            fail(self, f"takes on, off or a tracking URI without blanks, got {text!r}.")
        return text


class TextList(SettingTrait, List[Any]):
    """Several words, one per line in the form, the flag repeated on the command line."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(Unicode(), **kwargs)

    def validate(self, obj: Any, value: Any) -> list[str]:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            fail(self, f"must be a list of words, got {value!r}.")
        return [v.strip() for v in value if v.strip()]

    def from_text(self, text: str) -> Any:
        return [line.strip() for line in text.splitlines() if line.strip()]


class EnvVars(SettingTrait, Dict):
    """Environment variables, ``NAME=VALUE`` (one per line in the form)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(value_trait=Unicode(), key_trait=Unicode(), **kwargs)

    def validate(self, obj: Any, value: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            fail(self, f"takes NAME=VALUE, got {value!r}.")
        for name in value:
            if not isinstance(name, str) or not name or not name.replace("_", "a").isalnum():
                fail(self, f"takes NAME=VALUE, and {name!r} is not a variable name.")
        return {str(k): str(v) for k, v in value.items()}

    def pair(self, text: str) -> tuple[str, str]:
        """``"NAME=VALUE"`` → ``("NAME", "VALUE")``."""
        name, sep, value = text.strip().partition("=")
        if not sep or not name:
            fail(self, f"takes NAME=VALUE, got {text.strip()!r}.")
        return name, value

    def from_text(self, text: str) -> Any:
        return dict(self.pair(line) for line in text.splitlines() if line.strip())
