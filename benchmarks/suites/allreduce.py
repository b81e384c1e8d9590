"""Allreduce bandwidth from 1 KB to 256 MB: through the magic against ``mpiexec``, per backend.

For Horovod (``hvd.allreduce_``) and the torch backend (``--backend torch``: gloo on CPU, NCCL
on CUDA; ``dist.all_reduce``), the same code (``workloads.ALLREDUCE``) times an in-place
allreduce of float32 tensors of each size on 2 ranks, through ``%%distributed`` and under
``mpiexec -n 2 python``, alternating. Bandwidth is bus bandwidth (bytes × 2(n−1)/n per second,
which is the bytes per second for 2 ranks), reported as a fraction of this machine's
memory-copy bandwidth: one process copying a 64 MB tensor into another (``workloads.MEMCPY``).
Each size's time is the fastest of up to 21 short timed blocks of repeats, in every arm, and
the blocks go round the sizes, so each size's blocks are spread over the whole run: on a small
shared machine a block that the scheduler interrupts only ever takes longer, and a slow phase of
a second or two (4 MB here runs at 1.3 or 3.6 GB/s by phase) spoils a few blocks of every size
rather than every block of one. Many short blocks, not seven long ones, as gloo's latency-bound
sizes run fast only in windows of a few milliseconds here (``workloads.ALLREDUCE``).

Each round also sends the same call through ipyparallel straight to the magic's engines
(``view.execute``, after a trivial magic cell that starts Horovod again if the ranks had suspended
it): the ratio of the magic to that arm, shown from 16 MB up, is what the magic itself costs,
and that of that arm to ``mpiexec`` what running in the cluster's engines costs.

Each round also runs ``mpiexec`` a second time: the ratio of ``mpiexec`` to itself shows how far
two runs of the same thing differ on this machine at each size (on a small virtual machine,
gloo's latency-bound sizes swing by 2× from run to run). A size meets the target if the magic's
median ratio is at least 0.95, or at least 1 / how far ``mpiexec`` lands from itself (``noise``:
the quartiles of its paired ratios around 1, and of all its rounds around their median): then
the magic is as close to ``mpiexec`` as ``mpiexec`` is to itself.
It takes twice ``--pairs`` (16 with ``--pairs 8``), as ``throughput`` does: with 8, a size whose
ratio sits a few per cent from its line fell on either side of it from run to run. The rounds
are whole Williams squares (``round_count``): an odd ``--pairs`` takes two rounds more.
"""

from __future__ import annotations

import json
import subprocess
import sys

from ..context import ENGINES, Context
from ..kernels import BenchKernel
from ..report import Report, Row
from ..stats import RatioSummary, format_ratio, summarize, summarize_ratio
from ..workloads import ALLREDUCE, MEMCPY

FULL_SIZES = [1 << k for k in range(10, 29, 2)]  # 1 KB, 4 KB, ... 256 MB
QUICK_SIZES = [1 << k for k in range(10, 21, 2)]  # 1 KB ... 1 MB
REFERENCE = 64 << 20
# bytes each size moves per arm (at least 7 calls): at 64 MB, 16 calls in 7 blocks rather than 7
# single calls, so one slow call on this shared machine does not decide the size's figure
BUDGET = 1 << 30
RANKS = 2
ARMS = ("magic", "direct", "mpiexec", "mpiexec_again")
# Four rounds' orders, a Williams square: each arm takes each place once and follows each other
# arm once, so whatever one arm leaves behind on the two cores (an mpiexec job's exit frees a few
# hundred MB) falls on every arm alike. Turning one order round, as before, had the magic and the
# second mpiexec always follow an mpiexec job and the first mpiexec never: in 12 such rounds of
# gloo at 1 KB-256 KB, both ran 3-15% below the first mpiexec, and the view.execute arm not.
ORDERS = tuple(
    tuple(ARMS[i] for i in row) for row in ((0, 1, 3, 2), (1, 2, 0, 3), (2, 3, 1, 0), (3, 0, 2, 1))
)
DIRECT_FROM = 16 << 20  # the sizes bound by memory bandwidth, where a cost would show


def round_count(pairs: int) -> int:
    """Twice ``pairs``, rounded up to whole squares: every order runs as often as the others."""
    return -(-2 * pairs // len(ORDERS)) * len(ORDERS)


def run(ctx: Context, report: Report) -> None:
    if ctx.ranks < RANKS:
        report.notes.append(
            f"Allreduce: not run, as it takes {RANKS} ranks and this run has {ctx.ranks} "
            "(--ranks; with --device cuda, one GPU per rank)."
        )
        return
    sizes = QUICK_SIZES if ctx.quick else FULL_SIZES
    budget = (16 << 20) if ctx.quick else BUDGET
    memcpy = _memcpy(ctx, sorted({*sizes, REFERENCE}))
    reference = memcpy[str(REFERENCE)]
    raw: dict[str, object] = {"memcpy_gb_s": memcpy, "sizes": sizes}
    call = f"bench_allreduce({sizes!r}, {budget}, {{backend!r}})"
    with ctx.kernel() as kernel:
        kernel.run("%load_ext dtrain_magics")
        kernel.run("import dtrain_magics")
        for backend in ("horovod", "torch"):
            line = ctx.magic_line("--backend", backend, "--no-widget", ranks=RANKS)
            kernel.run(f"{line}\n{ALLREDUCE}")
            arms: dict[str, dict[str, list[float]]] = {
                arm: {str(s): [] for s in sizes} for arm in ARMS
            }
            for r in range(1 if ctx.quick else round_count(ctx.pairs)):
                for arm in ORDERS[r % len(ORDERS)]:
                    if arm == "magic":
                        seconds = _magic(kernel, line, call.format(backend=backend))
                    elif arm == "direct":
                        seconds = _direct(ctx, kernel, line, call.format(backend=backend))
                    else:
                        seconds = _mpiexec(ctx, sizes, budget, backend)
                    for size, t in seconds.items():
                        arms[arm][size].append(size_gb(int(size)) / t)
            raw[backend] = {f"{arm}_gb_s": values for arm, values in arms.items()}
            _rows(report, backend, sizes, arms, reference)
        kernel.run("%dtrain stop")
    report.raw["allreduce"] = raw
    report.notes.append(
        f"Allreduce: bus bandwidth of an in-place float32 allreduce on {RANKS} ranks as a "
        f"fraction of one process's memory copy of 64 MB ({reference:.2f} GB/s here); the "
        "dashboard is off (--no-widget), as the cell only times collectives."
    )


def size_gb(size: int) -> float:
    """Bus bytes of one allreduce of ``size`` bytes, in GB."""
    return size * 2 * (RANKS - 1) / RANKS / 1e9


def _magic(kernel: BenchKernel, line: str, call: str) -> dict[str, float]:
    kernel.run(f"{line}\n_bench_result = {call}")
    return _slowest(kernel.eval(f"{ENGINES}.pull('_bench_result')"))


def _direct(ctx: Context, kernel: BenchKernel, line: str, call: str) -> dict[str, float]:
    """The call through ``view.execute`` to the magic's engines (``Context.execute_direct``)."""
    ctx.execute_direct(kernel, line, f"_bench_result = {call}")
    return _slowest(kernel.eval(f"{ENGINES}.pull('_bench_result')"))


def _mpiexec(ctx: Context, sizes: list[int], budget: int, backend: str) -> dict[str, float]:
    kwargs = {"sizes": sizes, "budget_bytes": budget, "backend": backend}
    return _slowest(ctx.run_ranks(RANKS, ALLREDUCE, "bench_allreduce", kwargs, backend=backend))


def _slowest(results: list[dict[str, dict[str, float]]]) -> dict[str, float]:
    """Per size, the slowest rank's seconds."""
    sizes = results[0]["seconds"]
    return {s: max(r["seconds"][s] for r in results) for s in sizes}


def _memcpy(ctx: Context, sizes: list[int]) -> dict[str, float]:
    """GB/s of one process copying a tensor of each size (bytes copied per second)."""
    script = ctx.script("memcpy.py", MEMCPY)
    argv = [sys.executable, str(script), ctx.device, json.dumps(sizes)]
    out = subprocess.run(
        argv, env=ctx.rank_env(1), capture_output=True, text=True, timeout=600, check=True
    )
    return {s: int(s) / t / 1e9 for s, t in json.loads(out.stdout).items()}


def _rows(
    report: Report,
    backend: str,
    sizes: list[int],
    arms: dict[str, dict[str, list[float]]],
    reference: float,
) -> None:
    ours, direct, peer, again = (arms[arm] for arm in ARMS)
    for size in sizes:
        key = str(size)
        a, b = summarize(ours[key])["median"], summarize(peer[key])["median"]
        ratio = summarize_ratio(ours[key], peer[key])
        itself = summarize_ratio(again[key], peer[key])
        spread = noise(itself, peer[key] + again[key])
        floor = min(0.95, 1 / spread)
        report.rows.append(
            Row(
                "allreduce",
                f"{backend} {_label(size)} (GB/s, × memcpy)",
                f"{a:.3g} ({a / reference:.2g})",
                "mpiexec -n 2",
                f"{b:.3g} ({b / reference:.2g})",
                ratio,
                f"≥ {floor:.2f} (mpiexec vs itself {format_ratio(itself)}; "
                f"its rounds ×{spread:.2f})",
                ratio["median"] >= floor,
            )
        )
    for size in (s for s in sizes if s >= DIRECT_FROM):
        key = str(size)
        a, d = summarize(ours[key])["median"], summarize(direct[key])["median"]
        engines = format_ratio(summarize_ratio(direct[key], peer[key]))
        report.rows.append(
            Row(
                "allreduce",
                f"{backend} {_label(size)} (GB/s)",
                f"{a:.3g}",
                "view.execute (same engines)",
                f"{d:.3g}",
                summarize_ratio(ours[key], direct[key]),
                f"informative (view.execute vs mpiexec -n 2: {engines})",
            )
        )


def noise(itself: RatioSummary, rounds: list[float]) -> float:
    """How far ``mpiexec`` lands from itself, as a factor of at least 1: the larger of how far
    the quartiles of its paired runs' ratios stray from 1 (either way) and how far the quartiles
    of all its rounds stray from their median (a size whose bandwidth is bimodal on this machine
    shows there, whichever rounds happened to pair)."""
    paired = max(1.0, itself["q3"], 1 / itself["q1"] if itself["q1"] > 0 else float("inf"))
    pooled = summarize(rounds)
    middle = pooled["median"]
    spread = max(pooled["q3"] / middle, middle / pooled["q1"]) if pooled["q1"] > 0 else 1.0
    return max(paired, spread)


def _label(size: int) -> str:
    return f"{size >> 20} MB" if size >= 1 << 20 else f"{size >> 10} KB"
