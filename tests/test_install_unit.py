"""The installer's pure logic: cache keys, C++ standard, CUDA toolkit and architectures, build
output (progress and failures), MPI versions, and the doctor's verdicts. No cluster, no build."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dtrain_magics.install.build_log import (
    ProgressReporter,
    failure_cause,
    failure_sentence,
    parse_progress,
)
from dtrain_magics.install.cache import cache_key, cached_wheel, store_wheel, torch_flavour
from dtrain_magics.install.cuda import (
    complete_nccl_layout,
    complete_pypi_layout,
    cuda_arch_list,
    find_system_toolkit,
    parse_arch_codes,
    parse_nvcc_version,
    pypi_toolkit_requirement,
    system_toolkit_candidates,
    versions_match,
)
from dtrain_magics.install.doctor import assess, parse_rank_lines
from dtrain_magics.install.facts import (
    EnvFacts,
    HorovodFacts,
    InstallError,
    MpiInfo,
    parse_mpi_version,
)
from dtrain_magics.install.horovod import suitable_cmake
from dtrain_magics.install.mpi_flavours import sharing_options
from dtrain_magics.install.plan import (
    BuildPlan,
    build_environment,
    cxx_standard,
    patch_cxx_standard,
)
from dtrain_magics.install.relocate import new_runpath

OMPI = MpiInfo("Open MPI", "5.0.11", "/v/bin/mpiexec", "/v/bin/mpicxx")

# Requires-Dist lines of PyPI's torch wheels (copied from their METADATA)
TORCH_2141_REQUIRES = [
    "filelock",
    "cuda-toolkit[cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,nvrtc,nvtx]"
    '==13.0.3; platform_system == "Linux"',
    'nvidia-nccl-cu13==2.30.7; platform_system == "Linux"',
]
TORCH_2150_REQUIRES = [
    "cuda-toolkit[cublas,cudart,cufft,cufile,cupti,cusolver,cusparse,nvjitlink,nvrtc,nvtx]"
    '==13.2.2; platform_system == "Linux"',
    'nvidia-nccl-cu13==2.30.7; platform_system == "Linux"',
]


# -- cache key -------------------------------------------------------------------------------


def test_cpu_key_is_the_one_earlier_set_ups_cached_under() -> None:
    key = cache_key("0.28.1", "2.13.0+cpu", torch_flavour(None), "311", OMPI.key)
    assert key == "horovod-0.28.1-torch2.13.0_cpu-py311-ompi5.0.11"


def test_cuda_flavour_comes_from_torch_version_cuda_not_the_suffix() -> None:
    # PyPI's CUDA torch 2.13.0 reports a bare "2.13.0"
    bare = cache_key("0.28.1", "2.13.0", torch_flavour("13.0"), "311", OMPI.key)
    assert bare == "horovod-0.28.1-torch2.13.0_cu130-py311-ompi5.0.11"
    suffixed = cache_key("0.28.1", "2.14.1+cu130", torch_flavour("13.0"), "311", OMPI.key)
    assert suffixed == "horovod-0.28.1-torch2.14.1_cu130-py311-ompi5.0.11"
    assert torch_flavour("13.2") == "cu132" and torch_flavour(None) == "cpu"


def test_key_separates_mpi_implementations_and_versions() -> None:
    mpich = MpiInfo("MPICH", "4.1.2", "/usr/bin/mpiexec", "/usr/bin/mpicxx")
    keys = {
        cache_key("0.28.1", "2.13.0+cpu", "cpu", "311", m.key)
        for m in (OMPI, mpich, MpiInfo("Open MPI", "4.1.6", "x", "y"))
    }
    assert len(keys) == 3
    assert mpich.key == "mpich4.1.2"


def test_wheel_cache_round_trip(tmp_path: Path) -> None:
    wheel = tmp_path / "horovod-0.28.1-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"wheel")
    assert cached_wheel(tmp_path / "cache", "k") is None
    stored = store_wheel(tmp_path / "cache", "k", wheel)
    assert cached_wheel(tmp_path / "cache", "k") == stored
    assert stored.read_bytes() == b"wheel"
    assert not list(stored.parent.glob("*.part"))


# -- C++ standard ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "standard"),
    [
        ("2.1.0", 17),
        ("2.13.0+cpu", 17),
        ("2.13.0", 17),
        ("2.14.1+cu130", 20),
        ("2.15.0", 20),
        ("2.16.0.dev20270101+cpu", 20),
        ("3.0.0", 20),
    ],
)
def test_cxx_standard_follows_torch(version: str, standard: int) -> None:
    assert cxx_standard(version) == standard


def test_cxx_patch_applies_to_both_cmakelists(tmp_path: Path) -> None:
    (tmp_path / "horovod" / "torch").mkdir(parents=True)
    for name in ("CMakeLists.txt", "horovod/torch/CMakeLists.txt"):
        (tmp_path / name).write_text("project(x)\nset(CMAKE_CXX_STANDARD 14)\n")
    patch_cxx_standard(tmp_path, 20)
    for name in ("CMakeLists.txt", "horovod/torch/CMakeLists.txt"):
        assert "set(CMAKE_CXX_STANDARD 20)" in (tmp_path / name).read_text()
    (tmp_path / "CMakeLists.txt").write_text("set(CMAKE_CXX_STANDARD 11)\n")
    with pytest.raises(InstallError, match=r"C\+\+17 patch did not apply to CMakeLists\.txt"):
        patch_cxx_standard(tmp_path, 17)


# -- CUDA toolkit ----------------------------------------------------------------------------


def test_toolkit_is_the_release_torch_pins() -> None:
    assert pypi_toolkit_requirement(TORCH_2141_REQUIRES, "13.0") == (
        "cuda-toolkit[nvcc,cudart,cccl]==13.0.3"
    )
    assert pypi_toolkit_requirement(TORCH_2150_REQUIRES, "13.2") == (
        "cuda-toolkit[nvcc,cudart,cccl]==13.2.2"
    )


def test_toolkit_falls_back_to_torch_version_cuda() -> None:
    # no pin (a torch installed some other way), or a pin of another CUDA minor
    assert pypi_toolkit_requirement([], "13.1") == "cuda-toolkit[nvcc,cudart,cccl]==13.1.*"
    assert pypi_toolkit_requirement(TORCH_2141_REQUIRES, "13.2") == (
        "cuda-toolkit[nvcc,cudart,cccl]==13.2.*"
    )


def test_cuda_12_toolkit_is_not_taken_from_pypi() -> None:
    with pytest.raises(InstallError, match="CUDA_HOME") as info:
        pypi_toolkit_requirement([], "12.8")
    assert str(info.value).count(". ") == 0  # one sentence


def test_nvcc_version_and_matching() -> None:
    text = "Cuda compilation tools, release 13.0, V13.0.88\nBuild cuda_13.0.r13.0/compiler"
    assert parse_nvcc_version(text) == "13.0"
    assert parse_nvcc_version("command not found") is None
    assert versions_match("13.0", "13.0") and versions_match("13.0.3", "13.0")
    assert not versions_match("13.0", "13.2") and not versions_match("12.8", "13.0")


def test_system_toolkit_search_order() -> None:
    env = {"CUDA_HOME": "/opt/cuda-13.2", "CUDA_PATH": "/opt/cuda-13.2"}
    found = system_toolkit_candidates(env, "/opt/cuda-13.0/bin/nvcc")
    assert found == [Path("/opt/cuda-13.2"), Path("/opt/cuda-13.0"), Path("/usr/local/cuda")]


def test_system_toolkit_needs_nvcc_and_headers(tmp_path: Path) -> None:
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.1, V13.1.80'\n")
    nvcc.chmod(0o755)
    env = {"CUDA_HOME": str(home), "PATH": ""}
    found = find_system_toolkit(env)
    assert found is None or found.home != home  # no include/cuda_runtime.h: not a toolkit
    (home / "include").mkdir()
    (home / "include" / "cuda_runtime.h").write_text("")
    found = find_system_toolkit(env)
    assert found is not None and found.home == home and found.version == "13.1"


@pytest.mark.skipif(
    not Path("/usr/local/cuda/bin/nvcc").exists(), reason="this machine has no /usr/local/cuda"
)
def test_this_machines_own_toolkit_is_found() -> None:
    """A real toolkit: /usr/local/cuda, found even when the nvcc on PATH is a wrapper script."""
    found = find_system_toolkit({"PATH": os.environ.get("PATH", "")})
    assert found is not None and found.source == "system"
    assert (found.home / "include" / "cuda_runtime.h").is_file()
    assert re.fullmatch(r"\d+\.\d+", found.version)


def test_pypi_layout_gets_lib64_and_unversioned_libraries(tmp_path: Path) -> None:
    home, nccl = tmp_path / "nvidia" / "cu13", tmp_path / "nvidia" / "nccl"
    (home / "lib").mkdir(parents=True)
    (nccl / "lib").mkdir(parents=True)
    (home / "lib" / "libcudart.so.13").write_text("")
    (nccl / "lib" / "libnccl.so.2").write_text("")
    for _ in range(2):  # idempotent
        complete_pypi_layout(home)
        complete_nccl_layout(nccl)
    assert os.readlink(home / "lib64") == "lib"
    assert os.readlink(home / "lib" / "libcudart.so") == "libcudart.so.13"
    assert os.readlink(nccl / "lib" / "libnccl.so") == "libnccl.so.2"


def test_arch_list_is_torch_archs_the_toolkit_supports() -> None:
    torch_archs = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
    nvcc_130 = parse_arch_codes(
        "sm_75\nsm_80\nsm_86\nsm_87\nsm_88\nsm_89\nsm_90\nsm_100\nsm_110\nsm_103\nsm_120\nsm_121"
    )
    assert cuda_arch_list(torch_archs, nvcc_130) == [75, 80, 86, 90, 100, 120]
    # CUDA 13 dropped everything below 7.5: a torch naming sm_50 does not get it
    assert cuda_arch_list(["sm_50", "sm_75", "sm_90a"], nvcc_130) == [75, 90]
    # torch names none: the common current architectures the toolkit has
    assert cuda_arch_list([], [75, 80, 90]) == [75, 80, 90]
    with pytest.raises(InstallError, match="supports none"):
        cuda_arch_list(["sm_50"], nvcc_130)


# -- the build's output --------------------------------------------------------------------------


def test_progress_percentages() -> None:
    assert parse_progress("[ 45%] Building CXX object horovod/torch/x.o") == 45
    assert parse_progress("  [100%] Linking CXX shared library mpi_lib_v2.so") == 100
    assert parse_progress("-- Configuring done") is None
    assert parse_progress("error: [ 45%] later in a line") is None


def test_progress_lines_come_at_most_every_ten_seconds() -> None:
    now = [0.0]
    reporter = ProgressReporter(interval=10, clock=lambda: now[0])
    emitted = []
    for step, line in enumerate(
        ["-- The CXX compiler identification is GNU 12.2.0"]
        + [f"[{p:3d}%] Building CXX object a.o" for p in range(0, 100, 3)]
    ):
        now[0] = step * 2.0  # a line every 2 s for 70 s
        message = reporter.feed(line)
        if message:
            emitted.append((now[0], message))
    times = [t for t, _ in emitted]
    assert times and all(b - a >= 10 for a, b in itertools.pairwise(times))
    assert len(emitted) == 6
    assert emitted[-1][1] == "compiling 87%, 1m 00s elapsed"
    assert reporter.feed("") is None  # a tick without output says nothing new within 10 s


BUILD_LOGS = {
    "no CUDA toolkit": (
        "-- Found Pytorch: 2.14.1+cu130\nCMake Error at /usr/share/cmake/FindPackage.cmake:230:\n"
        "  Could NOT find CUDAToolkit (missing: CUDAToolkit_INCLUDE_DIR)\n"
        "error: subprocess-exited-with-error\n",
        "CMake found no CUDA toolkit",
    ),
    "old C++ standard": (
        "/v/torch/include/c10/util/C++17.h:13:2: error: #error C++17 or later compatible "
        "compiler is required to use PyTorch.\n",
        "torch's headers need C++17",
    ),
    "compiler error": (
        "[ 40%] Building CXX object x.o\n"
        "/src/horovod/torch/mpi_ops_v2.cc:88:5: error: 'foo' was not declared in this scope\n"
        "make[2]: *** [x.o] Error 1\nerror: subprocess-exited-with-error\n",
        "the compiler reported: 'foo' was not declared in this scope",
    ),
    "out of memory": (
        "c++: fatal error: Killed signal terminated program cc1plus\n",
        "ran out of memory",
    ),
    "cmake error": (
        "CMake Error at CMakeLists.txt:12 (message):\n  Unknown HOROVOD_GPU type: XYZ\n",
        "CMake stopped: Unknown HOROVOD_GPU type: XYZ",
    ),
    "nvcc": (
        "nvcc fatal   : Unsupported gpu architecture 'compute_35'\n",
        "nvcc stopped: Unsupported gpu architecture 'compute_35'",
    ),
    "unknown": ("something odd happened\n", "without a recognisable error"),
}


@pytest.mark.parametrize("case", sorted(BUILD_LOGS))
def test_failure_is_one_sentence_naming_cause_and_log(case: str) -> None:
    log, cause = BUILD_LOGS[case]
    sentence = failure_sentence("0.28.1", log, "/c/logs/k.log")
    assert cause in sentence
    assert sentence.startswith("Building Horovod 0.28.1 failed: ")
    assert sentence.endswith("; the full log is /c/logs/k.log.")
    assert "\n" not in sentence and sentence.count(". ") == 0


def test_failure_cause_is_bounded() -> None:
    assert len(failure_cause("x.cc:1:1: error: " + "y" * 1000)) <= 200


# -- MPI, environment, relocation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        (
            "mpiexec (Open MPI) 5.0.11\n\nReport bugs to https://www.open-mpi.org/",
            ("Open MPI", "5.0.11"),
        ),
        ("mpiexec (OpenRTE) 4.1.4\n", ("Open MPI", "4.1.4")),
        (
            "HYDRA build details:\n    Version:                                 4.1.2\n",
            ("MPICH", "4.1.2"),
        ),
        (
            "Intel(R) MPI Library for Linux* OS, Version 2021.10 Build 20230619",
            ("Intel MPI", "2021.10"),
        ),
        ("something else 1.0", None),
    ],
)
def test_mpi_version(text: str, parsed: tuple[str, str] | None) -> None:
    assert parse_mpi_version(text) == parsed


def test_oversubscription_arguments_per_mpi() -> None:
    assert sharing_options(OMPI) == ["--map-by", ":OVERSUBSCRIBE", "--bind-to", "none"]
    assert sharing_options(MpiInfo("Open MPI", "4.1.4", "m", "c"))[0] == "--oversubscribe"
    assert sharing_options(MpiInfo("MPICH", "4.1.2", "m", "c")) == ["-bind-to", "none"]
    assert sharing_options(MpiInfo("Intel MPI", "2021.10", "m", "c")) == []


def test_cmake_versions() -> None:
    assert suitable_cmake((3, 25)) and suitable_cmake((3, 18))
    assert not suitable_cmake((3, 16)) and not suitable_cmake((4, 0)) and not suitable_cmake(None)


def test_cpu_build_environment_drops_gpu_settings() -> None:
    base = {"PATH": "/usr/bin", "HOROVOD_GPU_OPERATIONS": "NCCL", "HOME": "/root"}
    env = build_environment(
        BuildPlan("k", 17),
        python_bin=Path("/v/bin"),
        mpi_bin=Path("/v/bin"),
        cmake="/v/bin/cmake",
        base=base,
        jobs=2,
    )
    assert "HOROVOD_GPU_OPERATIONS" not in env and "HOROVOD_CUDA_HOME" not in env
    assert env["HOROVOD_WITH_MPI"] == env["HOROVOD_WITH_GLOO"] == env["HOROVOD_WITH_PYTORCH"] == "1"
    assert env["MAKEFLAGS"] == "-j2" and env["PATH"].endswith("/usr/bin")


def test_cuda_build_environment_has_nccl_and_the_toolkit_first_on_path() -> None:
    from dtrain_magics.install.cuda import CudaToolkit

    toolkit = CudaToolkit(Path("/v/nvidia/cu13"), "13.0", "pypi")
    plan = BuildPlan("k", 20, toolkit, Path("/v/nvidia/nccl"), [75, 80, 86, 90, 100, 120])
    env = build_environment(
        plan,
        python_bin=Path("/v/bin"),
        mpi_bin=Path("/v/bin"),
        cmake="cmake",
        base={"PATH": "/usr/local/bin:/usr/bin", "MAKEFLAGS": "-j1"},
        jobs=2,
    )
    assert env["HOROVOD_GPU_OPERATIONS"] == "NCCL"
    assert env["HOROVOD_CUDA_HOME"] == env["CUDA_HOME"] == "/v/nvidia/cu13"
    assert env["HOROVOD_NCCL_HOME"] == "/v/nvidia/nccl" and env["HOROVOD_NCCL_LINK"] == "SHARED"
    assert env["HOROVOD_BUILD_CUDA_CC_LIST"] == "75,80,86,90,100,120"
    assert env["PATH"].split(":")[0] == "/v/nvidia/cu13/bin"
    assert env["MAKEFLAGS"] == "-j1"  # the caller's choice wins


def test_runpath_is_relative_and_keeps_only_system_directories(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "lib").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    other = tmp_path / "old-venv"
    (other / "lib").mkdir(parents=True)
    (other / "pyvenv.cfg").write_text("")
    system = tmp_path / "opt" / "openmpi" / "lib"
    system.mkdir(parents=True)
    so_dir = venv / "lib" / "python3.11" / "site-packages" / "horovod" / "torch"
    torch_lib = venv / "lib" / "python3.11" / "site-packages" / "torch" / "lib"
    runpath = new_runpath(
        so_dir,
        [venv / "lib", torch_lib],
        [str(other / "lib"), str(system), "$ORIGIN/../old", "/does/not/exist"],
    )
    assert runpath == f"$ORIGIN/../../../..:$ORIGIN/../../torch/lib:{system}"


# -- the doctor's verdicts ---------------------------------------------------------------------


def _env(torch_cuda: str | None, gpus: int) -> EnvFacts:
    return EnvFacts(
        python="3.11.7",
        executable="/v/bin/python",
        python_tag="311",
        prefix="/v",
        site_packages="/v/lib/python3.11/site-packages",
        torch="2.14.1+cu130" if torch_cuda else "2.13.0+cpu",
        torch_cuda=torch_cuda,
        gpus=["NVIDIA H100"] * gpus,
    )


def _horovod(nccl: bool, key: str | None) -> HorovodFacts:
    return HorovodFacts("0.28.1", True, True, nccl, nccl, key, "/v/horovod")


CU_KEY = "horovod-0.28.1-torch2.14.1_cu130-py311-ompi5.0.11"


def test_doctor_cuda_torch_with_cpu_horovod_on_a_gpu_node_is_blocking() -> None:
    found = {f.label: f for f in assess(_env("13.0", 2), OMPI, _horovod(False, None))}
    problem = found["Horovod"].problem
    assert problem and "dtrain-magics install-horovod" in problem and found["Horovod"].blocking
    assert found["GPUs"].value == "2 (NVIDIA H100)"


def test_doctor_cuda_torch_with_cpu_horovod_without_gpus_still_runs_on_cpu() -> None:
    found = {f.label: f for f in assess(_env("13.0", 0), OMPI, _horovod(False, None))}
    assert found["Horovod"].problem and not found["Horovod"].blocking


def test_doctor_names_a_stale_build_and_a_missing_one() -> None:
    stale = assess(_env("13.0", 0), OMPI, _horovod(True, CU_KEY.replace("2.14.1", "2.13.0")))
    assert any(f.problem and CU_KEY in f.problem and f.blocking for f in stale)
    ok = assess(_env("13.0", 0), OMPI, _horovod(True, CU_KEY))
    assert not any(f.problem for f in ok)
    missing = assess(_env(None, 0), OMPI, "horovod is not installed")
    assert any(
        f.label == "Horovod" and f.problem and "install-horovod" in f.problem for f in missing
    )


def test_doctor_rank_output() -> None:
    good = "DTRAIN-RANK 1 2 3.0\nnoise\nDTRAIN-RANK 0 2 3.0\n"
    assert parse_rank_lines(good, 2) is None
    assert "only ranks [0]" in str(parse_rank_lines("DTRAIN-RANK 0 2 3.0\n", 2))
    assert "instead of 3.0" in str(parse_rank_lines("DTRAIN-RANK 0 2 3.0\nDTRAIN-RANK 1 2 2.0", 2))


# -- the command line ----------------------------------------------------------------------------


def test_cli_reports_a_bad_interpreter_in_one_sentence(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dtrain_magics.cli", "install-horovod", "--python", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert (
        done.stderr.strip() == f"dtrain-magics: {tmp_path} is not an executable Python interpreter."
    )


def test_install_package_imports_nothing_else_of_dtrain_magics() -> None:
    """It runs before torch and Horovod exist: no torch, no other module of the package."""
    code = (
        "import sys\nimport dtrain_magics\nbefore = set(sys.modules)\n"
        "import dtrain_magics.install.horovod, dtrain_magics.install.doctor, dtrain_magics.cli\n"
        "print(sorted(set(sys.modules) - before))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    added = [m for m in eval(out) if m.startswith(("dtrain_magics", "torch", "horovod"))]
    assert added and all(
        m.startswith("dtrain_magics.install") or m == "dtrain_magics.cli" for m in added
    ), added
