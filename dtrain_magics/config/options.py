"""What one cell asks for, resolved from its settings and its own flags."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..cluster.launchers import Layout
from ..errors import BadOptions
from .settings import DistributedSettings
from .traits import MAX_RANKS


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
    max_restarts: int = 0
    push: tuple[str, ...] = ()
    pull: tuple[str, ...] = ()
    ranks: tuple[int, ...] | None = None  # --ranks: the ranks the cell runs on (None: every one)
    check_replicas: tuple[str, ...] | None = None  # --check-replicas: () every model, or these

    @property
    def layout(self) -> Layout:
        return Layout(self.nodes, self.procs_per_node)

    def subset(self, size: int) -> tuple[int, ...] | None:
        """The ranks of a cluster of ``size`` this cell runs on, or None for every rank;
        ``BadOptions`` if ``--ranks`` names a rank the cluster lacks, or some of the ranks with
        ``--check-replicas`` (a collective)."""
        if self.ranks is None:
            return None
        beyond = [r for r in self.ranks if r >= size]
        if beyond:
            raise BadOptions(
                f"--ranks names rank {beyond[0]}, but the cluster has {size} "
                f"rank{'s' if size != 1 else ''} ({format_ranks(range(size))})."
            )
        if len(self.ranks) == size:
            return None
        if self.check_replicas is not None:
            raise BadOptions(
                "--check-replicas compares the models of every rank, and --ranks "
                f"{format_ranks(self.ranks)} runs the cell on some of them: "
                "leave out one of the two."
            )
        return self.ranks

    @classmethod
    def from_settings(
        cls,
        settings: DistributedSettings,
        push: tuple[str, ...] = (),
        pull: tuple[str, ...] = (),
        ranks: tuple[int, ...] | None = None,
        check_replicas: tuple[str, ...] | None = None,
    ) -> RunOptions:
        return cls(
            nodes=settings.nodes,
            procs_per_node=settings.procs_per_node,
            backend=settings.backend,
            device=settings.device,
            launcher=settings.launcher,
            timeout=settings.timeout,
            where_after=settings.where_after,
            max_restarts=settings.max_restarts,
            push=push,
            pull=pull,
            ranks=ranks,
            check_replicas=check_replicas,
        )


def parse_names(text: str | None, flag: str) -> tuple[str, ...]:
    """``"a, b"`` → ``("a", "b")``: Python names, each once, or a ``BadOptions``."""
    if not text:
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise BadOptions(f"{flag} {text!r} names nothing; give comma-separated Python names.")
    for name in names:
        if not name.isidentifier():
            raise BadOptions(f"{flag} takes comma-separated Python names, and {name!r} is not one.")
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise BadOptions(f"{flag} names {twice} twice; list each name once.")
    return names


_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def parse_ranks(text: str | None) -> tuple[int, ...] | None:
    """``"0,2-3"`` → ``(0, 2, 3)``: rank numbers and ranges, sorted; None without ``--ranks``."""
    if text is None:
        return None
    ranks: set[int] = set()
    text = text.strip().strip("'\"")  # quoted twice: --ranks "'0,1'"
    for part in (p.strip() for p in text.split(",")):
        match = _RANGE.fullmatch(part)
        if not part:
            continue
        if match is None:
            raise BadOptions(
                "--ranks takes rank numbers and ranges such as 0 or 0,2-3, and "
                f"{part!r} is not one."
            )
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise BadOptions(f"--ranks: {part} runs backwards; write it as {last}-{first}.")
        if last >= MAX_RANKS:
            raise BadOptions(f"--ranks names rank {last}; a cluster has at most {MAX_RANKS} ranks.")
        ranks.update(range(first, last + 1))
    if not ranks:
        raise BadOptions("--ranks names no rank; give rank numbers such as 0 or 0,2-3.")
    return tuple(sorted(ranks))


def format_ranks(ranks: Iterable[int]) -> str:
    """``(0, 2, 3)`` → ``"0,2-3"``: consecutive ranks as ranges."""
    spans: list[list[int]] = []
    for r in sorted(ranks):
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
