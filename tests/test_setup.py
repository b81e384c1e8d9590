"""The set-up produced a real stack: Horovod built with PyTorch, MPI and Gloo by the packaged
installer (``dtrain-magics install-horovod``); one version."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dtrain_magics

DTRAIN_MAGICS = os.path.join(os.path.dirname(sys.executable), "dtrain-magics")


def test_horovod_torch_imports_with_mpi_and_gloo() -> None:
    import horovod.torch as hvd

    assert hvd.mpi_built() and hvd.gloo_built()


def test_horovodrun_check_build_lists_pytorch_and_mpi() -> None:
    horovodrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    out = subprocess.run(
        [horovodrun, "--check-build"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    lines = [line.strip() for line in out.splitlines()]
    assert "[X] PyTorch" in lines
    assert lines.count("[X] MPI") == 2  # the MPI controller and MPI tensor operations
    assert lines.count("[X] Gloo") == 2


def test_horovod_libraries_find_mpi_relative_to_the_venv() -> None:
    """The cached wheel must not depend on the path of the checkout it was built in."""
    import horovod

    so = next(
        p
        for p in os.scandir(os.path.join(os.path.dirname(horovod.__file__), "torch"))
        if p.name.startswith("mpi_lib_v2") and p.name.endswith(".so")
    )
    out = subprocess.run(["readelf", "-d", so.path], capture_output=True, text=True).stdout
    runpath = next(line for line in out.splitlines() if "RUNPATH" in line)
    assert "$ORIGIN" in runpath and "/work/" not in runpath


def test_setup_installed_horovod_with_the_console_command() -> None:
    """scripts/setup.sh runs ``dtrain-magics install-horovod``: a second run has nothing to do."""
    import horovod

    out = subprocess.run(
        [DTRAIN_MAGICS, "install-horovod"], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    flavour = (Path(horovod.__file__).parent / ".dtrain-build").read_text().strip()
    assert f"Horovod 0.28.1 for {flavour} is already installed" in out, out


@pytest.mark.cluster
def test_doctor_says_the_venv_is_ready() -> None:
    done = subprocess.run([DTRAIN_MAGICS, "doctor"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("ready: a 2-rank run works")


def test_one_version_string() -> None:
    assert importlib.metadata.version("dtrain-magics") == dtrain_magics.__version__


def test_load_ext_is_light() -> None:
    """``%load_ext`` imports neither torch nor ipyparallel's client, and starts nothing."""
    code = (
        "import sys\nfrom IPython.testing.globalipapp import start_ipython\n"
        "ip = start_ipython()\nip.run_line_magic('load_ext', 'dtrain_magics')\n"
        "print('torch' in sys.modules, 'horovod' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.split()[-2:] == ["False", "False"]
