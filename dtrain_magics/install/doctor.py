"""``dtrain-magics doctor``: what an environment has, what is wrong with it, and a real 2-rank run.

Each fact is one line; each problem adds one sentence saying how to fix it. The environment is
ready only when a 2-rank ``mpiexec`` Horovod allreduce actually gave the right sums.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from .cache import cache_key, torch_flavour, without_arch_tag
from .facts import (
    EnvFacts,
    HorovodFacts,
    InstallError,
    MpiInfo,
    cores_here,
    find_mpi,
    read_env,
    read_horovod,
)
from .horovod import describe_build
from .mpi_flavours import job_environment, sharing_options
from .plan import HOROVOD_VERSION

FIX = "run `dtrain-magics install-horovod`"

_ALLREDUCE = r"""
import sys, torch
import horovod.torch as hvd
hvd.init()
device = sys.argv[1]
if device == "cuda":
    torch.cuda.set_device(hvd.local_rank())
mine = torch.tensor([hvd.rank() + 1.0], device=device)
total = hvd.allreduce(mine, op=hvd.Sum)
# a Horovod built with NCCL for allreduce only sends CUDA broadcasts and allgathers through MPI,
# which a CUDA-unaware MPI cannot do: try the three that training uses
first = hvd.broadcast(mine, root_rank=0).item()
every = hvd.allgather(mine).tolist()
if first != 1.0 or every != [r + 1.0 for r in range(hvd.size())]:
    sys.exit(f"broadcast gave {first} (not 1.0), allgather {every}")
# one write: MPICH's mpiexec interleaves the ranks' output between writes
sys.stdout.write(f"DTRAIN-RANK {hvd.rank()} {hvd.size()} {total.item()}\n")
sys.stdout.flush()
hvd.shutdown()
"""


@dataclass(frozen=True)
class Finding:
    """One line of the report, and the sentence that fixes it if something is wrong."""

    label: str
    value: str
    problem: str | None = None
    blocking: bool = True  # whether the problem stops a 2-rank run from working


def expected_key(env: EnvFacts, mpi: MpiInfo | str) -> str | None:
    """The build ``env`` needs (its cache key); None while torch or MPI is missing."""
    if env.torch is None or isinstance(mpi, str):
        return None
    flavour = torch_flavour(env.torch_cuda, env.torch_hip)
    return cache_key(HOROVOD_VERSION, env.torch, flavour, env.python_tag, mpi.key)


def assess(env: EnvFacts, mpi: MpiInfo | str, horovod: HorovodFacts | str) -> list[Finding]:
    """The report's facts and problems, from what the environment said (no processes run here)."""
    gpus = len(env.gpus)
    found = [Finding("Python", f"{env.python} ({env.executable})")]
    if env.torch is None:
        found.append(
            Finding(
                "torch",
                f"not importable ({env.torch_error})",
                "install torch (pip install torch; on GPU nodes the CUDA build your cluster uses), "
                f"then {FIX}.",
            )
        )
    else:
        kind = f"CUDA {env.torch_cuda}" if env.torch_cuda else "CPU build"
        found.append(Finding("torch", f"{env.torch} ({kind})"))
    if isinstance(mpi, str):
        found.append(Finding("MPI", "not found", mpi[0].upper() + mpi[1:] + "."))
    else:
        found.append(Finding("MPI", f"{mpi.implementation} {mpi.version} ({mpi.mpiexec})"))
    if isinstance(horovod, str):
        found.append(
            Finding("Horovod", horovod, f"{FIX[0].upper()}{FIX[1:]} to build it for this torch.")
        )
    else:
        found.append(_horovod_finding(env, mpi, horovod, gpus))
    names = ", ".join(sorted(set(env.gpus)))
    gpu_line = f"{gpus} ({names})" if gpus else "none seen"
    if not gpus and env.gpu_reason:
        gpu_line += f" (torch: {env.gpu_reason})"
    if not gpus and "too old" in (env.gpu_reason or ""):
        found.append(
            Finding(
                "GPUs",
                gpu_line,
                f"the NVIDIA driver is older than the CUDA {env.torch_cuda} torch was built for: "
                "update the driver, or install a torch built for the CUDA the driver supports "
                "(pip install torch --index-url https://download.pytorch.org/whl/cu1XX), "
                f"then {FIX}.",
                blocking=False,
            )
        )
    elif gpus and env.torch is not None and not env.torch_cuda:
        found.append(
            Finding(
                "GPUs",
                gpu_line,
                "torch is a CPU build, so these GPUs go unused: install a CUDA build of torch, "
                f"then {FIX}.",
                blocking=False,
            )
        )
    else:
        found.append(Finding("GPUs", gpu_line))
    return found


def _horovod_finding(
    env: EnvFacts, mpi: MpiInfo | str, horovod: HorovodFacts, gpus: int
) -> Finding:
    value = f"{horovod.version} with {describe_build(horovod)}"
    want = expected_key(env, mpi)
    if horovod.key:
        value += f" (built for {horovod.key})"
    if not horovod.mpi:
        return Finding("Horovod", value, f"Horovod was built without MPI: {FIX} --rebuild.")
    if want is not None and horovod.key is not None and without_arch_tag(horovod.key) != want:
        return Finding("Horovod", value, f"this environment now needs the build {want}: {FIX}.")
    if env.torch_cuda and not horovod.nccl:
        sentence = (
            f"torch is a CUDA build but Horovod has no NCCL GPU operations, so CUDA tensors "
            f"cannot be reduced: {FIX} to rebuild it with NCCL."
        )
        return Finding("Horovod", value, sentence, blocking=gpus > 0)
    return Finding("Horovod", value)


def run_environment(mpi: MpiInfo, ranks: int) -> dict[str, str]:
    """Environment of a one-host test run: the settings the project's local launcher uses."""
    return {
        **os.environ,
        **job_environment(mpi),
        "OMP_NUM_THREADS": str(max(1, cores_here() // ranks)),
    }


def parse_rank_lines(output: str, ranks: int) -> str | None:
    """None when every rank printed the right allreduce sum, else what was wrong."""
    want = ranks * (ranks + 1) / 2
    seen: dict[int, float] = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "DTRAIN-RANK":
            seen[int(parts[1])] = float(parts[3])
    if sorted(seen) != list(range(ranks)):
        return f"only ranks {sorted(seen)} of {ranks} reported"
    wrong = {r: v for r, v in seen.items() if v != want}
    if wrong:
        return f"allreduce gave {wrong} instead of {want}"
    return None


def run_allreduce(
    python: str, mpi: MpiInfo, ranks: int, device: str, timeout: float
) -> tuple[str | None, float]:
    """Run a ``ranks``-rank Horovod allreduce under mpiexec: (None or what failed, seconds)."""
    command = [
        mpi.mpiexec,
        "-n",
        str(ranks),
        *sharing_options(mpi),
        python,
        "-c",
        _ALLREDUCE,
        device,
    ]
    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,  # MPICH's mpiexec would hand rank 0 the terminal
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=run_environment(mpi, ranks),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"it did not finish within {timeout:.0f} s", time.monotonic() - started
    elapsed = time.monotonic() - started
    wrong = parse_rank_lines(out, ranks)
    if proc.returncode != 0 or wrong:
        lines = [ln.strip() for ln in err.strip().splitlines() if ln.strip()]
        detail = lines[-1] if lines else wrong or f"exit status {proc.returncode}"
        return f"it failed (exit status {proc.returncode}: {detail})", elapsed
    return None, elapsed


def doctor(
    python: str | None = None,
    *,
    timeout: float = 120,
    emit: Callable[[str], None] = print,
    notes: tuple[str, ...] = (),
) -> bool:
    """Print the report for ``python``'s environment; True when a 2-rank run works.

    ``notes`` are lines printed after the environment's facts, before the verdict.
    """
    try:
        env = read_env(python, gpus=True, timeout=timeout)
    except (InstallError, subprocess.TimeoutExpired) as e:
        emit(f"{'Python':<9} {python}")
        emit(f"{'':<9} fix: {e} Point --python at a working interpreter.")
        return False
    mpi = find_mpi(env)
    horovod = read_horovod(env.executable, timeout=timeout)
    findings = assess(env, mpi, horovod)
    for finding in findings:
        emit(f"{finding.label:<9} {finding.value}")
        if finding.problem:
            emit(f"{'':<9} fix: {finding.problem}")
    for note in notes:
        emit(note)
    blocked = [f for f in findings if f.problem and f.blocking]
    if blocked or isinstance(mpi, str) or isinstance(horovod, str):
        emit(f"{'2 ranks':<9} not run: fix the problems above first")
        emit("not ready")
        return False
    failed, elapsed = run_allreduce(env.executable, mpi, 2, "cpu", timeout)
    if failed:
        emit(f"{'2 ranks':<9} a Horovod allreduce under mpiexec -n 2: {failed}")
        emit(
            f"{'':<9} fix: run the same by hand to see every rank's output "
            f"({mpi.mpiexec} -n 2 {env.executable} -c 'import horovod.torch as h; h.init()')."
        )
        emit("not ready")
        return False
    emit(f"{'2 ranks':<9} mpiexec -n 2 Horovod allreduce gave 3.0 on both ranks ({elapsed:.1f} s)")
    if env.torch_cuda and env.gpus and horovod.nccl:
        ranks = min(2, len(env.gpus))
        failed, elapsed = run_allreduce(env.executable, mpi, ranks, "cuda", timeout)
        if failed:
            emit(
                f"{'GPU run':<9} NCCL allreduce, broadcast and allgather of CUDA tensors on "
                f"{ranks} rank(s): {failed}"
            )
            emit(f"{'':<9} fix: check the GPUs with nvidia-smi, then {FIX} --rebuild.")
            emit("not ready")
            return False
        emit(
            f"{'GPU run':<9} NCCL allreduce, broadcast and allgather of CUDA tensors on {ranks} "
            f"rank(s) ({elapsed:.1f} s)"
        )
    emit("ready: a 2-rank run works")
    return True
