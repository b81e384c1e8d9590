"""On GPUs: one GPU per rank, Horovod allreduce of CUDA tensors over NCCL, ``--backend torch`` with
NCCL, and the quickstart with ``--device cuda``. Skipped, with the reason, where torch sees no GPU
(see docs/gpu-runs.md). NCCL cannot put two ranks on one GPU, so these use min(2, GPUs) ranks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from helpers import rank_values
from nbclient import NotebookClient

pytestmark = [pytest.mark.cluster, pytest.mark.gpu]


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


GPUS = _gpus()
RANKS = min(2, GPUS)
needs_gpu = pytest.mark.skipif(
    GPUS == 0, reason="torch sees no CUDA GPU here (torch.cuda.device_count() == 0)"
)


@pytest.fixture
def gpu_run(run: Any) -> Any:
    """``gpu_run(code, extra="")``: a cell on RANKS ranks, one GPU each; back to CPU afterwards."""

    def run_cell(code: str, extra: str = "") -> Any:
        return run(code, f"--nodes {RANKS} --device cuda {extra}".strip())

    yield run_cell
    run("pass")  # the other tests expect 2 CPU ranks with Horovod


@needs_gpu
def test_horovod_has_nccl_operations() -> None:
    import horovod.torch as hvd

    assert hvd.nccl_built(), "this venv's Horovod lacks NCCL: run dtrain-magics install-horovod"


@needs_gpu
def test_one_gpu_per_rank(gpu_run: Any, cluster: Any) -> None:
    gpu_run("import torch\nwhere = (str(device), torch.cuda.current_device())")
    assert rank_values(cluster, "where") == [(f"cuda:{r}", r) for r in range(RANKS)]


@needs_gpu
def test_horovod_allreduce_of_cuda_tensors_over_nccl(gpu_run: Any, cluster: Any) -> None:
    gpu_run(
        "import torch\n"
        "t = torch.full((1024,), rank + 1.0, device=device)\n"
        "out = hvd.allreduce(t, op=hvd.Sum)\n"
        "total = (out.device.type, out[0].item(), bool(hvd.nccl_built()))"
    )
    want = RANKS * (RANKS + 1) / 2
    assert rank_values(cluster, "total") == [("cuda", want, True)] * RANKS


@needs_gpu
def test_torch_backend_uses_nccl_on_cuda(gpu_run: Any, cluster: Any) -> None:
    gpu_run(
        "import torch\n"
        "t = torch.ones(4, device=device) * (rank + 1)\n"
        "dist.all_reduce(t)\n"
        "bound = dist.distributed_c10d._get_default_group().bound_device_id\n"
        "facts = (dist.get_backend(), t[0].item(), bound == device)",
        "--backend torch",
    )
    want = RANKS * (RANKS + 1) / 2
    assert rank_values(cluster, "facts") == [("nccl", want, True)] * RANKS


@needs_gpu
def test_quickstart_with_device_cuda() -> None:
    path = Path(__file__).resolve().parent.parent / "notebooks" / "01-quickstart.ipynb"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith("%%distributed"):
            first, rest = cell.source.split("\n", 1)
            first = re.sub(r"--nodes \d+", f"--nodes {RANKS}", first) + " --device cuda"
            cell.source = f"{first}\n{rest}\nassert str(device).startswith('cuda')"
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "held-out accuracy" in text


@needs_gpu
def test_pulled_cuda_tensors_arrive_on_the_notebooks_cpu(gpu_run: Any, ip: Any) -> None:
    gpu_run(
        "import torch\nweights = {'w': torch.full((3,), rank + 2.0, device=device)}\n"
        "def shifted(x):\n    return x + 1",
        "--pull weights,shifted",
    )
    pulled = ip.user_ns["weights"]["w"]
    assert pulled.device.type == "cpu" and pulled.tolist() == [2.0, 2.0, 2.0]
    assert ip.user_ns["shifted"](1) == 2  # no GPU tensor in it: sent as ipyparallel sends it


@needs_gpu
def test_horovod_stays_up_between_cells_on_gpus(gpu_run: Any, cluster: Any) -> None:
    """A restart of Horovod rebuilds NCCL's communicators: ranks on GPUs keep it up."""
    import time

    gpu_run("pass")
    time.sleep(5)  # past rank/idle.py's SUSPEND_AFTER; asked outside a cell, which would resume
    up = cluster.view().apply_sync(eval, "__import__('horovod.torch').torch.is_initialized()")
    assert list(up) == [True] * RANKS


@pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs: one per simulated node")
def test_local_rank_names_the_gpu_when_nodes_are_simulated(run: Any, cluster: Any) -> None:
    run("where = (local_rank, device.index)", "--nodes 2 --procs-per-node 1 --device cuda")
    try:
        assert rank_values(cluster, "where") == [(0, 0), (1, 1)]
    finally:
        run("pass")


@pytest.mark.skipif(GPUS != 1, reason="needs exactly 1 GPU: 2 ranks would have to share it")
def test_more_ranks_than_gpus(run: Any, cluster: Any) -> None:
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="NCCL cannot share a GPU between ranks"):
        run("pass", "--nodes 2 --device cuda")
    run("where = str(device)", "--nodes 2 --device auto")
    assert rank_values(cluster, "where") == ["cpu", "cpu"]
    assert "auto: 1 GPU for 2 ranks" in (cluster.device or "")
