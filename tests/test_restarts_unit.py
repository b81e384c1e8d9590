"""``--max-restarts`` logic without a cluster: which results are retried, the attempts a run
keeps, and the lines the views show."""

from __future__ import annotations

from typing import Any

import pytest

from dtrain_magics.cluster import TrainingCluster
from dtrain_magics.config.options import RunOptions
from dtrain_magics.errors import BadOptions, RankError
from dtrain_magics.run.outcome import (
    RankOutcome,
    RunResult,
    exit_reason,
    raise_for_result,
    retryable,
)
from dtrain_magics.run.runner import DistributedRunner
from dtrain_magics.run.state import RunState
from dtrain_magics.store.schema import RankOutput
from dtrain_magics.ui.headline import headline, restart_lines, restarts_html
from dtrain_magics.ui.record_html import record_html, record_text


def _result(status: str, rank_status: str) -> RunResult:
    outcomes = [RankOutcome(0, "interrupted"), RankOutcome(1, rank_status, "killed by SIGKILL")]  # type: ignore[arg-type]
    return RunResult(status, outcomes, 1.0, failing_rank=1)  # type: ignore[arg-type]


def test_only_a_dead_rank_is_retried_while_restarts_are_left() -> None:
    assert retryable(_result("failed", "died"), 0, 2)
    assert retryable(_result("failed", "died"), 1, 2)
    assert not retryable(_result("failed", "died"), 2, 2)  # used up
    assert not retryable(_result("failed", "died"), 0, 0)  # not asked for
    assert not retryable(_result("failed", "error"), 0, 2)  # the cell raised
    assert not retryable(_result("timed out", "interrupted"), 0, 2)
    assert not retryable(_result("interrupted", "interrupted"), 0, 2)
    assert not retryable(RunResult("succeeded", [RankOutcome(0, "ok")], 1.0), 0, 2)


def test_every_attempt_is_kept_and_shown() -> None:
    state = RunState("run", 2, {"max_restarts": 2, "backend": "horovod"})
    state.set_status("running")
    state.ranks[0].n, state.ranks[0].total, state.ranks[0].rate = 6, 6, 90.0
    value: RankOutput = {
        "output_type": "execute_result",
        "data": {"text/plain": "6"},
        "metadata": {},
    }
    state.set_outputs(0, [value])
    assert state.values() == [{"ranks": [0], "text": "6"}]
    state.restart("rank 1 died (killed by SIGKILL)", 1)
    assert state.status == "starting cluster"
    assert (state.ranks[0].n, state.ranks[0].total, state.ranks[0].rate) == (0, None, 0.0)
    assert state.values() == []  # the dead attempt's value: its namespace is gone
    assert [r.status for r in state.ranks] == ["running", "running"]
    assert "attempt 2 of 3" in headline(state)
    (line,) = restart_lines(state)
    assert line.startswith("restart 1 of 2 at ")
    assert "attempt 1 ended after 0 s, rank 1 died (killed by SIGKILL)" in line
    assert 'class="dtrain-restart"' in restarts_html(state)
    state.set_status("running")
    state.finish("succeeded", reason="every rank finished")
    summary = state.summary()
    assert [(a["attempt"], a["status"], a["cause"]) for a in summary["attempts"]] == [
        (1, "failed", "rank 1 died (killed by SIGKILL)"),
        (2, "succeeded", "every rank finished"),
    ]
    assert summary["attempts"][1]["started"] == summary["attempts"][0]["ended"]
    assert "2 attempts" in headline(state)
    assert len(restart_lines(state)) == 1  # the last attempt is the run's own end
    assert "restart 1 of 2" in record_html(state) and "restart 1 of 2" in record_text(state)


def test_a_run_without_restarts_has_one_attempt_and_shows_none() -> None:
    state = RunState("run", 2, {})
    state.finish("succeeded", reason="every rank finished")
    assert len(state.summary()["attempts"]) == 1
    assert restart_lines(state) == [] and restarts_html(state) == ""
    assert "attempt" not in headline(state)


def test_the_error_says_the_cell_ran_again() -> None:
    result = _result("failed", "died")
    result.restarted, result.restarts = True, 2
    try:
        raise_for_result(result, None)
    except Exception as e:
        assert str(e).startswith("rank 1 died (killed by SIGKILL).")
        assert "The cell had been run again 2 times after a rank died (--max-restarts)." in str(e)
    else:
        raise AssertionError("no error")


def test_a_cluster_started_elsewhere_cannot_be_restarted() -> None:
    runner = DistributedRunner(TrainingCluster())
    with pytest.raises(BadOptions, match="use --max-restarts 0 with it"):
        runner.run("x = 1", RunOptions(launcher="profile", max_restarts=1), {})
    assert not runner.cluster.running


def test_step_times_start_again_with_each_attempt() -> None:
    """The restarted ranks count steps from their start: mixing the attempts' samples spanned
    the restart and counted steps twice (6x the real step time after a restart)."""
    state = RunState("run", 2, {"max_restarts": 1})
    for rank in (0, 1):
        for step in range(1, 9):  # 0.5 s steps, 8 of them
            state.add_telemetry(rank, {"timing": ["log", step, 100.0 + step * 0.5, 0.0]})
    state.restart("rank 1 died (killed by SIGKILL)", 1)
    assert all(r.split is None for r in state.ranks)
    for rank in (0, 1):
        for step in range(1, 5):  # the new attempt, 10 s later, steps counted from 1 again
            state.add_telemetry(rank, {"timing": ["log", step, 114.0 + step * 0.5, 0.0]})
    splits = [r.split for r in state.ranks]
    assert all(s is not None and abs(s.step - 0.5) < 1e-9 for s in splits), splits


def test_ranks_that_died_together_unexplained_are_all_named() -> None:
    """MPICH across hosts: an MPI_Abort ends every rank at once, and its report may be lost."""
    died = [RankOutcome(r, "died", "its engine process exited") for r in range(3)]
    result = RunResult("failed", died, 1.0, failing_rank=0, restarted=True)
    with pytest.raises(RankError) as info:
        raise_for_result(result, None)
    assert str(info.value).startswith(
        "rank 0 died (its engine process exited). Ranks 1, 2 died with it; MPI did not say "
        "which failed first. mpiexec ends the whole job"
    ), str(info.value)
    reason = "rank 0 died (its engine process exited); ranks 1, 2 died with it"
    assert exit_reason(result, None) == reason  # the run record's line


def test_blame_keeps_the_ranks_dead_when_no_report_said_which_ended_the_job() -> None:
    from dtrain_magics.run.watch import RankWatch

    state = RunState("run", 3, {})
    watch: Any = RankWatch({0: None, 1: None, 2: None}, state, None, None)  # type: ignore[arg-type]
    for rank, status in [(0, "died"), (1, "died"), (2, "killed")]:
        watch.outcomes[rank] = RankOutcome(rank, status, "its engine process exited")  # type: ignore[arg-type]
    watch.blame(1, "its engine process exited")
    assert [o.status for o in watch.outcomes.values()] == ["died", "died", "interrupted"]
    watch.blame(1, "killed by SIGKILL")  # a report: the others ended with it
    assert [o.status for o in watch.outcomes.values()] == ["interrupted", "died", "interrupted"]


def test_a_cluster_started_elsewhere_is_said_to_be_disconnected_not_restarted() -> None:
    result = _result("failed", "died")
    result.restarted, result.started_elsewhere = True, True
    with pytest.raises(RankError) as info:
        raise_for_result(result, None)
    assert str(info.value) == (
        "rank 1 died (killed by SIGKILL). Rank 0 was interrupted. As mpiexec ends the whole job "
        "when one rank dies, and the cluster was started elsewhere, the notebook disconnected "
        "from it: restart it (ipcluster stop, then ipcluster start), then run the cell."
    )
    result.started_elsewhere = False
    with pytest.raises(RankError, match="so the cluster was restarted; rank namespaces"):
        raise_for_result(result, None)
