"""The ``%%distributed`` flags of the settings, generated from their traits.

``setting_arguments(DistributedSettings)`` decorates a magic with one argument per setting (the
common ones first, then one argument group per launcher); ``settings_from_args`` turns the parsed
arguments back into setting values. Parsing only converts text: validation is the traits'.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

from IPython.core.magic_arguments import argument, argument_group
from traitlets import Dict, List, TraitType

from ..errors import SettingError
from .settings import DistributedSettings
from .traits import EnvVars, check_value, flag_of

F = TypeVar("F", bound=Callable[..., Any])


def _parser(trait: TraitType[Any, Any]) -> Callable[[str], Any]:
    """An argparse ``type``: the flag's text as the trait's value, or the trait's sentence."""

    def parse(text: str) -> Any:
        try:
            if isinstance(trait, EnvVars):
                return trait.pair(text)
            try:
                value = trait.from_string(text)
            except ValueError:
                value = text  # let the trait say what is wrong with it
            return check_value(trait, value)
        except SettingError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = trait.name or "setting"
    return parse


def _argument(name: str, trait: TraitType[Any, Any]) -> argument:
    names = [flag_of(trait)] + ([trait.metadata["short"]] if trait.metadata.get("short") else [])
    metavar = trait.metadata.get("metavar") or names[0].lstrip("-").replace("-", "_").upper()
    kwargs: dict[str, Any] = {"dest": name, "default": None, "help": trait.help, "metavar": metavar}
    if isinstance(trait, Dict | List):
        kwargs["action"] = "append"
    if isinstance(trait, List):
        kwargs["type"] = str
    else:
        kwargs["type"] = _parser(trait)
    if trait.metadata.get("const"):  # the flag alone means this value
        kwargs.update(nargs="?", const=trait.metadata["const"])
    return argument(*names, **kwargs)


def setting_arguments(settings_class: type[DistributedSettings]) -> Callable[[F], F]:
    """Decorate a magic with a flag per setting: common ones, then a group per launcher."""
    traits = settings_class.setting_traits()
    groups: dict[str, list[str]] = {}
    for name, trait in traits.items():
        groups.setdefault(str(trait.metadata.get("launcher") or ""), []).append(name)

    def decorate(func: F) -> F:
        # IPython builds the parser from the decorators in reverse order of application
        for launcher in reversed([g for g in groups if g]):
            for name in reversed(groups[launcher]):
                func = _argument(name, traits[name])(func)
            func = argument_group(f"launcher {launcher}")(func)
        for name in reversed(groups.get("", [])):
            func = _argument(name, traits[name])(func)
        return func

    return decorate


def settings_from_args(
    args: argparse.Namespace, settings_class: type[DistributedSettings]
) -> dict[str, Any]:
    """The setting values the parsed flags give (flags not given are left out)."""
    values: dict[str, Any] = {}
    for name, trait in settings_class.setting_traits().items():
        value = getattr(args, name, None)
        if value is not None:
            values[name] = dict(value) if isinstance(trait, Dict) else value
    return values
