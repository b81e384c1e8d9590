"""Without a cluster: rank lists, how the ranks' values are grouped and labelled, the input
transformer of the line form, and the rank helpers outside an engine."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from dtrain_magics.config.options import RunOptions, format_ranks, parse_ranks
from dtrain_magics.errors import BadOptions
from dtrain_magics.ipython.transformer import await_distributed_cells
from dtrain_magics.run.state import RunState
from dtrain_magics.ui.rank_values import value_bundles


@pytest.mark.parametrize(
    ("text", "ranks"),
    [
        ("0", (0,)),
        ("0,2-3", (0, 2, 3)),
        (" 3 , 1-2,1 ", (1, 2, 3)),
        ('"0,1"', (0, 1)),
        (None, None),
    ],
)
def test_rank_lists(text: str | None, ranks: tuple[int, ...] | None) -> None:
    assert parse_ranks(text) == ranks


def test_rank_lists_are_written_back_as_ranges() -> None:
    assert format_ranks([0, 2, 3, 4, 7]) == "0,2-4,7"
    assert format_ranks(range(4)) == "0-3"


def test_a_subset_of_every_rank_is_no_subset() -> None:
    assert RunOptions(ranks=(0, 1)).subset(2) is None
    assert RunOptions(ranks=(1,)).subset(2) == (1,)
    assert RunOptions().subset(2) is None
    with pytest.raises(BadOptions, match=r"names rank 2, but the cluster has 2 ranks \(0-1\)"):
        RunOptions(ranks=(0, 2)).subset(2)
    with pytest.raises(BadOptions, match=r"the cluster has 1 rank \(0\)"):
        RunOptions(ranks=(1,)).subset(1)
    assert RunOptions(ranks=(0, 1), check_replicas=()).subset(2) is None  # every rank: fine
    with pytest.raises(BadOptions, match=r"^--check-replicas compares .* --ranks 0,2 runs"):
        RunOptions(ranks=(0, 2), check_replicas=("model",)).subset(3)


def _value(text: str, **more: Any) -> dict[str, Any]:
    return {
        "output_type": "execute_result",
        "data": {"text/plain": text, **more},
        "metadata": {},
    }


def test_values_grouped_by_rank_and_labelled() -> None:
    state = RunState("r", 4, {})
    for rank, text in enumerate(["2", "2", "'x'", "2"]):
        state.set_outputs(rank, [_value(text)])
    assert [data["text/plain"] for data, _ in value_bundles(state)] == [
        "Out[rank 0-1,3]: 2",
        "Out[rank 2]: 'x'",
    ]
    assert state.values() == [{"ranks": [0, 1, 3], "text": "2"}, {"ranks": [2], "text": "'x'"}]


def test_rich_values_and_displays_keep_their_bundles() -> None:
    state = RunState("r", [1, 3], {})
    png = {"output_type": "display_data", "data": {"image/png": "iVBO"}, "metadata": {"x": 1}}
    state.set_outputs(1, [png, _value("<T>", **{"text/html": "<b>1</b>"})])
    state.set_outputs(3, [_value("line one\nline two")])
    assert value_bundles(state) == [
        ({"text/plain": "[output:rank 1]"}, {}),
        ({"image/png": "iVBO"}, {"x": 1}),
        ({"text/plain": "Out[rank 1]:"}, {}),
        ({"text/plain": "<T>", "text/html": "<b>1</b>"}, {}),
        ({"text/plain": "Out[rank 3]:\nline one\nline two"}, {}),
    ]


def test_the_line_form_is_awaited_and_the_rest_left_alone() -> None:
    cell = [
        "steps = 3\n",
        "%distributed --nodes 2 train.py \\\n",
        "    --epochs $steps\n",
        "x = 1 + \\\n",
        "    2\n",
        "%distributed?\n",
        "%distributedx y\n",
    ]
    assert await_distributed_cells(cell) == [
        "steps = 3\n",
        "await __import__('dtrain_magics')._magics.distributed_line_async("
        "' --nodes 2 train.py      --epochs $steps')\n",
        "x = 1 + \\\n",
        "    2\n",
        "%distributed?\n",
        "%distributedx y\n",
    ]
    assert await_distributed_cells(["%%distributed?\n"]) == ["%%distributed?\n"]


def test_progress_and_log_work_outside_an_engine() -> None:
    from dtrain_magics.rank.telemetry import Telemetry, publish_data

    publish_data({"dtrain-0": {}})  # no engine: nothing to send, and no error
    telemetry = Telemetry()
    assert list(telemetry.progress(range(3))) == [0, 1, 2]
    telemetry.log(loss=1.0)


def test_the_idle_suspender_acts_once_its_deadline_passes_unless_moved() -> None:
    from dtrain_magics.rank.idle import Suspender

    calls: list[float] = []
    acted = threading.Event()

    def action() -> None:
        calls.append(time.monotonic())
        acted.set()
        if len(calls) == 1:
            raise RuntimeError("the first suspension fails")  # logged; the thread goes on

    suspender = Suspender(action)
    suspender.arm(0.3)
    suspender.cancel()  # a cell began: no suspension
    assert not acted.wait(0.6)
    start = time.monotonic()
    suspender.arm(0.05)  # the thread waits with no deadline: arming must wake it
    assert acted.wait(5)
    assert len(calls) == 1 and calls[0] - start >= 0.05
    acted.clear()
    start = time.monotonic()
    suspender.arm(0.4)
    time.sleep(0.2)
    suspender.arm(0.4)  # another cell ended: the deadline moves on
    assert acted.wait(5)
    assert len(calls) == 2 and calls[1] - start >= 0.55
    acted.clear()
    start = time.monotonic()
    suspender.arm(30)
    time.sleep(0.1)  # the thread sleeps towards the far deadline
    suspender.arm(0.05)  # a sooner one must wake it
    assert acted.wait(5)
    assert len(calls) == 3 and calls[2] - start < 5


def test_a_cell_that_begins_as_the_idle_deadline_passes_keeps_horovod_up() -> None:
    from dtrain_magics.rank.idle import Suspender

    began, ended = threading.Event(), threading.Event()

    def suspend() -> None:
        began.set()
        time.sleep(0.3)  # hvd.shutdown, slowly
        ended.set()

    suspender = Suspender(suspend)
    suspender.arm(0.01)
    assert began.wait(5)  # the idle thread took its deadline
    suspender.cancel()  # the cell's pre_execute (or hold), before it restarts Horovod
    assert ended.is_set()  # the suspension is over: the restart comes after it
    began.clear()
    suspender.arm(0.3)
    suspender.cancel()  # before the deadline: Horovod left as it was
    assert not began.wait(0.6)


@pytest.mark.parametrize(
    ("written", "after"),
    [
        (logging.INFO, logging.WARNING),  # ipyparallel's default: a line per request, dropped
        (logging.DEBUG, logging.DEBUG),  # asked for on purpose: kept
        (logging.ERROR, logging.DEBUG),  # quiet already
    ],
)
def test_the_engine_log_is_quieted_only_at_its_default_level(written: int, after: int) -> None:
    from dtrain_magics.rank.setup import quiet_requests

    # as traitlets sets up an engine's log: the logger at DEBUG, its handler at the level asked
    log = logging.getLogger(f"test-engine-log-{written}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    handler = logging.NullHandler()
    handler.setLevel(written)
    log.addHandler(handler)
    quiet_requests(SimpleNamespace(kernel=SimpleNamespace(log=log)))
    assert log.level == after
