"""A rank whose device is CUDA but whose Horovod lacks NCCL operations fails the cell with one
sentence naming the fix, before any collective (instead of a segfault in MPI)."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import rank_values

from dtrain_magics.errors import RankError
from dtrain_magics.rank.compat import check_backend_device, horovod_device_problem

SENTENCE_START = "this rank's device is a CUDA GPU but its Horovod was built without GPU (NCCL)"


def test_cuda_device_with_horovod_without_nccl_is_the_sentence() -> None:
    problem = horovod_device_problem("cuda", nccl_built=False)
    assert problem is not None and problem.startswith(SENTENCE_START)
    assert "`dtrain-magics install-horovod`" in problem
    assert "\n" not in problem and problem.count(". ") == 0 and problem.endswith(".")


def test_fitting_devices_pass() -> None:
    assert horovod_device_problem("cuda", nccl_built=True) is None
    assert horovod_device_problem("cpu", nccl_built=False) is None
    assert horovod_device_problem("cpu", nccl_built=True) is None


def test_the_check_reads_this_environments_horovod() -> None:
    import horovod.torch as hvd
    import torch

    if hvd.nccl_built():
        pytest.skip("this environment's Horovod has NCCL operations; the mismatch cannot occur")
    check_backend_device("horovod", torch.device("cpu"))
    check_backend_device("torch", torch.device("cuda", 0))  # torch.distributed picks nccl itself
    with pytest.raises(RuntimeError, match="built without GPU \\(NCCL\\) operations"):
        check_backend_device("horovod", torch.device("cuda", 0))


PATCH = (
    "import torch, dtrain_magics.rank.setup as _setup\n"
    "_real_resolve_device = _setup.resolve_device\n"
    "_setup.resolve_device = lambda *args: torch.device('cuda', 0)\n"
)
RESTORE = (
    "import dtrain_magics.rank.setup as _setup\n_setup.resolve_device = _real_resolve_device\n"
)


@pytest.mark.cluster
def test_a_simulated_cuda_rank_fails_the_cell_with_the_sentence(run: Any, cluster: Any) -> None:
    import horovod.torch as hvd

    if hvd.nccl_built():
        pytest.skip("this environment's Horovod has NCCL operations; the mismatch cannot occur")
    run("pass")  # the cluster is up with Horovod initialised
    view = cluster.view()
    view.execute(PATCH, block=True)
    try:
        cluster.backends.forget()  # make the next cell initialise the ranks again
        with pytest.raises(RankError) as info:
            run("import torch\nnever = hvd.allreduce(torch.ones(1).cuda())")
        message = str(info.value)
        assert message.startswith(f"initialising horovod failed: {SENTENCE_START}"), message
        assert "dtrain-magics install-horovod" in message
        assert "\n" not in message
    finally:
        view.execute(RESTORE, block=True)
        cluster.backends.forget()
    view.execute("_cell_ran = 'never' in globals()", block=True)
    assert rank_values(cluster, "_cell_ran") == [False, False]  # it failed before the cell ran
    run("import torch\nok = hvd.allreduce(torch.ones(1), op=hvd.Sum).item()")
    assert rank_values(cluster, "ok") == [2.0, 2.0]
