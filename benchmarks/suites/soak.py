"""A long run logging every step: kernel memory and messages to the front end stay flat.

One ``%%distributed`` cell with the dashboard runs a loop of ``dtrain.progress`` and
``dtrain.log(loss=...)`` every step, each step sleeping a fixed 0.5 ms (no compute: this
measures the logging path, not the model), for 10,000 and then 100,000 steps. For each: the
kernel's resident memory before, after (after ``gc.collect()``) and at its peak (sampled every
0.2 s), the IOPub messages the front end received per second while the loop ran (all kinds;
``comm_msg`` are the widget updates; the messages of a 0-step cell, the dashboard's creation,
are subtracted with its time), their bytes per second, and the size of the stored widget
state. Flat means: the longer run sends no more messages per second than the shorter one
(within 20%; fewer is expected, as the dashboard's first seconds send more, and a longer run
dilutes them), and its memory growth is at most twice the shorter one's (or 2 MB), where growth
in proportion to the steps would be ten times.
"""

from __future__ import annotations

import threading
from typing import Any

from ..context import Context
from ..kernels import BenchKernel, Cell
from ..report import Report, Row
from ..stats import single

STEP_S = 0.0005
LOOP = """{line}
import time as _bench_time
for _i in dtrain.progress(range({steps}), desc="soak"):
    _bench_time.sleep({step})
    dtrain.log(loss=1.0 / (_i + 1))
"""
GC = "import gc as _bench_gc; _ = _bench_gc.collect()"


def run(ctx: Context, report: Report) -> None:
    lengths = (2_000, 10_000) if ctx.quick else (10_000, 100_000)
    measured = {}
    with ctx.kernel() as kernel:
        kernel.run("%load_ext dtrain_magics")
        kernel.run(LOOP.format(line=ctx.magic_line(), steps=1000, step=STEP_S))  # warm-up
        fixed = kernel.run(LOOP.format(line=ctx.magic_line(), steps=0, step=STEP_S))
        for steps in lengths:
            measured[steps] = _one(kernel, ctx, steps, fixed)
        kernel.run("%dtrain stop")
    report.raw["soak"] = measured
    short, long = (measured[n] for n in lengths)
    rate_ratio = long["messages_per_s"] / short["messages_per_s"]
    report.rows.append(
        Row(
            "soak",
            f"messages/s to the front end, {lengths[1]:,} vs {lengths[0]:,} steps",
            f"{long['messages_per_s']:.1f}",
            f"{lengths[0]:,} steps",
            f"{short['messages_per_s']:.1f}",
            single(rate_ratio),
            "≤ 1.2× (no growth)",
            rate_ratio <= 1.2,
        )
    )
    allowed = max(2 * short["rss_growth_mb"], 2.0)
    bytes_ratio = long["bytes_per_s"] / short["bytes_per_s"]
    report.rows.append(
        Row(
            "soak",
            f"KB/s to the front end, {lengths[1]:,} vs {lengths[0]:,} steps",
            f"{long['bytes_per_s'] / 1024:.1f}",
            f"{lengths[0]:,} steps",
            f"{short['bytes_per_s'] / 1024:.1f}",
            single(bytes_ratio),
            note="informative: the size of the dashboard's updates",
        )
    )
    report.rows.append(
        Row(
            "soak",
            f"kernel memory growth (MB), {lengths[1]:,} vs {lengths[0]:,} steps",
            f"{long['rss_growth_mb']:.1f} (peak +{long['rss_peak_growth_mb']:.1f})",
            f"{lengths[0]:,} steps",
            f"{short['rss_growth_mb']:.1f} (peak +{short['rss_peak_growth_mb']:.1f})",
            target="flat (≤ 2× the shorter run's, or ≤ 2 MB)",
            met=long["rss_growth_mb"] <= allowed,
        )
    )
    report.rows.append(
        Row(
            "soak",
            f"kernel CPU during the {lengths[1]:,}-step cell (% of a core)",
            f"{long['kernel_cpu_percent']:.1f}",
            f"{lengths[0]:,} steps",
            f"{short['kernel_cpu_percent']:.1f}",
            target="≤ 2%",
            met=long["kernel_cpu_percent"] <= 2,
        )
    )
    report.notes.append(
        f"Soak: steps sleep {STEP_S * 1000:.1f} ms each (no compute); memory is the kernel's "
        "RSS after gc.collect(), peak sampled every 0.2 s; messages are every IOPub message "
        "addressed to the cell, as nbclient (storing widget state) received them, less those of "
        "a 0-step cell (creating the dashboard)."
    )


def _one(kernel: BenchKernel, ctx: Context, steps: int, fixed: Cell) -> dict[str, Any]:
    kernel.run(GC)
    before = kernel.rss()
    widgets_before = kernel.widget_state_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], kernel.rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        cell: Cell = kernel.run(LOOP.format(line=ctx.magic_line(), steps=steps, step=STEP_S))
    finally:
        done.set()
        sampler.join()
    kernel.run(GC)
    after = kernel.rss()
    return {
        "steps": steps,
        "seconds": cell.kernel_s,
        "messages": cell.message_count,
        "messages_by_type": dict(cell.messages),
        "message_bytes": cell.message_bytes,
        "messages_per_s": (cell.message_count - fixed.message_count)
        / max(cell.kernel_s - fixed.kernel_s, 1e-3),
        "messages_per_cell_fixed": fixed.message_count,
        "bytes_per_s": (cell.message_bytes - fixed.message_bytes)
        / max(cell.kernel_s - fixed.kernel_s, 1e-3),
        "rss_before_mb": before / 2**20,
        "rss_growth_mb": (after - before) / 2**20,
        "rss_peak_growth_mb": (peak[0] - before) / 2**20,
        "widget_state_growth_kb": (kernel.widget_state_bytes() - widgets_before) / 1024,
        "kernel_cpu_percent": 100 * cell.cpu_s / cell.client_s,
    }
