"""Training throughput: the same Horovod loop under the magic, through ipyparallel, and mpiexec.

The loop (``workloads.TRAIN``: a small MLP, ``hvd.DistributedOptimizer``, ``loss.item()`` every
step) times itself on the ranks after a warm-up. Arms, each once a round:

- ``magic``: ``%%distributed`` with the dashboard, ``dtrain.progress`` around the loop and
  ``dtrain.log(loss=..., samples=...)`` every step;
- ``magic, plain``: ``%%distributed --no-widget`` without logging;
- ``direct``: the same code without logging through ipyparallel directly (``view.execute``) to
  the same engines, where the magic has initialised Horovod;
- ``mpiexec``: ``mpiexec -n 2 python`` (``--ranks``) running the same code, with the rank
  environment the project gives its ranks, while the cluster sits idle.

The two arms each target compares run next to each other in every round, in turns first and
second (``ORDERS``), since this machine's speed drifts by a few per cent over tens of seconds
and a pair measured far apart would measure that drift.

Also measured: the kernel process's CPU while each cell runs (% of one core), and what each
telemetry message costs the steps around it (the measure of the former
``logging_overhead.py``): how much longer than the median plain step the few steps from each
message on took, which the block-to-block drift of a shared machine does not blur.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from dtrain_magics.cluster.launchers import mpiexec_options

from ..context import ENGINES, Context
from ..kernels import BenchKernel, Cell
from ..report import Report, Row
from ..stats import summarize, summarize_ratio
from ..workloads import TRAIN

MAGIC = "magic, dashboard + dtrain.log"
PLAIN = "magic --no-widget, no logging"
DIRECT = "view.execute (same engines)"
MPIEXEC = "mpiexec -n {n} python train.py"  # the report fills in the ranks

Run = tuple[Cell | None, list[dict[str, Any]]]
# Four rounds' orders: the magic is next to the direct arm in every round and next to mpiexec in
# every other one; each arm takes each place once.
ORDERS = (
    (MAGIC, DIRECT, PLAIN, MPIEXEC),
    (DIRECT, MAGIC, MPIEXEC, PLAIN),
    (MPIEXEC, PLAIN, DIRECT, MAGIC),
    (PLAIN, MPIEXEC, MAGIC, DIRECT),
)
VIEW = f"import dtrain_magics\n_bench_view = {ENGINES}"


def setup(kernel: BenchKernel, ctx: Context, ranks: int) -> None:
    """Start (or resize) the cluster and define the training code on every rank."""
    kernel.run(f"{ctx.magic_line(ranks=ranks)}\n{TRAIN}")
    kernel.run(VIEW)


def magic(
    kernel: BenchKernel, ctx: Context, ranks: int, steps: int, warmup: int, log: bool
) -> tuple[Cell, list[dict[str, Any]]]:
    """One ``%%distributed`` run of the loop; with ``log`` the dashboard is on too."""
    flags = () if log else ("--no-widget",)
    call = f"_bench_result = bench_train({steps}, {warmup}, log={log})"
    cell = kernel.run(f"{ctx.magic_line(*flags, ranks=ranks)}\n{call}")
    return cell, kernel.eval("_bench_view.pull('_bench_result')")


def direct(
    kernel: BenchKernel, ctx: Context, steps: int, warmup: int
) -> tuple[Cell, list[dict[str, Any]]]:
    """The loop sent through ipyparallel to the magic's engines (``Context.execute_direct``)."""
    code = f"_bench_result = bench_train({steps}, {warmup}, log=False)"
    cell = ctx.execute_direct(kernel, ctx.magic_line("--no-widget"), code)
    return cell, kernel.eval("_bench_view.pull('_bench_result')")


def mpiexec(ctx: Context, ranks: int, steps: int, warmup: int) -> list[dict[str, Any]]:
    """The loop under ``mpiexec -n ranks python``."""
    kwargs = {"steps": steps, "warmup": warmup, "log": False}
    return ctx.run_ranks(ranks, TRAIN, "bench_train", kwargs)


def steps_per_s(results: list[dict[str, Any]]) -> float:
    """Steps per second of a run: the slowest rank's time (ranks run in lockstep)."""
    return float(results[0]["steps"] / max(r["seconds"] for r in results))


def message_cost(
    logged: list[dict[str, Any]], plain: list[dict[str, Any]], after: int = 6
) -> tuple[float, int]:
    """Seconds the steps from each message on took beyond a typical plain step, and messages.

    A step takes as long as its slowest rank; ``after`` steps from each message count.
    """
    typical = statistics.median(max(ts) for ts in zip(*(r["times"] for r in plain), strict=True))
    times = [max(ts) for ts in zip(*(r["times"] for r in logged), strict=True)]
    window = {i + k for r in logged for i in r["sent"] for k in range(after) if i + k < len(times)}
    return sum(times[i] - typical for i in window), sum(len(r["sent"]) for r in logged)


def run(ctx: Context, report: Report) -> None:
    # single pairs swing by ±5% here and the targets' margins are 2–3%: twice the other suites'
    # pairs (a round is four arms of about 5 s)
    rounds = 2 if ctx.quick else 2 * ctx.pairs
    steps, warmup = (200, 20) if ctx.quick else (2000, 50)
    rate: dict[str, list[float]] = {MAGIC: [], PLAIN: [], DIRECT: [], MPIEXEC: []}
    cpu: dict[str, list[float]] = {MAGIC: [], PLAIN: [], DIRECT: []}
    delayed, messages, logged_s = 0.0, 0, 0.0
    with ctx.kernel() as kernel:
        kernel.run("%load_ext dtrain_magics")
        n = ctx.ranks
        setup(kernel, ctx, n)
        magic(kernel, ctx, n, 50, 5, True)  # warm-up of every path
        magic(kernel, ctx, n, 50, 5, False)
        direct(kernel, ctx, 50, 5)
        for r in range(rounds):
            runs: dict[str, Any] = {}
            arms: dict[str, Callable[[], Run]] = {
                MAGIC: lambda: magic(kernel, ctx, n, steps, warmup, True),
                PLAIN: lambda: magic(kernel, ctx, n, steps, warmup, False),
                DIRECT: lambda: direct(kernel, ctx, steps, warmup),
                MPIEXEC: lambda: (None, mpiexec(ctx, n, steps, warmup)),
            }
            for name in ORDERS[r % len(ORDERS)]:
                cell, results = arms[name]()
                runs[name] = results
                rate[name].append(steps_per_s(results))
                if cell is not None:
                    cpu[name].append(100 * cell.cpu_s / cell.client_s)
            cost, sent = message_cost(runs[MAGIC], runs[DIRECT])
            delayed, messages = delayed + cost, messages + sent
            logged_s += max(x["seconds"] for x in runs[MAGIC])
        kernel.run("%dtrain stop")
    rate = {k.format(n=n) if k == MPIEXEC else k: v for k, v in rate.items()}
    report.raw["throughput"] = {
        "steps_per_s": rate,
        "kernel_cpu_percent": cpu,
        "steps": steps,
        "message_delay_s": delayed,
        "messages": messages,
    }
    _rows(report, rate, cpu, delayed, messages, logged_s, n)


def _rows(
    report: Report,
    rate: dict[str, list[float]],
    cpu: dict[str, list[float]],
    delayed: float,
    messages: int,
    logged_s: float,
    ranks: int,
) -> None:
    def med(values: list[float], digits: int = 0) -> str:
        return f"{summarize(values)['median']:.{digits}f}"

    named = MPIEXEC.format(n=ranks)
    for ours, peer, limit in ((MAGIC, DIRECT, 0.98), (MAGIC, named, 0.97), (PLAIN, DIRECT, None)):
        ratio = summarize_ratio(rate[ours], rate[peer])
        report.rows.append(
            Row(
                "throughput",
                f"steps/s: {ours}",
                med(rate[ours]),
                peer,
                med(rate[peer]),
                ratio,
                f"≥ {limit}×" if limit else "",
                ratio["median"] >= limit if limit else None,
            )
        )
    kernel_cpu = summarize(cpu[MAGIC])["median"]
    report.rows.append(
        Row(
            "throughput",
            "kernel CPU while the cell runs (% of a core)",
            f"{kernel_cpu:.1f}",
            DIRECT,
            med(cpu[DIRECT], 1),
            target="≤ 2%",
            met=kernel_cpu <= 2,
        )
    )
    per_message = 1000 * delayed / messages if messages else 0.0
    share = delayed / logged_s if logged_s else 0.0
    report.rows.append(
        Row(
            "throughput",
            "cost of each telemetry message",
            f"{per_message:.1f} ms ({messages} msgs, {100 * share:.1f}% of logged time)",
        )
    )
    report.notes.append(
        "Throughput: the mpiexec arm gets the project's rank environment (rank_environment("
        f"Layout({ranks}, 1)): OMP_NUM_THREADS, MPI transport, GLIBC_TUNABLES) and "
        f"the local launcher's mpiexec options ({' '.join(mpiexec_options())}), like for like. A "
        "telemetry message's cost is the time the 6 steps from it took beyond the median step "
        "of the direct arm of the same round."
    )
