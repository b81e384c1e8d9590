"""metrics.jsonl: one JSON object per point, whichever path formats it."""

from __future__ import annotations

import json
import math
from pathlib import Path

from dtrain_magics.store.records import RunStore


def _rows(store: RunStore) -> list[dict[str, object]]:
    return [json.loads(line) for line in store.metrics_path.read_text().splitlines()]


def test_plain_points_are_written_as_json_lines_with_times_to_the_microsecond(
    tmp_path: Path,
) -> None:
    store = RunStore("run", 2, root=tmp_path)
    t0 = 1_796_455_266.2594957
    points = [
        (s, name, 1.0 / (s + 1) + k, t0 + s / 3)
        for s in range(500)
        for k, name in enumerate(("loss", "samples"))
    ]
    store.append_points(1, points)
    store.append_points(1, [])
    store.close()
    rows = _rows(store)
    assert len(rows) == len(points)
    for row, (step, name, value, when) in zip(rows, points, strict=True):
        assert set(row) == {"step", "rank", "name", "value", "time"}
        assert (row["step"], row["rank"], row["name"], row["value"]) == (step, 1, name, value)
        assert isinstance(row["time"], float) and abs(row["time"] - when) <= 5e-7


def test_names_needing_escapes_and_non_finite_values_take_the_general_path(
    tmp_path: Path,
) -> None:
    store = RunStore("run", 1, root=tmp_path)
    store.append_points(0, [(0, 'acc "top-1"\\n', 0.5, 1.0), (0, "loss", 0.25, 1.0)])
    store.append_points(0, [(1, "loss", math.inf, 2.0), (1, "grad", math.nan, 2.0)])
    store.append_points(0, [(2, "loss", 3, 3.0), (3, "loss", 0.125, 4.0)])  # an int value
    store.close()
    text = store.metrics_path.read_text()
    assert '"value": Infinity' in text and '"value": NaN' in text
    rows = _rows(store)
    assert [r["name"] for r in rows] == ['acc "top-1"\\n', "loss", "loss", "grad", "loss", "loss"]
    assert rows[2]["value"] == math.inf and math.isnan(rows[3]["value"])  # type: ignore[arg-type]
    assert rows[4]["value"] == 3.0 and isinstance(rows[4]["value"], float)
    assert [r["step"] for r in rows] == [0, 0, 1, 1, 2, 3]
