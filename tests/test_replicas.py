"""``dtrain.check_replicas``: the same model on every rank, or one sentence naming the ranks and
the first tensor that differs, through the real 2-rank cluster (Horovod/gloo, and
``--backend torch``). Every cell has ``--timeout 60``: a rank left waiting in the check's
collective would end it with ``RunTimeoutError`` instead of blocking the test.

The check raises on every rank at once. The sentences, and that no rank waits, are checked in
cells that catch the error on every rank (``_caught``). In a cell that fails (``_fails``) rank 1
sleeps before its error leaves the cell, so that the runner interrupts it in the sleep: when
every rank raises at the same moment, the runner's interrupt of the ranks not yet reported can
land after their cell ended (and then kill the rank, or abort its next cell)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import rank_values

import dtrain_magics
from dtrain_magics.errors import RankError, RunTimeoutError

pytestmark = pytest.mark.cluster

LINE = "--nodes 2 --timeout 60"
TORCH = f"{LINE} --backend torch"
MLP = "torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))"
BROADCAST = (
    "broadcast the parameters from rank 0 after building the model "
    "(hvd.broadcast_parameters(model.state_dict(), root_rank=0)) and synchronise buffers"
)
NAME_ONE = "name a torch.nn.Module or a state_dict bound in the cell, as in --check-replicas model"
CHECK = "from dtrain_magics.rank.replicas import check_namespace\n"


@pytest.fixture(autouse=True, scope="module")
def _forget_the_models(ip: Any, cluster: Any) -> Iterator[None]:
    """Leave no model of these tests in the ranks' namespaces: some differ by rank, and a later
    ``--check-replicas`` without names checks every model bound."""
    yield
    names = ("model", "net", "state", "lonely", "models", "checked", "state_checked", "said")
    names += ("found",)
    forget = f"for _name in {names!r}:\n    globals().pop(_name, None)"
    ip.run_cell_magic("distributed", LINE, forget)


def _indented(code: str) -> str:
    return "\n".join(f"    {line}" for line in code.splitlines())


def _caught(run: Any, cluster: Any, code: str, line: str = LINE) -> list[str]:
    """Each rank's ``"ErrorName: message"`` from ``code``, run in a try on every rank. The cell
    must end at once: a rank that raised leaves no other waiting in the collective."""
    started = time.monotonic()
    caught = "except Exception as e:\n    said = f'{type(e).__name__}: {e}'"
    run(f"said = None\ntry:\n{_indented(code)}\n{caught}", line)
    assert time.monotonic() - started < 15
    return rank_values(cluster, "said")


def _fails(run: Any, setup: str, call: str) -> RankError:
    """The error of a cell that fails on every rank: rank 0 raises from ``call`` on the cell's
    line ``setup``'s lines + 3, rank 1 from the same call 5 s later (it is interrupted first)."""
    cell = (
        f"import time\n{setup}\nif rank == 0:\n    {call}\n"
        f"try:\n    {call}\nfinally:\n    time.sleep(5)\n"
    )
    with pytest.raises(RankError) as info:
        run(cell, LINE)
    assert not isinstance(info.value, RunTimeoutError), str(info.value)
    record = dtrain_magics.last_run()
    assert record is not None and record.status == "failed"
    return info.value


def _works(run: Any, cluster: Any) -> None:
    """The ranks still run collectives together."""
    run("import torch\nok = hvd.allreduce(torch.ones(1), op=hvd.Sum).item()", LINE)
    assert rank_values(cluster, "ok") == [2.0, 2.0]


def test_a_broadcast_model_passes_and_counts_its_tensors(run: Any, cluster: Any) -> None:
    code = (
        "import torch\n"
        "torch.manual_seed(rank)\n"
        "model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4), "
        "torch.nn.Linear(4, 2))\n"
        "hvd.broadcast_parameters(model.state_dict(), root_rank=0)\n"
        "checked = dtrain.check_replicas(model)\n"
    )
    run(code, LINE)
    assert rank_values(cluster, "checked") == [9, 9]  # 6 parameters, 3 BatchNorm buffers


def test_a_missed_broadcast_fails_every_rank_naming_the_first_parameter(
    run: Any, cluster: Any
) -> None:
    sentence = (
        "found that the replicas differ: rank 1 holds other values than rank 0 in model's "
        f"parameter '0.weight' (the first of 4 tensors that differ); {BROADCAST}"
    )
    setup = f"import torch\ntorch.manual_seed(rank)\nmodel = {MLP}"
    code = f"{setup}\ndtrain.check_replicas(model)"
    assert _caught(run, cluster, code) == [f"ReplicasDiffer: {sentence}"] * 2  # on every rank
    _works(run, cluster)
    error = _fails(run, setup, "dtrain.check_replicas(model)")
    assert str(error) == f"rank 0 {sentence}. Rank 1 was interrupted."
    rendered = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error._render_traceback_()))
    assert "line 6" in rendered and "----> 6     dtrain.check_replicas(model)" in rendered
    assert "allgather" not in rendered and "replicas.py" not in rendered  # the user's frames


def test_an_unsynchronised_batchnorm_buffer_is_named_as_a_buffer(run: Any, cluster: Any) -> None:
    code = (
        "import torch\n"
        "torch.manual_seed(0)\n"
        "net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4))\n"
        "hvd.broadcast_parameters(net.state_dict(), root_rank=0)\n"
        "torch.manual_seed(100 + rank)\n"
        "net(torch.randn(16, 8))  # each rank's own batch updates its running statistics\n"
        "dtrain.check_replicas(net, name='net')\n"
    )
    sentence = (
        "found that the replicas differ: rank 1 holds other values than rank 0 in net's "
        "buffer '1.running_mean' (the first of 2 tensors that differ); synchronise the buffers: "
        "broadcast them from rank 0 (hvd.broadcast_parameters(net.state_dict(), root_rank=0)) or "
        "use torch.nn.SyncBatchNorm"
    )
    assert _caught(run, cluster, code) == [f"ReplicasDiffer: {sentence}"] * 2
    _works(run, cluster)


def test_a_state_dict_of_any_dtype_is_checked(run: Any, cluster: Any) -> None:
    code = (
        "import torch\n"
        "state = {'w': torch.arange(6.0).reshape(2, 3).t(), 'half': torch.ones(4, "
        "dtype=torch.bfloat16), 'step': torch.tensor(3), 'epoch': 1}\n"
        "state_checked = dtrain.check_replicas(state, name='state')\n"
    )
    run(code, LINE)
    assert rank_values(cluster, "state_checked") == [3, 3]
    renamed = "state['w' if rank == 0 else 'v'] = state.pop('w')\ndtrain.check_replicas(state)"
    sentence = (
        "found that the replicas differ in model's 'w': rank 0 holds it as a float32 tensor of "
        "shape [3, 2] and rank 1 does not hold it; build the same model, with the same dtypes, "
        "on every rank"
    )
    assert _caught(run, cluster, renamed) == [f"ReplicasDiffer: {sentence}"] * 2
    _works(run, cluster)


def test_the_torch_backend_checks_a_ddp_model_and_skips_shards(run: Any, cluster: Any) -> None:
    try:
        code = (
            "import torch\n"
            "from torch.distributed.device_mesh import init_device_mesh\n"
            "from torch.distributed.tensor import Replicate, Shard, distribute_tensor\n"
            "torch.manual_seed(rank)\n"
            "ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 4))\n"
            "ddp_checked = dtrain.check_replicas(ddp, name='ddp')\n"
            "mesh = init_device_mesh('cpu', (2,))\n"
            "parts = {'shard': distribute_tensor(torch.randn(4, 2), mesh, [Shard(0)]),\n"
            "         'whole': distribute_tensor(torch.ones(3), mesh, [Replicate()])}\n"
            "parts_checked = dtrain.check_replicas(parts, name='parts')\n"
        )
        run(code, TORCH)
        assert rank_values(cluster, "ddp_checked") == [2, 2]
        assert rank_values(cluster, "parts_checked") == [1, 1]  # the shards differ by design
        bare = "torch.manual_seed(rank)\nbare = torch.nn.Linear(8, 4)\ndtrain.check_replicas(bare)"
        advice = "wrap the model in DistributedDataParallel, which broadcasts rank 0's parameters"
        sentence = (
            "found that the replicas differ: rank 1 holds other values than rank 0 in model's "
            f"parameter 'weight' (the first of 2 tensors that differ); {advice}"
        )
        assert _caught(run, cluster, bare, TORCH) == [f"ReplicasDiffer: {sentence}"] * 2
    finally:
        names = ("ddp", "mesh", "parts", "bare", "ddp_checked", "parts_checked")
        run(f"for _name in {names!r}:\n    globals().pop(_name, None)", TORCH)
        run("pass", f"{LINE} --backend horovod")  # back to horovod for the other tests
    _works(run, cluster)


def test_a_missing_name_fails_every_rank_and_none_hangs(run: Any, cluster: Any) -> None:
    missing = f"has no model 'modle' to check with --check-replicas; {NAME_ONE}"
    code = f"{CHECK}check_namespace(globals(), ('modle',))"
    assert _caught(run, cluster, code) == [f"NothingToCheck: {missing}"] * 2
    # bound on rank 0 only: rank 1 fails its lookup, rank 0 is told why, and neither waits
    lonely = (
        f"{CHECK}import torch\n"
        "globals().pop('lonely', None)\n"
        "if rank == 0:\n"
        "    lonely = torch.nn.Linear(2, 2)\n"
        "check_namespace(globals(), ('lonely',))\n"
    )
    assert _caught(run, cluster, lonely) == [
        "ReplicasDiffer: could not compare the replicas because rank 1 has no model 'lonely' to "
        f"check with --check-replicas; {NAME_ONE}",
        f"NothingToCheck: has no model 'lonely' to check with --check-replicas; {NAME_ONE}",
    ]
    # without names: every torch.nn.Module bound at top level, by name
    found = (
        f"{CHECK}import torch\ntorch.manual_seed(0)\n"
        "found = check_namespace({'b': torch.nn.Linear(2, 2), 'a': torch.nn.Linear(2, 2), "
        "'_skip': torch.nn.Linear(rank + 1, 1), 'n': 3}, ())\n"
    )
    run(found, LINE)
    assert rank_values(cluster, "found") == [["a", "b"], ["a", "b"]]
    teacher = (
        f"{CHECK}import torch\ntorch.manual_seed(0)\n"
        "models = {'a': torch.nn.Linear(2, 2)}\n"
        "if rank == 0:\n"
        "    models['teacher'] = torch.nn.Linear(2, 2)\n"
        "found = check_namespace(models, ())\n"
    )
    lacks = "rank 1 does not hold a model 'teacher', which rank 0 holds"
    said = f"ReplicasDiffer: found that the replicas differ: {lacks}"
    assert _caught(run, cluster, teacher) == [said] * 2
    _works(run, cluster)
    # the cell fails with the rank's own sentence (not "failed with NothingToCheck: ...")
    error = _fails(run, CHECK.strip(), "check_namespace(globals(), ('modle',))")
    assert str(error) == f"rank 0 {missing}. Rank 1 was interrupted."


def test_a_check_on_some_ranks_fails_at_once(run: Any, cluster: Any) -> None:
    started = time.monotonic()
    with pytest.raises(RankError) as info:
        run("import torch\ndtrain.check_replicas(torch.nn.Linear(2, 2))", f"{LINE} --ranks 0")
    assert time.monotonic() - started < 5
    assert str(info.value) == (
        "rank 0 called a collective in a cell that runs on rank 0 only (--ranks 0); collectives "
        "need every rank, so run it without --ranks."
    )
    _works(run, cluster)


def test_the_flag_checks_the_models_after_the_cell(run: Any, cluster: Any) -> None:
    forget = (
        "import torch\n"
        "for _n in [n for n, v in globals().items() if isinstance(v, torch.nn.Module)]:\n"
        "    del globals()[_n]"
    )
    run(forget, LINE)  # earlier tests' models: --check-replicas alone checks every one
    build = f"import torch\ntorch.manual_seed(rank)\nmodel = {MLP}\n"
    synced = build + "hvd.broadcast_parameters(model.state_dict(), root_rank=0)\nmodel\n"
    run(synced, f"{LINE} --check-replicas model")
    record = dtrain_magics.last_run()
    assert record is not None and record.status == "succeeded"
    assert len(record.values) == 1  # the cell's own value, nothing of the check's
    run(synced, f"{LINE} --check-replicas")  # every torch.nn.Module bound on the ranks
    started = time.monotonic()
    with pytest.raises(RankError) as info:  # every rank raises the same sentence at once
        run(build, f"{LINE} --check-replicas model")
    assert time.monotonic() - started < 10
    assert str(info.value) == (
        "rank 0 found that the replicas differ: rank 1 holds other values than rank 0 in "
        f"model's parameter '0.weight' (the first of 4 tensors that differ); {BROADCAST}."
    )
    record = dtrain_magics.last_run()
    assert record is not None and record.status == "failed"
    assert record.exit_reason.startswith("rank 0 found that the replicas differ")
    with pytest.raises(RankError, match="has no model 'modle' to check with --check-replicas"):
        run("x = 1", f"{LINE} --check-replicas modle")
    run("globals().pop('model', None)", LINE)
    _works(run, cluster)
