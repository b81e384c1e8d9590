"""The CUDA toolkit a Horovod build compiles with: the machine's own, or PyPI's NVIDIA wheels.

A CUDA build of torch makes Horovod's CMake look for a toolkit whatever the environment says, so
one matching ``torch.version.cuda`` (major.minor) must be found or installed. PyPI's
``cuda-toolkit`` wheels for CUDA >= 13 install one tree, ``site-packages/nvidia/cu13``, that lacks
what CMake and nvcc look for: ``lib64`` beside ``lib`` and the unversioned ``libcudart.so``; the
NCCL wheel lacks ``libnccl.so``. :func:`complete_pypi_layout` and :func:`complete_nccl_layout` add
them as symlinks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .facts import EnvFacts, InstallError

# Compute capabilities built when torch does not say which it was built for: those of current
# datacenter and desktop GPUs (CUDA 13 dropped everything below 7.5).
DEFAULT_ARCHS = (75, 80, 86, 89, 90, 100, 120)
# The parts of the toolkit a Horovod build needs: the compiler, the runtime, and CCCL, which
# supplies <nv/target> that cuda_fp16.h includes.
TOOLKIT_EXTRAS = "nvcc,cudart,cccl"


@dataclass(frozen=True)
class CudaToolkit:
    """A CUDA toolkit tree: ``home/bin/nvcc``, ``home/include``, ``home/lib64``."""

    home: Path
    version: str  # major.minor, as nvcc reports it
    source: str  # "system" or "pypi"

    @property
    def nvcc(self) -> Path:
        return self.home / "bin" / "nvcc"


def parse_nvcc_version(text: str) -> str | None:
    """``13.0`` from ``nvcc --version`` ("Cuda compilation tools, release 13.0, V13.0.88")."""
    match = re.search(r"release (\d+)\.(\d+)", text)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def major_minor(version: str) -> tuple[int, int]:
    """(13, 0) from "13.0", "13.0.3" or "13.0.3.0"."""
    parts = re.findall(r"\d+", version)
    if len(parts) < 2:
        raise ValueError(f"not a CUDA version: {version!r}")
    return int(parts[0]), int(parts[1])


def versions_match(toolkit_version: str, torch_cuda: str) -> bool:
    """A toolkit fits a torch when their CUDA major.minor are equal."""
    return major_minor(toolkit_version) == major_minor(torch_cuda)


def nvcc_version(nvcc: Path) -> str | None:
    """What ``nvcc --version`` says, as major.minor; None when it does not run."""
    try:
        done = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvcc_version(done.stdout)


def system_toolkit_candidates(environ: Mapping[str, str], nvcc_on_path: str | None) -> list[Path]:
    """Where a machine's toolkit may be: CUDA_HOME, CUDA_PATH, nvcc on PATH, /usr/local/cuda."""
    found: list[Path] = []
    for name in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(name):
            found.append(Path(environ[name]))
    if nvcc_on_path:
        # /usr/local/bin/nvcc may be a wrapper script; only a real toolkit tree counts (below)
        found.append(Path(os.path.realpath(nvcc_on_path)).parent.parent)
    found.append(Path("/usr/local/cuda"))
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def find_system_toolkit(environ: Mapping[str, str] | None = None) -> CudaToolkit | None:
    """The machine's own CUDA toolkit: the first candidate with nvcc and the runtime headers."""
    env = os.environ if environ is None else environ
    for home in system_toolkit_candidates(env, shutil.which("nvcc", path=env.get("PATH"))):
        if (
            not (home / "bin" / "nvcc").is_file()
            or not (home / "include" / "cuda_runtime.h").is_file()
        ):
            continue
        version = nvcc_version(home / "bin" / "nvcc")
        if version:
            return CudaToolkit(home, version, "system")
    return None


def pypi_toolkit_requirement(torch_requires: list[str], torch_cuda: str) -> str:
    """The ``cuda-toolkit`` requirement for a build: the exact release torch pins, if it pins one.

    Falls back to the newest release of torch's CUDA major.minor. PyPI's CUDA 12 toolkit wheels
    are split into one tree per component, which CMake cannot use as one toolkit, so only
    CUDA >= 13 comes from PyPI.
    """
    major, minor = major_minor(torch_cuda)
    if major < 13:
        raise InstallError(
            f"torch was built with CUDA {torch_cuda}, and PyPI's CUDA {major} toolkit wheels "
            f"cannot serve as a toolkit for the build: install CUDA toolkit {major}.{minor} and "
            "set CUDA_HOME to it, then run `dtrain-magics install-horovod` again."
        )
    for requirement in torch_requires:
        match = re.match(r"\s*cuda-toolkit\s*(?:\[[^\]]*\])?\s*==\s*([0-9][0-9.]*)", requirement)
        if match and major_minor(match.group(1)) == (major, minor):
            return f"cuda-toolkit[{TOOLKIT_EXTRAS}]=={match.group(1)}"
    return f"cuda-toolkit[{TOOLKIT_EXTRAS}]=={major}.{minor}.*"


def pypi_toolkit_home(env: EnvFacts, torch_cuda: str) -> Path | None:
    """``site-packages/nvidia/cu<major>`` of ``env``, if the toolkit wheels put nvcc there."""
    major = major_minor(torch_cuda)[0]
    for base in env.nvidia_dirs or [os.path.join(env.site_packages, "nvidia")]:
        home = Path(base) / f"cu{major}"
        if (home / "bin" / "nvcc").is_file():
            return home
    return None


def nccl_home(env: EnvFacts) -> Path | None:
    """The NCCL of the ``nvidia-nccl`` wheel torch depends on (the one torch itself loads)."""
    for base in env.nvidia_dirs or [os.path.join(env.site_packages, "nvidia")]:
        home = Path(base) / "nccl"
        if (home / "include" / "nccl.h").is_file():
            return home
    return None


def _link(link: Path, target: str) -> None:
    """Make ``link`` a symlink to ``target`` unless something already answers to that name."""
    if link.exists() or link.is_symlink():
        return
    link.symlink_to(target)


def _versioned(lib_dir: Path, stem: str) -> str | None:
    """The file name of ``lib<stem>.so.<N>`` in ``lib_dir`` (the highest N), if any."""
    names = sorted(
        (p.name for p in lib_dir.glob(f"lib{stem}.so.*")),
        key=lambda n: [int(x) for x in re.findall(r"\d+", n.split(".so.", 1)[1])],
    )
    return names[-1] if names else None


def complete_pypi_layout(toolkit_home: Path) -> None:
    """Add what CMake's FindCUDAToolkit and nvcc's link step look for (idempotent)."""
    lib = toolkit_home / "lib"
    _link(toolkit_home / "lib64", "lib")
    cudart = _versioned(lib, "cudart")
    if cudart is None:
        raise InstallError(
            f"{lib} has no libcudart.so.N: the cuda-toolkit wheel's cudart part is missing; "
            "run `dtrain-magics install-horovod` again."
        )
    _link(lib / "libcudart.so", cudart)


def complete_nccl_layout(nccl: Path) -> None:
    """Add the unversioned ``libnccl.so`` that Horovod's FindNCCL links against (idempotent)."""
    libnccl = _versioned(nccl / "lib", "nccl")
    if libnccl is not None:
        _link(nccl / "lib" / "libnccl.so", libnccl)


def parse_arch_codes(text: str) -> list[int]:
    """Compute capabilities named in ``text`` ("sm_75 sm_80 sm_90a" -> [75, 80, 90])."""
    return sorted({int(m) for m in re.findall(r"sm_(\d+)", text)})


def nvcc_arch_codes(nvcc: Path) -> list[int]:
    """The real architectures ``nvcc`` can compile for (``nvcc --list-gpu-code``)."""
    try:
        done = subprocess.run(
            [str(nvcc), "--list-gpu-code"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_arch_codes(done.stdout)


def cuda_arch_list(torch_archs: list[str], nvcc_archs: list[int]) -> list[int]:
    """Architectures to build Horovod's CUDA kernels for: torch's own, as far as nvcc knows them.

    Where torch names none, the common current ones the toolkit supports. Horovod's default
    (every architecture nvcc lists) costs build time for GPUs torch itself does not run on.
    """
    wanted = parse_arch_codes(" ".join(torch_archs)) or list(DEFAULT_ARCHS)
    supported = set(nvcc_archs)
    chosen = [cc for cc in wanted if cc in supported] if supported else wanted
    if not chosen:
        raise InstallError(
            f"the CUDA toolkit supports none of the architectures torch was built for "
            f"({', '.join(map(str, wanted))}); install the toolkit version torch uses."
        )
    return chosen
