"""The pure logic of "where are the ranks?" and the straggler view (no cluster): reading another
thread's stack, putting the ranks' answers together, when a run asks, and who holds whom back."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from dtrain_magics.rank import collectives
from dtrain_magics.rank.where import stack_report
from dtrain_magics.run.straggler import StepSplit, StepTimes, find_straggler, split_text
from dtrain_magics.run.where import WhereWatch, combine, missing_ranks


def test_stack_of_a_thread_sleeping_in_a_cell_function() -> None:
    source = "import time\ndef wait(event):\n    event.wait(10)\n"
    filename = "/tmp/ipykernel_0/cell-1.py"
    namespace: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), namespace)
    event = threading.Event()
    thread = threading.Thread(target=namespace["wait"], args=(event,), daemon=True)
    thread.start()
    time.sleep(0.1)
    try:
        report = stack_report(sys._current_frames()[thread.ident or 0], {filename: 1})
    finally:
        event.set()
        thread.join()
    assert report["running"] is True
    assert report["frames"][0]["cell"] == "this"
    assert report["frames"][0]["line"] == 3 and report["frames"][0]["function"] == "wait"
    assert report["inside"] == "threading.wait"  # the library call the cell made


def _rank(rank: int, **kw: Any) -> dict[str, Any]:
    frame = {"cell": "this", "line": 5, "function": "<module>", "code": "x = f()", "file": ""}
    return {"rank": rank, "state": "running", "frames": [frame], "inside": "", **kw}


def test_combined_report_names_who_has_not_joined() -> None:
    grad = {"op": "allreduce", "name": "allreduce.grad", "detail": "Sum", "for": 12.0}
    reports = [
        _rank(0, collective=grad),
        _rank(1, collective=None),
        _rank(2, collective=None, pending=["allreduce.grad"]),  # enqueued, computing on
        _rank(3, collective={**grad, "name": "allreduce.other"}),
        {"rank": 4, "state": "idle", "frames": [], "collective": None},
    ]
    assert missing_ranks(reports, "allreduce.grad") == [1, 3, 4]
    lines = [r["line"] for r in combine(reports, "asked")["ranks"]]
    assert lines[0] == (
        "rank 0: cell line 5: x = f() · waiting 12.0 s in Horovod allreduce 'allreduce.grad', Sum;"
        " ranks 1, 3 (it waits in 'allreduce.other'), 4 (its cell has ended) have not joined"
    )
    assert lines[1] == "rank 1: cell line 5: x = f()"
    assert lines[4] == "rank 4: idle (no cell running)"


def test_torch_collectives_are_named_by_their_call() -> None:
    reduce = {"op": "all_reduce", "name": "all_reduce", "detail": "", "for": 3.0}
    report = combine([_rank(0, collective=reduce), _rank(1, collective=None)], "asked")
    assert report["ranks"][0]["line"].endswith(
        "waiting 3.0 s in torch.distributed all_reduce; rank 1 has not joined"
    )


class FakeProbe:
    def __init__(self, reports: list[dict[str, Any]]) -> None:
        self.sent = time.monotonic()
        self.deadline = self.sent + 5
        self._reports = reports

    def done(self, now: float | None = None) -> bool:
        return True

    def reports(self) -> list[dict[str, Any]]:
        return self._reports


def test_watch_asks_after_a_quiet_spell_and_not_while_collectives_finish() -> None:
    shown: list[dict[str, Any]] = []
    answers = [[_rank(0, collective=None, since_done=0.5)], [_rank(0, collective=None)]]
    asked: list[int] = []

    def ask() -> FakeProbe:
        asked.append(1)
        return FakeProbe(answers[len(asked) - 1])

    start = time.monotonic()
    watch = WhereWatch(ask, shown.append, 3.0, lambda: start)
    watch.poll(start + 1)
    assert not asked and abs(watch.next_wake(start + 1) - (start + 3)) < 0.1  # type: ignore[operator]
    watch.poll(start + 3.1)  # quiet for 3 s: ask
    watch.poll(start + 3.2)  # answered: a collective finished 0.5 s ago, so not stuck
    assert len(asked) == 1 and not shown
    watch.poll(start + 6.5)  # quiet 3 s since that collective
    watch.poll(start + 6.6)
    assert len(asked) == 2 and len(shown) == 1 and shown[0]["why"] == "no progress for 4 s"
    watch.poll(start + 20)  # once per quiet spell
    assert len(asked) == 2
    watch.request()  # the button asks at any time
    assert watch.next_wake(start + 20) == start + 20


def test_step_split_and_the_rank_holding_the_others_back() -> None:
    times = StepTimes()
    for step in range(0, 21, 5):  # 5 steps per message, 50 ms a step, 20 ms of it waiting
        times.add(["log", step, 100 + step * 0.05, step * 0.02])
    split = times.split()
    assert split is not None and abs(split.step - 0.05) < 1e-9
    assert abs(split.waiting - 0.02) < 1e-9
    assert split_text(split) == "step 50 ms: 30 ms computing, 20 ms waiting (40%)"
    fast, slow = StepSplit(0.05, 0.03, 10), StepSplit(0.05, 0.004, 10)
    straggler = find_straggler({0: fast, 1: slow, 2: fast})
    assert straggler is not None and straggler.rank == 1 and 0.5 < straggler.share < 0.55
    balanced = StepSplit(0.05, 0.03, 10)  # all wait the same: communication, nobody's fault
    assert find_straggler({0: balanced, 1: StepSplit(0.05, 0.028, 10)}) is None


def test_wait_wrapper_times_the_wait_and_names_the_collective() -> None:
    seen: list[Any] = []

    def enqueue(tensor: Any, output: Any, name: Any, op: Any, pre: Any, post: Any, ps: Any) -> int:
        return 41

    def wait(handle: int) -> None:
        seen.append(collectives.clock.waiting)
        time.sleep(0.02)

    wrapped_enqueue = collectives._wrap_enqueue(enqueue, "allreduce", {1: "Sum"})
    wrapped_wait = collectives._wait_and_clear(wait)
    before = collectives.clock.waited
    handle = wrapped_enqueue(None, None, None, 1, 1.0, 1.0, None)
    assert collectives.clock.names_pending()[-1] == "allreduce.noname.41"
    wrapped_wait(handle)
    assert seen[0].name == "allreduce.noname.41" and seen[0].detail == "Sum"
    assert collectives.clock.waiting is None
    assert collectives.clock.waited - before >= 0.02


def _at(rank: int, op: str | None = None, name: str = "", **extra: Any) -> dict[str, Any]:
    collective = None if op is None else {"op": op, "name": name or op, "for": 5.0, **extra}
    state = "idle" if op is None and extra.get("idle", True) else "running"
    return {"rank": rank, "state": state, "collective": collective, "pending": []}


def test_a_deadlock_is_every_rank_waiting_for_one_that_will_not_come() -> None:
    from dtrain_magics.run.where import deadlock, deadlock_phrase

    ended = combine([_at(0, "allreduce", "allreduce.x"), _at(1)], "no progress for 30 s")
    found = deadlock(ended, 0.0)
    assert found is not None and found["rank"] == 0
    assert deadlock_phrase(found).startswith("waited in a collective that no rank can finish (")
    crossed = combine([_at(0, "allreduce", "a"), _at(1, "allreduce", "b")], "x")
    assert deadlock(crossed, 0.0) is not None
    running = [_at(0, "allreduce", "a"), {**_at(1), "state": "running"}]  # computing
    assert deadlock(combine(running, "x"), 0.0) is None
    together = combine([_at(0, "allreduce", "a"), _at(1, "allreduce", "a")], "x")
    assert deadlock(together, 0.0) is None  # a slow collective, every rank in it
    joined = combine([_at(0, "allreduce", "a"), _at(1, "join", "join")], "x")
    assert deadlock(joined, 0.0) is None  # hvd.join stands in for rank 1
    group = [_at(0, "all_reduce", subgroup=True), _at(1, "all_reduce", subgroup=True), _at(2)]
    assert deadlock(combine(group, "x"), 0.0) is None  # rank 2 is not in their group
    fresh = combine([_at(0, "allreduce", "a"), {**_at(1), "since_done": 0.5}], "asked")
    assert deadlock(fresh, 2.0) is None  # answers of different moments, just after a collective
    short = combine(
        [
            {
                **_at(0, "allreduce", "a"),
                "collective": {"op": "allreduce", "name": "a", "for": 0.3},
            },
            _at(1),
        ],
        "asked",
    )
    assert deadlock(short, 2.0) is None and deadlock(short, 0.0) is not None
