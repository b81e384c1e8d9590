"""Pure logic: rank-side coalescing, run state bookkeeping and chart rendering (no cluster)."""

from __future__ import annotations

import time
from typing import Any

from dtrain_magics.rank import telemetry
from dtrain_magics.rank.telemetry import Telemetry
from dtrain_magics.run.state import OUTPUT_LINES, RunState
from dtrain_magics.ui.charts import svg_chart


def test_a_million_log_calls_cost_bounded_messages_and_memory() -> None:
    sent: list[dict[str, Any]] = []
    t = Telemetry(sent.append)
    started = time.time()
    for _ in range(1_000_000):
        t.log(loss=0.5)
        assert len(t._points) <= telemetry.MAX_BUFFER
    t.flush()
    elapsed = time.time() - started
    assert len(sent) <= elapsed / telemetry.INTERVAL + 2
    keys = [next(iter(m)) for m in sent]
    assert keys == [f"dtrain-{i}" for i in range(len(sent))]  # ordered, gap-free sequence
    delivered = sum(len(next(iter(m.values()))["points"]) for m in sent)
    dropped = sum(next(iter(m.values()))["dropped"] for m in sent)
    assert delivered + dropped == 1_000_000


def test_steps_count_per_rank_and_explicit_steps_win() -> None:
    sent: list[dict[str, Any]] = []
    t = Telemetry(sent.append)
    t.log(loss=1.0)
    t.log(loss=2.0, acc=0.5)
    t.log(step=10, loss=3.0)
    t.log(loss=4.0)
    t.flush()
    points = [p for m in sent for p in next(iter(m.values()))["points"]]
    assert [(p[0], p[1]) for p in points] == [
        (0, "loss"),
        (1, "loss"),
        (1, "acc"),
        (10, "loss"),
        (11, "loss"),
    ]


def test_progress_reports_n_total_and_done() -> None:
    sent: list[dict[str, Any]] = []
    t = Telemetry(sent.append)
    assert list(t.progress(range(5), desc="epoch")) == [0, 1, 2, 3, 4]
    last = next(iter(sent[-1].values()))["progress"]
    assert (last["n"], last["total"], last["desc"], last["done"]) == (5, 5, "epoch", True)


def test_flush_sends_nothing_when_nothing_changed() -> None:
    sent: list[dict[str, Any]] = []
    t = Telemetry(sent.append)
    t.flush()
    assert sent == []


def test_run_state_keeps_bounded_lines_and_aggregates_metrics() -> None:
    state = RunState("r", 2, {})
    state.add_output(0, "".join(f"line {i}\n" for i in range(OUTPUT_LINES + 50)) + "partial")
    assert state.ranks[0].line_count == OUTPUT_LINES + 50
    assert len(state.ranks[0].lines) == OUTPUT_LINES and state.ranks[0].lines[-1] == (
        "stdout",
        f"line {OUTPUT_LINES + 49}",
    )
    state.finish_rank(0, "ok")
    assert state.ranks[0].lines[-1] == ("stdout", "partial")
    for rank, value in ((0, 1.0), (1, 3.0)):
        state.add_telemetry(
            rank, {"points": [(0, "loss", value, 1.0)], "dropped": 0, "progress": None}
        )
    assert state.chart_series("loss") == [(0, 2.0, 1.0, 3.0)]


def test_thinned_points_are_said_and_a_burst_makes_no_rate() -> None:
    from dtrain_magics.ui.headline import headline

    state = RunState("r", 1, {})
    burst = [(i, "loss", 1.0, 100.0 + i * 1e-4) for i in range(5)]  # 5 points in 0.4 ms
    state.add_telemetry(0, {"points": burst, "dropped": 0, "progress": None})
    assert "steps/s" not in state.throughput()  # was 10,000 steps/s
    later = [(5 + i, "loss", 1.0, 101.0 + i) for i in range(3)]
    state.add_telemetry(0, {"points": later, "dropped": 36_864, "progress": None})
    assert abs(state.throughput()["steps/s"] - 7 / 3.0) < 1e-9
    assert "36,864 logged points thinned out (over 2,048 a second)" in headline(state)


def test_svg_chart_draws_mean_and_spread() -> None:
    svg = svg_chart("loss", [(s, 1.0 / (s + 1), 0.5 / (s + 1), 2.0 / (s + 1)) for s in range(1000)])
    assert 'data-points="1000"' in svg and 'class="mean"' in svg and 'class="spread"' in svg
    assert svg.count(",") < 2000  # downsampled for drawing
    assert "no data yet" in svg_chart("acc", [])


def test_the_controller_drops_only_the_telemetry_warning() -> None:
    import logging

    from dtrain_magics.cluster.controller import TELEMETRY_WARNING, TelemetryWarningFilter

    def record(msg: str, *args: Any) -> logging.LogRecord:
        return logging.LogRecord("IPController", logging.WARNING, "hub.py", 1, msg, args, None)

    keep = TelemetryWarningFilter().filter
    assert not keep(record(TELEMETRY_WARNING, "data_message"))
    assert keep(record(TELEMETRY_WARNING, "some_new_type"))
    assert keep(record("heartbeat::missed %s : %s", "a", "b"))
