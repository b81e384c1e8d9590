"""``--ranks``: a cell on some of the ranks, through the real cluster (2 ranks, Horovod/gloo)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from helpers import rank_values
from IPython.core.error import UsageError

import dtrain_magics
from dtrain_magics.errors import RankError
from dtrain_magics.rank.idle import SUSPEND_AFTER

pytestmark = pytest.mark.cluster

SENTENCE = (
    "rank 0 called a collective in a cell that runs on rank 0 only (--ranks 0); collectives "
    "need every rank, so run it without --ranks."
)
ALLREDUCE = "import torch\nok = hvd.allreduce(torch.ones(1), op=hvd.Sum).item()"


def _works_on_every_rank(run: Any, cluster: Any) -> None:
    run(ALLREDUCE)
    assert rank_values(cluster, "ok") == [2.0, 2.0]


def test_a_cell_on_one_rank_leaves_the_other_as_it_was(run: Any, cluster: Any) -> None:
    pids = [e.pid for e in cluster.engines]
    run("state = f'rank {rank} before'\nmine = hvd.rank(), hvd.size()")
    run("state = 'changed on rank 1 alone'\nmine = hvd.rank(), hvd.size()", "--ranks 1")
    assert rank_values(cluster, "state") == ["rank 0 before", "changed on rank 1 alone"]
    assert rank_values(cluster, "mine") == [(0, 2), (1, 2)]
    record = dtrain_magics.last_run()
    assert record is not None and record.status == "succeeded"
    assert [r["rank"] for r in record.ranks] == [1] and record.options["ranks"] == "1"
    assert list(record.log_paths) == [1]
    assert [e.pid for e in cluster.engines] == pids
    _works_on_every_rank(run, cluster)


def test_a_collective_on_some_ranks_fails_at_once_in_one_sentence(run: Any, cluster: Any) -> None:
    pids = [e.pid for e in cluster.engines]
    run("kept = rank + 100")
    code = "import torch\nprint('about to reduce')\ntotal = hvd.allreduce(torch.ones(1))\n"
    started = time.monotonic()
    with pytest.raises(RankError) as info:
        run(code, "--ranks 0")
    assert time.monotonic() - started < 5
    assert str(info.value) == SENTENCE
    rendered = "\n".join(info.value._render_traceback_())
    assert "line 3" in rendered and "hvd.allreduce(torch.ones(1))" in rendered
    assert "synchronize" not in rendered  # Horovod's insides are not the user's business
    # every rank carries on with its namespace: the cluster was not restarted
    assert [e.pid for e in cluster.engines] == pids
    assert rank_values(cluster, "kept") == [100, 101]
    _works_on_every_rank(run, cluster)


def test_a_collective_on_two_of_three_ranks_fails_in_the_sentence_every_time(
    run: Any, cluster: Any
) -> None:
    """Both ranks of the subset wait; the first to shut Horovod down ends the other's wait
    before that one announces it: its raw ``HorovodInternalError`` was the cell's error in
    about 1 run of 3."""
    code = "import torch\ntotal = hvd.allreduce(torch.ones(1))\n"
    for _ in range(4):
        with pytest.raises(RankError) as info:
            run(code, "--nodes 3 --ranks 0,2")
        assert str(info.value) == (
            "rank 0 called a collective in a cell that runs on ranks 0,2 only (--ranks 0,2); "
            "collectives need every rank, so run it without --ranks."
        )
        assert "HorovodInternalError" not in "\n".join(info.value._render_traceback_())
    run("import torch\nok = hvd.allreduce(torch.ones(1), op=hvd.Sum).item()", "--nodes 3")
    assert rank_values(cluster, "ok") == [3.0, 3.0, 3.0]


def test_a_collective_caught_in_the_cell_still_leaves_the_ranks_usable(
    run: Any, cluster: Any
) -> None:
    code = (
        "import torch\ntry:\n    hvd.allreduce(torch.ones(1))\n"
        "except Exception as e:\n    caught = type(e).__name__\n"
    )
    run(code, "--nodes 2 --ranks 0")  # alone, a first cell without --nodes takes 1 node
    assert cluster.rank_view(0).pull("caught")
    _works_on_every_rank(run, cluster)


def test_a_caught_collective_leaves_the_ranks_usable_when_horovod_shuts_down_slowly(
    magics: Any,
) -> None:
    """With a long Horovod cycle the watcher's shutdown (which fails the wait at once) is still
    going when the runner resets Horovod: two shutdowns at once hung the rank, and the cluster
    was restarted with its namespaces lost (every time at 50 ms)."""
    line = "--nodes 2 --no-widget --env HOROVOD_CYCLE_TIME=50"
    code = (
        "import torch\ntry:\n    hvd.allreduce(torch.ones(1))\n"
        "except Exception as e:\n    caught = type(e).__name__\n"
    )
    magics.distributed(line, "kept = rank")
    started = time.monotonic()
    magics.distributed(f"{line} --ranks 0", code)
    assert time.monotonic() - started < 10
    assert magics.cluster.rank_view(0).pull("caught")
    assert rank_values(magics.cluster, "kept") == [0, 1]  # not restarted
    magics.distributed(line, ALLREDUCE)
    assert rank_values(magics.cluster, "ok") == [2.0, 2.0]


def test_the_mpi_helpers_fail_at_once_on_some_ranks(run: Any, cluster: Any) -> None:
    started = time.monotonic()
    with pytest.raises(RankError, match="collectives need every rank"):
        run("dtrain.barrier()", "--ranks 0")
    with pytest.raises(RankError, match="collectives need every rank"):
        run("dtrain.checkpoint({'x': 1}, 'never.pt')", "--ranks 0")
    assert time.monotonic() - started < 5
    _works_on_every_rank(run, cluster)


def test_the_mpi_helpers_fail_at_once_on_some_ranks_before_mpi_is_up(magics: Any) -> None:
    """Under ``--backend torch`` MPI is down until a helper starts it: importing mpi4py on
    rank 0 alone started it, waiting for rank 1 for ever (2 of 2 before)."""
    line = "--nodes 2 --backend torch --no-widget"
    magics.distributed(line, "import sys\nup = 'mpi4py.MPI' in sys.modules")
    assert rank_values(magics.cluster, "up") == [False, False]
    for cell in ("dtrain.barrier()", "dtrain.checkpoint({'x': 1}, 'never.pt')"):
        started = time.monotonic()
        with pytest.raises(RankError, match="collectives need every rank"):
            magics.distributed(f"{line} --ranks 0", cell)
        assert time.monotonic() - started < 5
    magics.distributed(
        line,
        "dtrain.barrier()\nimport torch\nt = torch.ones(1)\ndist.all_reduce(t)\ntotal = t.item()",
    )
    assert rank_values(magics.cluster, "total") == [2.0, 2.0]


def test_a_torch_distributed_collective_on_some_ranks_fails_at_once(run: Any, cluster: Any) -> None:
    line = "--nodes 2 --backend torch"
    try:
        run("import torch\nt = torch.ones(1)\ndist.all_reduce(t)\nfull = t.item()", line)
        started = time.monotonic()
        with pytest.raises(RankError) as info:
            run("import torch\ndist.all_reduce(torch.ones(1))", f"{line} --ranks 1")
        assert time.monotonic() - started < 10
        assert "rank 1 called a collective in a cell that runs on rank 1 only" in str(info.value)
        run("import torch\nt = torch.ones(1)\ndist.all_reduce(t)\nfull = t.item()", line)
        assert rank_values(cluster, "full") == [2.0, 2.0]
    finally:
        run("pass", "--nodes 2 --backend horovod")  # back to horovod for the other tests
    _works_on_every_rank(run, cluster)


def test_a_torch_collective_on_two_of_three_ranks_keeps_the_cluster(run: Any, cluster: Any) -> None:
    """Rank 2 drops its group, which ends rank 1's wait; rank 0 then waits for rank 1, whose
    group outlived ``destroy_process_group`` in its all_reduce's error (IPython keeps it, and
    torch's frames in it hold the group): rank 0 never stopped and the cluster was restarted
    (3 of 3 before)."""
    line = "--nodes 3 --backend torch"
    try:
        run("kept = rank", line)
        pids = [e.pid for e in cluster.engines]
        for _ in range(4):
            started = time.monotonic()
            with pytest.raises(RankError) as info:
                run("import torch\ndist.all_reduce(torch.ones(1))", f"{line} --ranks 0,1")
            assert time.monotonic() - started < 10
            # not gloo's "Connection closed by peer" of the rank whose wait rank 2 ended first
            assert "called a collective in a cell that runs on ranks 0-1 only" in str(info.value)
            assert "restarted" not in str(info.value)
        code = "import torch\ntry:\n    dist.all_reduce(torch.ones(1))\nexcept Exception:\n  c = 1"
        started = time.monotonic()
        run(code, f"{line} --ranks 0,1")
        # caught, rank 1's cell ended; rank 0 waited for rank 1's group until the where report's
        # deadlock (30 s, a failed cell): the cell's ranks that ended drop their group too
        assert time.monotonic() - started < 10
        assert [cluster.rank_view(r).pull("c") for r in (0, 1)] == [1, 1]
        # Stop before the ranks' notices: rank 1's interrupt came on top of its gloo error,
        # which kept its group (and rank 0's wait) alive; the cluster was restarted
        threading.Timer(0.1, dtrain_magics._magics.runner.request_stop).start()
        started = time.monotonic()
        with pytest.raises(RankError):
            run("import torch\ndist.all_reduce(torch.ones(1))", f"{line} --ranks 0,1")
        assert time.monotonic() - started < 10
        assert [e.pid for e in cluster.engines] == pids, "the cluster was restarted"
        assert rank_values(cluster, "kept") == [0, 1, 2]
        run("import torch\nt = torch.ones(1)\ndist.all_reduce(t)\nfull = t.item()", line)
        assert rank_values(cluster, "full") == [3.0, 3.0, 3.0]
    finally:
        run("pass", "--nodes 2 --backend horovod")  # back to horovod for the other tests


def _horovod_up(cluster: Any) -> list[bool]:
    """Whether Horovod is running on each rank, asked outside a cell (no hooks run)."""
    asked = "__import__('horovod.torch').torch.is_initialized()"
    return list(cluster.view().apply_sync(eval, asked))


def test_horovod_suspended_while_idle_is_up_for_a_cell_on_some_ranks(
    run: Any, cluster: Any
) -> None:
    run("pass")
    time.sleep(SUSPEND_AFTER)
    deadline = time.monotonic() + 10  # every rank suspends Horovod
    while _horovod_up(cluster) != [False, False]:
        assert time.monotonic() < deadline, "Horovod still runs on a rank after the idle time"
        time.sleep(0.2)
    run("who = hvd.rank(), hvd.size()", "--ranks 1")
    assert cluster.rank_view(1).pull("who") == (1, 2)
    run("pass", "--ranks 0")  # at once after it
    _works_on_every_rank(run, cluster)
    assert _horovod_up(cluster) == [True, True]


def test_push_reaches_the_ranks_and_pull_reads_the_first(ip: Any, run: Any, cluster: Any) -> None:
    run("given = None")
    ip.user_ns["offset"] = 7
    run("given = offset\nanswer = rank + offset", "--nodes 2 --ranks 1 --push offset --pull answer")
    assert ip.user_ns["answer"] == 8  # from rank 1, the first (and only) rank of the cell
    assert rank_values(cluster, "given") == [None, 7]
    with pytest.raises(UsageError, match="--pull: rank 1 does not define nowhere_at_all"):
        run("pass", "--ranks 1 --pull nowhere_at_all")


def test_every_rank_listed_is_a_cell_on_every_rank(run: Any, cluster: Any) -> None:
    run(ALLREDUCE, "--ranks 0-1")  # a collective is fine: every rank takes part
    assert rank_values(cluster, "ok") == [2.0, 2.0]
    record = dtrain_magics.last_run()
    assert record is not None and "ranks" not in record.options


@pytest.mark.parametrize(
    ("ranks", "message"),
    [
        ("2", "--ranks names rank 2, but the cluster has 2 ranks (0-1)."),
        ("0,5-6", "--ranks names rank 5, but the cluster has 2 ranks (0-1)."),
        ("one", "--ranks takes rank numbers and ranges such as 0 or 0,2-3, and 'one' is not one."),
        ("0-", "--ranks takes rank numbers and ranges such as 0 or 0,2-3, and '0-' is not one."),
        ("-1", "--ranks takes rank numbers and ranges such as 0 or 0,2-3, and '-1' is not one."),
        ("1-0", "--ranks: 1-0 runs backwards; write it as 0-1."),
        (",", "--ranks names no rank; give rank numbers such as 0 or 0,2-3."),
        ("''", "--ranks names no rank; give rank numbers such as 0 or 0,2-3."),
        ("0-99999", "--ranks names rank 99999; a cluster has at most 1024 ranks."),
        (
            "1 --check-replicas",
            "--check-replicas compares the models of every rank, and --ranks 1 runs the cell on "
            "some of them: leave out one of the two.",
        ),
    ],
)
def test_bad_rank_lists_are_usage_errors(run: Any, cluster: Any, ranks: str, message: str) -> None:
    sent = len(cluster.client.history)
    engines = list(cluster.engines)
    with pytest.raises(UsageError) as info:
        run("print('never')", f"--nodes 2 --ranks {ranks}")
    assert str(info.value) == message
    assert len(cluster.client.history) == sent and cluster.engines == engines
