"""The straggler view: each rank's step time split into computing and waiting in collectives,
and the rank that holds the others back.

Every telemetry message of a rank carries its step count, the time of its last step and the
seconds it had waited in collectives by then (``rank/telemetry.py``, ``rank/collectives.py``).
Over the last ``WINDOW`` seconds that gives, per rank, the mean step time and the part of it
spent waiting. Communication itself costs every rank about the same wait; a rank that computes
longer makes the others wait for it on top of that. The rank with the least wait is flagged
when the others wait, beyond its own wait, more than ``HOLDS_BACK`` of their step for it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from statistics import median
from typing import Any

WINDOW = 10.0  # seconds of steps the split is computed over
HOLDS_BACK = 0.2  # share of the others' step spent waiting for one rank that flags it
SAMPLES = 64


@dataclass(frozen=True)
class StepSplit:
    """One rank's mean step over the window: seconds per step, of which waiting."""

    step: float
    waiting: float
    steps: int

    @property
    def computing(self) -> float:
        return max(self.step - self.waiting, 0.0)

    @property
    def waiting_share(self) -> float:
        return self.waiting / self.step if self.step > 0 else 0.0


class StepTimes:
    """One rank's timing samples: ``(steps, time of the last step, waited by then)``."""

    def __init__(self) -> None:
        self.samples: deque[tuple[int, float, float]] = deque(maxlen=SAMPLES)
        self.source = ""

    def add(self, timing: list[Any]) -> None:
        source, steps, at, waited = timing
        if source != self.source:  # a cell's first step count, or its log took over
            self.samples.clear()
            self.source = source
        if not self.samples or steps > self.samples[-1][0]:
            self.samples.append((int(steps), float(at), float(waited)))

    def split(self) -> StepSplit | None:
        """The mean step over the last ``WINDOW`` seconds (None before two steps)."""
        if len(self.samples) < 2:
            return None
        last = self.samples[-1]
        first = next((s for s in self.samples if s[1] >= last[1] - WINDOW), self.samples[0])
        if first is last:
            first = self.samples[-2]
        steps = last[0] - first[0]
        if steps <= 0 or last[1] <= first[1]:
            return None
        step = (last[1] - first[1]) / steps
        waiting = min(max(last[2] - first[2], 0.0) / steps, step)
        return StepSplit(step, waiting, steps)


@dataclass(frozen=True)
class Straggler:
    """The rank holding the others back, and the share of their step they wait for it."""

    rank: int
    share: float

    def sentence(self) -> str:
        return (
            f"rank {self.rank} holds the others back: they wait for it "
            f"{self.share:.0%} of each step"
        )


def find_straggler(splits: dict[int, StepSplit]) -> Straggler | None:
    """The rank the others wait for more than ``HOLDS_BACK`` of their step, if one does."""
    if len(splits) < 2:
        return None
    slow = min(splits, key=lambda r: splits[r].waiting_share)
    own = splits[slow].waiting
    extra = [max(s.waiting - own, 0.0) / s.step for r, s in splits.items() if r != slow and s.step]
    if not extra:
        return None
    share = median(extra)
    return Straggler(slow, share) if share > HOLDS_BACK else None


def split_text(split: StepSplit) -> str:
    """``step 52 ms: 40 computing, 12 waiting (23%)``."""
    return (
        f"step {_ms(split.step)}: {_ms(split.computing)} computing, {_ms(split.waiting)} "
        f"waiting ({split.waiting_share:.0%})"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"
