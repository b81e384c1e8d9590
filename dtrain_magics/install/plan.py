"""What a Horovod build of one flavour needs: the C++ standard, the CUDA toolkit, NCCL and the
GPU architectures, and the build's environment variables."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .cuda import (
    CudaToolkit,
    complete_nccl_layout,
    complete_pypi_layout,
    cuda_arch_list,
    find_system_toolkit,
    nccl_home,
    nvcc_arch_codes,
    nvcc_version,
    pypi_toolkit_home,
    pypi_toolkit_requirement,
    versions_match,
)
from .facts import EnvFacts, InstallError, read_env
from .pip import pip_install

HOROVOD_VERSION = "0.28.1"
TOOLKIT_CHOICES = ("auto", "system", "pypi")
Report = Callable[[str], None]


def torch_version_tuple(version: str) -> tuple[int, int]:
    """(2, 14) from "2.14.1+cu130" or "2.15.0.dev20260101"."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if not match:
        raise ValueError(f"not a torch version: {version!r}")
    return int(match.group(1)), int(match.group(2))


def cxx_standard(torch_version: str) -> int:
    """The C++ standard torch's headers require of extensions: 17 up to 2.13, 20 from 2.14."""
    return 20 if torch_version_tuple(torch_version) >= (2, 14) else 17


@dataclass(frozen=True)
class BuildPlan:
    """Everything a build of one flavour depends on."""

    key: str
    cxx_standard: int
    toolkit: CudaToolkit | None = None
    nccl_home: Path | None = None
    cuda_archs: list[int] = field(default_factory=list)

    @property
    def gpu(self) -> bool:
        """Whether this build has NCCL GPU operations."""
        return self.toolkit is not None


def build_environment(
    plan: BuildPlan,
    *,
    python_bin: Path,
    mpi_bin: Path,
    cmake: str,
    base: Mapping[str, str],
    jobs: int,
) -> dict[str, str]:
    """The environment of ``pip wheel`` for ``plan``.

    The caller's HOROVOD_* variables are dropped: the recipe decides what is built (the
    architecture list already honours HOROVOD_BUILD_CUDA_CC_LIST).
    """
    env = {k: v for k, v in base.items() if not k.startswith("HOROVOD_")}
    env.update(
        HOROVOD_WITH_PYTORCH="1",
        HOROVOD_WITHOUT_TENSORFLOW="1",
        HOROVOD_WITHOUT_MXNET="1",
        HOROVOD_WITH_GLOO="1",
        HOROVOD_WITH_MPI="1",
        HOROVOD_CMAKE=cmake,
        # Horovod's bundled third-party CMake files declare policies older than 3.5
        CMAKE_POLICY_VERSION_MINIMUM="3.5",
        MAKEFLAGS=base.get("MAKEFLAGS") or f"-j{jobs}",
        PYTHONNOUSERSITE="1",
    )
    path = [str(mpi_bin), str(python_bin)]
    if plan.toolkit is not None:
        home = str(plan.toolkit.home)
        path.insert(0, str(plan.toolkit.home / "bin"))
        env.update(
            HOROVOD_GPU_OPERATIONS="NCCL",
            HOROVOD_CUDA_HOME=home,
            CUDA_HOME=home,
            CUDA_PATH=home,
            CUDAToolkit_ROOT=home,
            HOROVOD_NCCL_LINK="SHARED",
            HOROVOD_BUILD_CUDA_CC_LIST=",".join(map(str, plan.cuda_archs)),
        )
        if plan.nccl_home is not None:
            env["HOROVOD_NCCL_HOME"] = str(plan.nccl_home)
    env["PATH"] = os.pathsep.join([*path, base.get("PATH", "")])
    return env


def patch_cxx_standard(source: Path, standard: int) -> None:
    """Make Horovod's CMake compile with C++``standard`` (both CMakeLists that pin C++14)."""
    for name in ("CMakeLists.txt", "horovod/torch/CMakeLists.txt"):
        path = source / name
        text = path.read_text()
        patched = text.replace("set(CMAKE_CXX_STANDARD 14)", f"set(CMAKE_CXX_STANDARD {standard})")
        if f"set(CMAKE_CXX_STANDARD {standard})" not in patched:
            raise InstallError(
                f"the C++{standard} patch did not apply to {name} of Horovod {HOROVOD_VERSION}: "
                "the sdist is not the one this recipe knows."
            )
        path.write_text(patched)


def choose_toolkit(env: EnvFacts, choice: str, report: Report) -> CudaToolkit:
    """A CUDA toolkit of torch's CUDA version: the machine's own if it matches, else PyPI's."""
    cuda = env.torch_cuda
    assert cuda is not None
    if choice not in TOOLKIT_CHOICES:
        raise InstallError(f"--cuda-toolkit must be one of {', '.join(TOOLKIT_CHOICES)}.")
    if choice in ("auto", "system"):
        system = find_system_toolkit()
        if system is not None and versions_match(system.version, cuda):
            report(f"using the CUDA {system.version} toolkit at {system.home}")
            return system
        if choice == "system":
            found = f"the one at {system.home} is {system.version}" if system else "none was found"
            raise InstallError(
                f"torch needs a CUDA {cuda} toolkit and {found}: set CUDA_HOME to a CUDA {cuda} "
                "toolkit, or use --cuda-toolkit pypi."
            )
        if system is not None:
            report(
                f"the CUDA toolkit at {system.home} is {system.version} but torch was built with "
                f"{cuda}: using PyPI's toolkit instead"
            )
    home = pypi_toolkit_home(env, cuda)
    version = nvcc_version(home / "bin" / "nvcc") if home else None
    if home is None or version is None or not versions_match(version, cuda):
        requirement = pypi_toolkit_requirement(env.torch_requires, cuda)
        report(f"installing PyPI's CUDA toolkit ({requirement}) into {env.prefix}")
        pip_install(env.executable, [requirement], f"PyPI's CUDA toolkit ({requirement})")
        env = read_env(env.executable)
        home = pypi_toolkit_home(env, cuda)
        version = nvcc_version(home / "bin" / "nvcc") if home else None
        if home is None or version is None:
            raise InstallError(
                f"{requirement} installed no working nvcc under {env.site_packages}/nvidia."
            )
    report(f"using PyPI's CUDA {version} toolkit at {home}")
    return CudaToolkit(home, version, "pypi")


def plan_build(env: EnvFacts, key: str, toolkit_choice: str, report: Report) -> BuildPlan:
    """Decide the C++ standard and, for a CUDA torch, the toolkit, NCCL and architectures."""
    assert env.torch is not None
    standard = cxx_standard(env.torch)
    cuda = env.torch_cuda
    if not cuda:
        return BuildPlan(key, standard)
    toolkit = choose_toolkit(env, toolkit_choice, report)
    env = read_env(env.executable)  # the toolkit may have added nvidia/ directories
    nccl = Path(os.environ["HOROVOD_NCCL_HOME"]) if os.environ.get("HOROVOD_NCCL_HOME") else None
    nccl = nccl or nccl_home(env)
    if nccl is None:
        raise InstallError(
            f"torch's NCCL is not installed in {env.prefix}: pip install "
            f"nvidia-nccl-cu{cuda.split('.')[0]} "
            "(or set HOROVOD_NCCL_HOME to an NCCL installation)."
        )
    if toolkit.source == "pypi":
        complete_pypi_layout(toolkit.home)
    complete_nccl_layout(nccl)
    if os.environ.get("HOROVOD_BUILD_CUDA_CC_LIST"):
        archs = [int(x) for x in os.environ["HOROVOD_BUILD_CUDA_CC_LIST"].split(",") if x.strip()]
    else:
        archs = cuda_arch_list(env.torch_archs, nvcc_arch_codes(toolkit.nvcc))
    return BuildPlan(key, standard, toolkit, nccl, archs)
