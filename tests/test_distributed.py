"""%%distributed through the real stack: ipyparallel engines under mpiexec, real Horovod/gloo."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import rank_values
from IPython.core.error import UsageError

from dtrain_magics.errors import RankError, RunTimeoutError

pytestmark = pytest.mark.cluster


def test_names_bound_on_every_rank(run: Any, cluster: Any) -> None:
    run("info = (rank, local_rank, size, str(device), hvd.rank(), hvd.size(), dtrain.rank)")
    assert rank_values(cluster, "info") == [(0, 0, 2, "cpu", 0, 2, 0), (1, 0, 2, "cpu", 1, 2, 1)]


def _settled_output(cluster: Any) -> str:
    """mpiexec's output once it has stopped changing for half a second (lines on their way)."""
    text = cluster.mpiexec_output()
    for _ in range(20):
        time.sleep(0.5)
        now = cluster.mpiexec_output()
        if now == text:
            break
        text = now
    return text


def test_warm_cells_add_nothing_to_the_engines_log(run: Any, cluster: Any) -> None:
    run("pass")
    before = _settled_output(cluster)
    assert "Completed registration" in before  # the engines' start-up lines stay
    for _ in range(3):
        run("pass")
    after = _settled_output(cluster)
    handled = "Handling execute_request"  # ipyparallel's engine log, a line per request
    assert after.count(handled) == before.count(handled)


def test_an_engine_log_asked_for_at_debug_keeps_its_lines(
    ip: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    """A profile's ``c.IPEngine.log_level = "DEBUG"`` is kept: the request lines go on."""
    import os

    from dtrain_magics.cluster import TrainingCluster
    from dtrain_magics.ipython.magics import DistributedMagics

    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path))  # no settings of the user's
    profile = Path(os.environ["IPYTHONDIR"]) / "profile_dtrain-debuglog"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "ipengine_config.py").write_text('c.IPEngine.log_level = "DEBUG"\n')
    magics = DistributedMagics(ip, cluster=TrainingCluster(profile="dtrain-debuglog"))
    try:
        magics.distributed("--nodes 1 --no-widget", "pass")
        before = _settled_output(magics.cluster)
        for _ in range(3):
            magics.distributed("--nodes 1 --no-widget", "pass")
        after = _settled_output(magics.cluster)
        handled = "Handling execute_request"
        assert after.count(handled) >= before.count(handled) + 3
    finally:
        magics.cluster.stop()


def test_horovod_allreduce_sum(run: Any, cluster: Any) -> None:
    run(
        "import torch\ntotal = hvd.allreduce(torch.tensor([rank + 1.0, 10.0]), op=hvd.Sum).tolist()"
    )
    assert rank_values(cluster, "total") == [[3.0, 20.0], [3.0, 20.0]]


TRAIN = """
import torch
torch.manual_seed(1234 + rank)            # different data and init on each rank
model = torch.nn.Linear(8, 1)
{setup}
x, y = torch.randn(64, 8), torch.randn(64, 1)
for _ in range(5):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss({forward}(x), y)
    loss.backward()
    opt.step()
weights = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
"""


def _assert_synced_and_trained(cluster: Any) -> None:
    w0, w1 = rank_values(cluster, "weights")
    np.testing.assert_array_equal(w0, w1)
    init0 = rank_values(cluster, "init")[0]
    assert not np.allclose(w0, init0), "the optimizer did not change the weights"


def test_horovod_distributed_optimizer_keeps_ranks_identical(run: Any, cluster: Any) -> None:
    setup = """
hvd.broadcast_parameters(model.state_dict(), root_rank=0)
init = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().copy()
opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1 * size),
                               named_parameters=model.named_parameters())
"""
    run(TRAIN.format(setup=setup, forward="model"))
    _assert_synced_and_trained(cluster)


def test_torch_backend_ddp_keeps_ranks_identical(run: Any, cluster: Any) -> None:
    setup = """
from torch.nn.parallel import DistributedDataParallel as DDP
ddp = DDP(model)
init = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().copy()
opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
"""
    try:
        run(TRAIN.format(setup=setup, forward="ddp"), "--nodes 2 --backend torch")
        run(
            "backend_facts = (dist.get_backend(), dist.get_world_size(), 'hvd' in globals())",
            "--nodes 2 --backend torch",
        )
        assert rank_values(cluster, "backend_facts") == [("gloo", 2, False)] * 2
        _assert_synced_and_trained(cluster)
    finally:
        run("pass", "--nodes 2 --backend horovod")  # back to horovod for the other tests
    run("import torch\nback = hvd.allreduce(torch.ones(1), op=hvd.Sum).item()")
    assert rank_values(cluster, "back") == [2.0, 2.0]


def test_push_and_pull_round_trip(ip: Any, run: Any) -> None:
    ip.user_ns.update(scale=3, words=["a", "b"])
    run(
        "result = {'scaled': scale * (rank + 1), 'words': words + [str(rank)]}",
        "--nodes 2 --push scale,words --pull result",
    )
    assert ip.user_ns["result"] == {"scaled": 3, "words": ["a", "b", "0"]}


def test_push_errors_name_the_variable(ip: Any, run: Any) -> None:
    ip.user_ns.pop("nowhere", None)
    with pytest.raises(UsageError, match="nowhere is not defined"):
        run("pass", "--nodes 2 --push nowhere")
    import threading

    ip.user_ns["lock"] = threading.Lock()
    with pytest.raises(UsageError, match="lock cannot be sent"):
        run("pass", "--nodes 2 --push lock")


def test_pull_of_undefined_name(run: Any) -> None:
    with pytest.raises(UsageError, match="rank 0 does not define never_set"):
        run("something = 1", "--nodes 2 --pull never_set")


def test_namespace_persists_between_cells(run: Any, cluster: Any) -> None:
    run("import torch\nnet = torch.nn.Linear(2, 2)\ncounter = rank * 10")
    run("counter += 1\nout_features = net.out_features")
    assert rank_values(cluster, "counter") == [1, 11]
    assert rank_values(cluster, "out_features") == [2, 2]


def test_syntax_error_is_not_dispatched(run: Any, cluster: Any) -> None:
    sent = len(cluster.client.history)
    with pytest.raises(SyntaxError):
        run("x = (1,\nprint('never')")
    assert len(cluster.client.history) == sent


def test_exception_on_one_rank_names_it_and_next_cell_works(run: Any, cluster: Any) -> None:
    pids = [e.pid for e in cluster.engines]
    code = (
        "import torch\n"
        "if rank == 1:\n"
        "    raise ValueError('bad shard on rank one')\n"
        "hvd.allreduce(torch.ones(1))  # rank 0 waits here for rank 1, which never comes\n"
    )
    started = time.monotonic()
    with pytest.raises(RankError) as info:
        run(code)
    assert time.monotonic() - started < 20
    err = info.value
    assert err.rank == 1
    assert "rank 1 failed with ValueError: bad shard on rank one" in str(err)
    assert "Rank 0 was interrupted" in str(err)
    rendered = "\n".join(err._render_traceback_())
    assert "line 3" in rendered  # the cell's own line numbers
    # the same processes carry on: interrupted, reset, not restarted
    assert [e.pid for e in cluster.engines] == pids
    run("import torch\nok = hvd.allreduce(torch.ones(1), op=hvd.Sum).item()")
    assert rank_values(cluster, "ok") == [2.0, 2.0]


def test_timeout_interrupts_a_cell_stuck_in_a_collective(run: Any, cluster: Any) -> None:
    code = (
        "import time, torch\n"
        "if rank == 0:\n"
        "    hvd.allreduce(torch.ones(1))  # stuck: rank 1 never joins\n"
        "else:\n"
        "    time.sleep(3600)\n"
    )
    started = time.monotonic()
    with pytest.raises(RunTimeoutError, match="--timeout 2 s"):
        run(code, "--nodes 2 --timeout 2")
    assert time.monotonic() - started < 15
    run("import torch\nok = hvd.allreduce(torch.ones(1), op=hvd.Sum).item()")
    assert rank_values(cluster, "ok") == [2.0, 2.0]


def test_rank_output_is_streamed_with_rank_labels(run: Any, capsys: Any) -> None:
    run("import sys\nprint('hello from', rank)\nprint('warn', rank, file=sys.stderr)")
    captured = capsys.readouterr()
    assert "[rank 0] hello from 0" in captured.out
    assert "[rank 1] hello from 1" in captured.out
    assert "[rank 1] warn 1" in captured.err


def test_device_cuda_without_gpu_is_one_sentence(run: Any, cluster: Any) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the no-GPU message cannot be produced here")
    with pytest.raises(
        UsageError, match=r"--device cuda was requested but rank \d sees no CUDA GPU"
    ):
        run("pass", "--nodes 2 --device cuda")
    run("ok = True")
    assert rank_values(cluster, "ok") == [True, True]


MPI_UP = "import sys\nmpi_up = 'mpi4py.MPI' in sys.modules"


def test_torch_ranks_run_without_mpi_until_a_helper_or_horovod_starts_it(magics: Any) -> None:
    """A fresh cluster's ranks run ``torch.distributed`` as under ``mpiexec -n 2 python``: MPI
    starts only with an MPI helper or Horovod; engine ids are the ranks all the same."""
    line = "--nodes 2 --backend torch --no-widget"
    magics.distributed(line, f"import torch\nt = torch.ones(1)\ndist.all_reduce(t)\n{MPI_UP}")
    cluster = magics.cluster
    assert [(e.rank, e.engine_id) for e in cluster.engines] == [(0, 0), (1, 1)]
    assert rank_values(cluster, "mpi_up") == [False, False]
    assert [t.item() for t in rank_values(cluster, "t")] == [2.0, 2.0]
    magics.distributed(line, f"dtrain.barrier()\n{MPI_UP}")
    assert rank_values(cluster, "mpi_up") == [True, True]
    magics.distributed(line, "dist.all_reduce(t)")  # MPI up: gloo still works
    assert [t.item() for t in rank_values(cluster, "t")] == [4.0, 4.0]
    magics.distributed(
        "--nodes 2 --backend horovod --no-widget",
        "total = hvd.allreduce(torch.ones(1), op=hvd.Sum).item()",
    )
    assert rank_values(cluster, "total") == [2.0, 2.0]


HUGE_PAGES_ON = "[never]" not in (
    Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    if Path("/sys/kernel/mm/transparent_hugepage/enabled").exists()
    else "[never]"
)
FAULTS = """
import os, resource, torch
tunables = os.environ.get("GLIBC_TUNABLES", "")
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    hvd.allreduce_(torch.ones(16 << 20), op=hvd.Sum, name="huge")  # 64 MB
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_a_large_allreduce_faults_in_huge_pages_not_4k_ones(magics: Any) -> None:
    """Ranks run with malloc on transparent huge pages: a 64 MB tensor and Open MPI's 32 MB
    buffer of its allreduce fault in (and are zeroed) 2 MB at a time, not 4 KB (24,576 faults)."""
    magics.distributed("--nodes 2 --no-widget", FAULTS)
    cluster = magics.cluster
    assert all("glibc.malloc.hugetlb=1" in t.split(":") for t in rank_values(cluster, "tunables"))
    if HUGE_PAGES_ON:  # else the kernel ignores malloc's advice
        faults = rank_values(cluster, "faults")
        assert max(min(per_rank) for per_rank in faults) < 4096, faults
