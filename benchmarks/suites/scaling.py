"""Scaling: the training loop at 1, 2 and 4 ranks, under the magic and under ``mpiexec``.

Each rank trains on its own batch of 64, so samples/s = steps/s × 64 × ranks. At each size the
magic (dashboard and ``dtrain.log`` every step; the cluster is resized by ``--nodes``) and
``mpiexec -n N python train.py`` alternate. More ranks than cores share the cores
(oversubscribed); the table says so.
"""

from __future__ import annotations

from ..context import Context
from ..machine import gpus as gpu_names
from ..report import Report, Row
from ..stats import summarize, summarize_ratio
from . import throughput


def run(ctx: Context, report: Report) -> None:
    sizes = [1, 2] if ctx.quick else [1, 2, 4]
    if ctx.device == "cuda":  # one GPU per rank
        gpus = len(gpu_names())
        skipped = [n for n in sizes if n > gpus]
        sizes = [n for n in sizes if n <= gpus]
        if skipped:
            ctx.notes.append(f"Scaling: {skipped} ranks skipped, {gpus} GPUs here.")
    rounds = 1 if ctx.quick else min(ctx.pairs, 3)
    steps, warmup = (200, 20) if ctx.quick else (1000, 30)
    samples: dict[int, dict[str, list[float]]] = {}
    with ctx.kernel() as kernel:
        kernel.run("%load_ext dtrain_magics")
        for n in sizes:
            throughput.setup(kernel, ctx, n)
            throughput.magic(kernel, ctx, n, 30, 5, True)  # warm-up
            ours: list[float] = []
            peer: list[float] = []
            for r in range(rounds):
                for arm in ("magic", "mpiexec") if r % 2 == 0 else ("mpiexec", "magic"):
                    if arm == "magic":
                        results = throughput.magic(kernel, ctx, n, steps, warmup, True)[1]
                    else:
                        results = throughput.mpiexec(ctx, n, steps, warmup)
                    rate = throughput.steps_per_s(results) * results[0]["batch"] * n
                    (ours if arm == "magic" else peer).append(rate)
            samples[n] = {"magic": ours, "mpiexec": peer}
        kernel.run("%dtrain stop")
    report.raw["scaling"] = {"samples_per_s": samples, "steps": steps}
    base = summarize(samples[1]["magic"])["median"]
    for n in sizes:
        ours_s, peer_s = samples[n]["magic"], samples[n]["mpiexec"]
        median = summarize(ours_s)["median"]
        over = n > ctx.cores
        report.rows.append(
            Row(
                "scaling",
                f"{n} rank{'s' if n > 1 else ''} samples/s (efficiency)"
                + (" oversubscribed" if over else ""),
                f"{median:.0f} ({median / (n * base):.2f})",
                f"mpiexec -n {n}",
                f"{summarize(peer_s)['median']:.0f}",
                summarize_ratio(ours_s, peer_s),
                note=f"{n} ranks on {ctx.cores} cores" if over else "",
            )
        )
    report.notes.append(
        "Scaling: efficiency is samples/s ÷ (ranks × the magic's samples/s at 1 rank); "
        "'oversubscribed' marks more ranks than cores."
    )
