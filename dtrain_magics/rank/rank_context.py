"""The per-rank context: who this rank is and what it runs on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RankContext:
    """Facts about one rank, set when the backend is initialised."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    backend: str
    device: Any = field(default=None)  # a torch.device
    hostname: str = ""


_current: RankContext | None = None


def current() -> RankContext:
    """The context set by the last backend initialisation on this rank."""
    if _current is None:
        raise RuntimeError("this process is not a dtrain rank: run the code under %%distributed.")
    return _current


def set_current(ctx: RankContext | None) -> None:
    """Install ``ctx`` as this rank's context."""
    global _current
    _current = ctx
