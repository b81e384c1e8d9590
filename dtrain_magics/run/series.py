"""One metric across the ranks, by step, at a bounded cost: what a chart draws.

Points fall into step buckets; when there are more than ``MAX_BUCKETS``, neighbouring buckets
merge (the bucket width doubles). Adding a point is a dictionary update, and a chart reads at
most ``MAX_BUCKETS`` entries, however long the run. The run's files keep every point.
"""

from __future__ import annotations

# A chart draws each bucket (``ui/charts.py`` draws at most 150 points): between 75 and 150 of
# them, each with the mean, min and max of its steps. 4096 buckets cost a sort of all of them per
# chart and merges of thousands, for points a chart then skipped.
MAX_BUCKETS = 150


class MetricSeries:
    """``(step, mean, min, max)`` over the ranks' points, per step bucket."""

    def __init__(self) -> None:
        self.width = 1
        # bucket index → [first step, sum, count, min, max]
        self._buckets: dict[int, list[float]] = {}

    def add(self, step: int, value: float) -> None:
        index = step // self.width
        bucket = self._buckets.get(index)
        if bucket is None:
            self._buckets[index] = [step, value, 1, value, value]
            if len(self._buckets) > MAX_BUCKETS:
                self._coarsen()
            return
        if step < bucket[0]:
            bucket[0] = step
        bucket[1] += value
        bucket[2] += 1
        if value < bucket[3]:
            bucket[3] = value
        if value > bucket[4]:
            bucket[4] = value

    def _coarsen(self) -> None:
        self.width *= 2
        merged: dict[int, list[float]] = {}
        for index, bucket in self._buckets.items():
            into = merged.get(index // 2)
            if into is None:
                merged[index // 2] = list(bucket)
            else:
                into[0] = min(into[0], bucket[0])
                into[1] += bucket[1]
                into[2] += bucket[2]
                into[3] = min(into[3], bucket[3])
                into[4] = max(into[4], bucket[4])
        self._buckets = merged

    def points(self) -> list[tuple[int, float, float, float]]:
        """``(first step, mean, min, max)`` of each bucket, in step order."""
        return [(int(b[0]), b[1] / b[2], b[3], b[4]) for _, b in sorted(self._buckets.items())]

    def __len__(self) -> int:
        return len(self._buckets)
