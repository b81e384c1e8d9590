"""What one cell asks for, resolved from its settings and its own flags."""

from __future__ import annotations

from dataclasses import dataclass

from ..cluster.launchers import Layout
from ..errors import BadOptions
from .settings import DistributedSettings


@dataclass(frozen=True)
class RunOptions:
    """One ``%%distributed`` cell's resolved options (its settings' values are validated)."""

    nodes: int = 1
    procs_per_node: int = 1
    backend: str = "horovod"
    device: str = "auto"
    launcher: str = "local"
    timeout: float | None = None
    where_after: float | None = 30.0
    push: tuple[str, ...] = ()
    pull: tuple[str, ...] = ()

    @property
    def layout(self) -> Layout:
        return Layout(self.nodes, self.procs_per_node)

    @classmethod
    def from_settings(
        cls, settings: DistributedSettings, push: tuple[str, ...] = (), pull: tuple[str, ...] = ()
    ) -> RunOptions:
        return cls(
            nodes=settings.nodes,
            procs_per_node=settings.procs_per_node,
            backend=settings.backend,
            device=settings.device,
            launcher=settings.launcher,
            timeout=settings.timeout,
            where_after=settings.where_after,
            push=push,
            pull=pull,
        )


def parse_names(text: str | None, flag: str) -> tuple[str, ...]:
    """``"a, b"`` → ``("a", "b")``: Python names, each once, or a ``BadOptions``."""
    if not text:
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if not name.isidentifier():
            raise BadOptions(f"{flag} takes comma-separated Python names, and {name!r} is not one.")
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise BadOptions(f"{flag} names {twice} twice; list each name once.")
    return names
