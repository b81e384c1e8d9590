"""Extra Python environments for the platform tests, and kernels that run in them.

Environments that take torch from PyPI are big (torch's CUDA build pulls several GB of NVIDIA
libraries), so they are made once per machine under ``$DTRAIN_CACHE/venvs/<name>`` (outside the
checkout: a clean clone reuses them) with a stamp of the requirements they were made from; a
changed list makes the environment again. The project itself is reinstalled from the current
checkout's wheel in every test session. Downloads are not cached by pip on every machine (a
proxy that strips caching headers defeats pip's HTTP cache), so keeping the environments is
what keeps a warm run fast.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import wide_listeners
from kernel_session import KernelSession

from dtrain_magics.install.cache import default_cache_dir

REPO = Path(__file__).resolve().parent.parent
VENVS = default_cache_dir() / "venvs"
# what an ordinary Linux machine's pip has: PyPI only (this machine's pip configuration adds a
# local CPU torch and caps torch's version; pip --isolated still reads the site-wide cap)
_PIP_KEEP = ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")


def pypi_environ(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: os.environ) without any pip configuration: pip sees PyPI only."""
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.startswith("PIP_") or k in _PIP_KEEP
    }
    env["PIP_CONFIG_FILE"] = os.devnull  # no configuration file at all, site-wide included
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass(frozen=True)
class Venv:
    """A virtual environment and the environment variables its commands run with."""

    path: Path
    environ: dict[str, str]

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def bin(self, name: str) -> str:
        return str(self.path / "bin" / name)

    def run(
        self, args: list[str], timeout: float = 600, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` with this venv's environment; stdout and stderr together in ``stdout``."""
        return subprocess.run(
            args,
            env=self.environ,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )

    def pip_install(self, *args: str, timeout: float = 1800) -> None:
        done = self.run([self.python, "-m", "pip", "install", "-q", *args], timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"pip install {' '.join(args)} failed:\n{_tail(done.stdout)}")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def create_venv(
    path: Path, environ: dict[str, str], requirements: list[str], python: str = sys.executable
) -> Venv:
    """A new venv of ``python`` at ``path`` (replacing what is there) with ``requirements``."""
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(path)], check=True, timeout=300)
    venv = Venv(path, environ)
    if requirements:
        venv.pip_install(*requirements)
    return venv


def cached_venv(
    name: str, requirements: list[str], environ: dict[str, str], python: str = sys.executable
) -> Venv:
    """``$DTRAIN_CACHE/venvs/<name>`` of ``python`` with ``requirements``: made once, reused
    while unchanged."""
    path = VENVS / name
    stamp = path / ".dtrain-venv-stamp"
    made = {"requirements": requirements, "python": sys.version}
    if python != sys.executable:
        made["python"] = subprocess.check_output([python, "-VV"], text=True, timeout=60).strip()
    recipe = json.dumps(made, sort_keys=True)
    with _locked(VENVS / f"{name}.lock"):
        if stamp.is_file() and stamp.read_text() == recipe and (path / "bin" / "python").exists():
            return Venv(path, environ)
        venv = create_venv(path, environ, requirements, python)
        stamp.write_text(recipe)
        return venv


def _runs(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", ""], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def find_python(version: str) -> str | None:
    """A ``python<version>`` that runs: on ``PATH``, else pyenv's newest of that version."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    pyenvs = sorted(
        root.glob(f"{version}.*/bin/python{version}"),
        key=lambda p: [int(n) if n.isdigit() else -1 for n in p.parents[1].name.split(".")],
    )
    for python in [shutil.which(f"python{version}"), *map(str, reversed(pyenvs))]:
        # pyenv's shim is on PATH even when it would refuse to run that version
        if python and _runs(python):
            return python
    return None


_wheel: list[Path] = []


def project_wheel() -> Path:
    """The project's wheel, built from this checkout once per test session (``python -m build``)."""
    if _wheel:
        return _wheel[0]
    out = Path(tempfile.mkdtemp(prefix="dtrain-wheel-"))
    atexit.register(shutil.rmtree, out, True)
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    wheels = sorted(out.glob("dtrain_magics-*.whl"))
    if done.returncode != 0 or not wheels:
        raise AssertionError(f"python -m build --wheel failed:\n{_tail(done.stdout)}")
    _wheel.append(wheels[0])
    return wheels[0]


def install_project(venv: Venv, extras: str = "") -> None:
    """Install this checkout's wheel (not editable) and its dependencies into ``venv``."""
    wheel = project_wheel()
    venv.pip_install(f"dtrain-magics{extras} @ {wheel.as_uri()}")
    venv.pip_install("--no-deps", "--force-reinstall", str(wheel))


def install_horovod(venv: Venv, *args: str, timeout: float = 3600) -> str:
    """Run ``dtrain-magics install-horovod`` in ``venv``; its output (it must succeed)."""
    done = venv.run([venv.bin("dtrain-magics"), "install-horovod", *args], timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"dtrain-magics install-horovod failed:\n{_tail(done.stdout, 40)}")
    return done.stdout


def horovod_build(venv: Venv) -> dict[str, bool]:
    """What the venv's Horovod was built with, as it says itself."""
    code = (
        "import json, horovod.torch as h\n"
        "print(json.dumps({'mpi': h.mpi_built(), 'gloo': h.gloo_built(), "
        "'nccl': bool(h.nccl_built()), 'cuda': h.cuda_built()}))"
    )
    done = venv.run([venv.python, "-c", code], timeout=300)
    assert done.returncode == 0, done.stdout
    result: dict[str, bool] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_suite(venv: Venv, tmp_path: Path, *args: str, timeout: float = 1800) -> str:
    """Run this checkout's tests ``args`` with ``venv``'s Python and pytest (an IPython
    directory of their own); they must pass. The output, its summary line last."""
    env = {**venv.environ, "IPYTHONDIR": str(tmp_path / "ipython")}
    done = Venv(venv.path, env).run(
        [venv.python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs", *args],
        cwd=REPO,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary
    return done.stdout


def kernelspec(venv: Venv, name: str) -> Path:
    """A kernelspec directory (for JUPYTER_PATH) whose kernel ``name`` runs ``venv``'s Python."""
    root = Path(tempfile.mkdtemp(prefix="dtrain-kernels-"))
    atexit.register(shutil.rmtree, root, True)
    spec = root / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [venv.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": f"Python ({venv.path.name})",
                "language": "python",
            }
        )
    )
    return root


class VenvKernel(KernelSession):
    """A real Jupyter kernel running ``venv``'s Python, started in ``cwd``."""

    def __init__(self, venv: Venv, cwd: Path, name: str = "dtrain-venv") -> None:
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager

        specs = KernelSpecManager(kernel_dirs=[str(kernelspec(venv, name) / "kernels")])
        self.km = KernelManager(kernel_name=name, kernel_spec_manager=specs)
        self.km.start_kernel(cwd=str(cwd), env=dict(venv.environ))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    def assert_allreduce(self, flags: str = "") -> None:
        """A ``%%distributed`` Horovod allreduce cell (2 ranks) works and pulls the sum, 3."""
        cell = "import torch\ntotal = hvd.allreduce(torch.tensor([rank + 1.0]), op=hvd.Sum).item()"
        reply = self.run(f"%%distributed --no-widget --pull total {flags}\n{cell}", 300)
        assert reply.status == "ok", reply.text
        assert "TOTAL 3.0" in self.run("print('TOTAL', total)").text, reply.text

    def wide_listeners(self) -> list[str]:
        """The names of this kernel's descendants that listen on more than loopback."""
        descendants = psutil.Process(self.km.provisioner.pid).children(recursive=True)
        return [name for name, _, _ in wide_listeners(descendants)]


def assert_cpu_build_and_doctor(venv: Venv, built: str, flavour: str, mpi: str) -> None:
    """``install-horovod`` gave the CPU build ``flavour`` (MPI and Gloo, no NCCL), and
    ``doctor`` finds ``mpi`` and says a 2-rank run works."""
    assert flavour in built, built
    assert horovod_build(venv) == {"mpi": True, "gloo": True, "nccl": False, "cuda": False}
    doctor = venv.run([venv.bin("dtrain-magics"), "doctor"], timeout=300)
    assert doctor.returncode == 0, doctor.stdout
    assert mpi in doctor.stdout, doctor.stdout
    assert doctor.stdout.strip().endswith("ready: a 2-rank run works"), doctor.stdout


@contextmanager
def magics_kernel(venv: Venv, cwd: Path) -> Iterator[VenvKernel]:
    """A real kernel of ``venv`` with the magics loaded; its cluster stopped at the end."""
    kernel = VenvKernel(venv, cwd=cwd)
    try:
        assert kernel.run("%load_ext dtrain_magics").status == "ok"
        yield kernel
    finally:
        kernel.run("%dtrain stop", timeout=60)
        kernel.close()


def mpi_environment_fixtures(name: str, mpi: str) -> tuple[Any, Any, Any]:
    """The fixtures of a test of another MPI: ``venv`` (cached as ``name``: this machine's CPU
    torch, as set-up uses, ``mpi`` standing for a cluster's module, mpi4py, and the project
    without the ``[mpi]`` extra, which asks for Open MPI 5), ``built`` (``install-horovod``'s
    output) and ``kernel`` (``magics_kernel``)."""

    @pytest.fixture(scope="module")
    def venv() -> Venv:
        venv = cached_venv(name, ["torch==2.13.0", mpi, "mpi4py"], dict(os.environ))
        install_project(venv)
        return venv

    @pytest.fixture(scope="module")
    def built(venv: Venv) -> str:
        return install_horovod(venv)

    @pytest.fixture
    def kernel(venv: Venv, built: str, tmp_path: Path) -> Iterator[VenvKernel]:
        with magics_kernel(venv, tmp_path) as kernel:
            yield kernel

    return venv, built, kernel
