"""The options of a distributed run, validated with one clear sentence per mistake."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .launchers import LAUNCHERS, Layout

BACKENDS = ("horovod", "torch")
DEVICES = ("auto", "cpu", "cuda")
MAX_RANKS = 1024


class BadOptions(ValueError):
    """A user's mistake in the options; the message is one sentence saying how to fix it."""


@dataclass(frozen=True)
class RunOptions:
    """What one ``%%distributed`` cell asks for."""

    nodes: int = 1
    procs_per_node: int = 1
    backend: str = "horovod"
    device: str = "auto"
    launcher: str = "local"
    timeout: float | None = None
    push: tuple[str, ...] = ()
    pull: tuple[str, ...] = ()

    @property
    def layout(self) -> Layout:
        return Layout(self.nodes, self.procs_per_node)

    def validate(self) -> RunOptions:
        """Raise ``BadOptions`` for the first invalid option; return self otherwise."""
        for flag, value in (("--nodes", self.nodes), ("--procs-per-node", self.procs_per_node)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadOptions(f"{flag} must be a positive integer, got {value!r}.")
        if self.nodes * self.procs_per_node > MAX_RANKS:
            raise BadOptions(
                f"--nodes {self.nodes} × --procs-per-node {self.procs_per_node} asks for "
                f"{self.nodes * self.procs_per_node} ranks; at most {MAX_RANKS} are supported."
            )
        _choice("--backend", self.backend, BACKENDS)
        _choice("--device", self.device, DEVICES)
        _choice("--launcher", self.launcher, LAUNCHERS)
        if self.timeout is not None and (not math.isfinite(self.timeout) or self.timeout <= 0):
            raise BadOptions(
                f"--timeout must be a positive number of seconds, got {self.timeout!r}."
            )
        for flag, names in (("--push", self.push), ("--pull", self.pull)):
            for name in names:
                if not name.isidentifier():
                    raise BadOptions(
                        f"{flag} takes comma-separated Python names, and {name!r} is not one."
                    )
            twice = next((n for n in names if names.count(n) > 1), None)
            if twice is not None:
                raise BadOptions(f"{flag} names {twice} twice; list each name once.")
        return self


def _choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise BadOptions(f"{flag} must be one of {', '.join(choices)}, got {value!r}.")


def parse_names(text: str | None) -> tuple[str, ...]:
    """``"a, b"`` → ``("a", "b")``."""
    if not text:
        return ()
    return tuple(n.strip() for n in text.split(",") if n.strip())
