"""Summaries of repeated measurements: the median and its spread, and ratios over pairs.

Every peer comparison is a list of pairs measured side by side (ours, then the peer, or the
other way round, alternating), so each pair shares the machine's conditions of its moment. The
ratio reported is the median of the per-pair ratios, with their quartiles, their range and a
bootstrap 90% interval of that median.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from typing import Any, TypedDict


class Summary(TypedDict):
    n: int
    median: float
    q1: float
    q3: float
    min: float
    max: float


class RatioSummary(Summary):
    ci90: tuple[float, float]


def summarize(values: Sequence[float]) -> Summary:
    """Median, quartiles and range of ``values`` (at least one)."""
    if not values:
        raise ValueError("nothing to summarize")
    data = sorted(float(v) for v in values)
    if len(data) >= 2:
        q1, _, q3 = statistics.quantiles(data, n=4, method="inclusive")
    else:
        q1 = q3 = data[0]
    return {
        "n": len(data),
        "median": statistics.median(data),
        "q1": q1,
        "q3": q3,
        "min": data[0],
        "max": data[-1],
    }


def ratios(ours: Sequence[float], peer: Sequence[float]) -> list[float]:
    """Per-pair ratios ``ours[i] / peer[i]``; pairs with a zero or missing peer are dropped."""
    return [o / p for o, p in zip(ours, peer, strict=False) if p]


def summarize_ratio(ours: Sequence[float], peer: Sequence[float], seed: int = 0) -> RatioSummary:
    """The per-pair ratios' summary plus a bootstrap 90% interval of their median."""
    values = ratios(ours, peer)
    base = summarize(values)
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(2000))
    return {**base, "ci90": (medians[100], medians[1899])}


def single(value: float) -> RatioSummary:
    """A ratio from one pair only."""
    return {
        "n": 1,
        "median": value,
        "q1": value,
        "q3": value,
        "min": value,
        "max": value,
        "ci90": (value, value),
    }


def format_ratio(summary: RatioSummary | None) -> str:
    """``0.97 [0.95–0.99] n=5``: median, quartiles and pair count."""
    if summary is None:
        return "—"
    if summary["n"] == 1:
        return f"{summary['median']:.2f} (n=1)"
    return f"{summary['median']:.2f} [{summary['q1']:.2f}–{summary['q3']:.2f}] n={summary['n']}"


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def jsonable(value: Any) -> Any:
    """Tuples as lists, recursively, so summaries round-trip through JSON unchanged."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
