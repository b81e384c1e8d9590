"""Run the benchmark suites and report: ``python -m benchmarks [--quick] [--only a,b] ...``.

Suites: latency (warm cell), cold (first cell with cluster start), throughput (training),
allreduce (bandwidth by size), scaling (1, 2, 4 ranks), soak (100,000 logged steps), replicas
(``dtrain.check_replicas`` on a 100M-parameter model). Each one measures dtrain-magics and its
peers side by side in this run, through real Jupyter kernels with a widget-storing front end. A
suite that fails is reported and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from .context import Context
from .machine import describe, one_line
from .report import Report
from .suites import SUITES

REPO = Path(__file__).resolve().parent.parent


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few pairs: checks the harness"
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated suites to run, of: {', '.join(SUITES)}"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--ranks",
        type=int,
        default=None,
        help="ranks of every suite but scaling (default 2; with --device cuda, at most one per "
        "GPU, so 1 on a one-GPU machine; allreduce needs 2)",
    )
    parser.add_argument(
        "--pairs", type=int, default=5, help="rounds of side-by-side pairs (full run; default 5)"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results", help="results directory"
    )
    args = parser.parse_args(argv)
    args.suites = [s.strip() for s in args.only.split(",") if s.strip()] or list(SUITES)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if args.ranks is not None and args.ranks < 1:
        parser.error("--ranks must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    machine = describe(REPO)
    gpus = len(machine["gpus"])
    ranks = args.ranks or (min(2, gpus) if args.device == "cuda" and gpus else 2)
    options = {
        "device": args.device,
        "ranks": ranks,
        "quick": args.quick,
        "pairs": args.pairs,
        "only": args.only,
        "suites": args.suites,
    }
    if args.device == "cuda" and ranks > gpus:
        print(
            f"--device cuda needs a GPU per rank: {ranks} ranks, and nvidia-smi lists {gpus} "
            "GPUs (NCCL refuses two ranks on one GPU); give --ranks at most the GPUs.",
            file=sys.stderr,
        )
        return 2
    ctx = Context(REPO, device=args.device, ranks=ranks, quick=args.quick, pairs=args.pairs)
    report = Report(machine, options)
    print(f"dtrain-magics benchmarks on {one_line(machine)}; suites: {', '.join(args.suites)}")
    if machine["load_at_start"][0] > 0.5 * ctx.cores:
        report.notes.append(
            f"The machine was busy: load average {machine['load_at_start'][0]} at the start "
            f"on {ctx.cores} cores; absolute figures suffer more than ratios."
        )
    try:
        for name in args.suites:
            started = time.monotonic()
            print(f"[{name}] running ...", flush=True)
            try:
                SUITES[name](ctx, report)
            except Exception as e:
                traceback.print_exc()
                report.failures[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            print(f"[{name}] {time.monotonic() - started:.0f} s", flush=True)
    finally:
        shutil.rmtree(ctx.scratch, ignore_errors=True)
    machine["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report.notes.extend(ctx.notes)
    print()
    print(report.text())
    for suite, why in report.failures.items():
        print(f"{suite} FAILED: {why}", file=sys.stderr)
    for path in report.write(args.out):
        print(f"wrote {path}")
    return 1 if report.failures else 0
