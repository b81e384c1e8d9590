"""A chart's series: bounded buckets, each with the mean, min and max of its steps."""

from __future__ import annotations

from dtrain_magics.run.series import MAX_BUCKETS, MetricSeries


def test_a_long_run_keeps_between_half_and_all_of_the_buckets_with_their_statistics() -> None:
    series = MetricSeries()
    for step in range(10_000):
        for rank in (0, 1):
            series.add(step, float(step + rank))  # rank 1 logs one more than rank 0
    points = series.points()
    assert MAX_BUCKETS // 2 <= len(points) <= MAX_BUCKETS
    width = series.width
    assert points[0][0] == 0 and points[-1][0] == (9_999 // width) * width
    for first, mean, low, high in points[:-1]:
        assert low == first and high == first + width  # min of rank 0, max of rank 1
        assert mean == first + (width - 1) / 2 + 0.5
    total = sum(mean * (min(width, 10_000 - first)) for first, mean, _, _ in points)
    assert total == sum(step + 0.5 for step in range(10_000))  # nothing lost in merging


def test_steps_out_of_order_land_in_their_bucket() -> None:
    series = MetricSeries()
    for step in (5, 3, 4, 3):
        series.add(step, 1.0)
    assert series.points() == [(3, 1.0, 1.0, 1.0), (4, 1.0, 1.0, 1.0), (5, 1.0, 1.0, 1.0)]
