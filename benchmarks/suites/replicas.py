"""The cost of ``dtrain.check_replicas`` on a ~100M-parameter model, beside what it guards.

On the warm 2-rank cluster (``--ranks``) each rank builds 6 × ``Linear(4096, 4096)`` (100.7M float32
parameters, 403 MB), broadcasts it from rank 0 and then, ``repeats`` times, after a barrier each:
times ``check_replicas(model)`` (CRC-32 of every tensor and one allgather), the checksums alone,
and as peers in the same run one ``hvd.broadcast_parameters`` of the same model (what the check
stands in for), a ``torch.save`` of its state_dict to ``/dev/null`` and a copy of its parameters
in memory. A repeat's figure is its slowest rank's; the ratio pairs each check with the
broadcast of the same repeat.
"""

from __future__ import annotations

from dtrain_magics.ui.headline import plural

from ..context import Context
from ..report import Report, Row
from ..stats import summarize, summarize_ratio

REPLICAS = r'''
import os as _bench_os
import time as _bench_time
import torch as _bench_torch


def bench_replicas(layers, width, repeats):
    """Per-repeat seconds of the check and its peers on a model of ``layers`` square layers."""
    from dtrain_magics.rank.replicas import checksums

    torch, perf = _bench_torch, _bench_time.perf_counter
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    model = model.to(device)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    tensors = dtrain.check_replicas(model)  # warm-up, and the count
    arms = {"check": [], "checksums": [], "broadcast": [], "save": [], "copy": []}

    def save():
        with open(_bench_os.devnull, "wb") as f:
            torch.save(model.state_dict(), f)

    def copy():
        return [p.detach().clone() for p in model.parameters()]

    calls = {
        "check": lambda: dtrain.check_replicas(model),
        "checksums": lambda: checksums(model),
        "broadcast": lambda: hvd.broadcast_parameters(model.state_dict(), root_rank=0),
        "save": save,
        "copy": copy,
    }
    for _ in range(repeats):
        for arm, call in calls.items():
            dtrain.barrier()
            started = perf()
            call()
            arms[arm].append(perf() - started)
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"params": params, "bytes": nbytes, "tensors": tensors, "seconds": arms}
'''


def run(ctx: Context, report: Report) -> None:
    layers, width = (2, 1024) if ctx.quick else (6, 4096)
    repeats = 2 if ctx.quick else max(5, ctx.pairs)
    with ctx.kernel() as kernel:
        kernel.run("%load_ext dtrain_magics")
        kernel.run("import dtrain_magics")
        line = ctx.magic_line("--no-widget")
        kernel.run(f"{line}\n{REPLICAS}")
        kernel.run(f"{line}\n_bench_result = bench_replicas({layers}, {width}, {repeats})")
        results = kernel.eval("dtrain_magics._magics.cluster.view().pull('_bench_result')")
        kernel.run(f"{line}\ndel _bench_result")
        kernel.run("%dtrain stop")
    arms = {
        arm: [max(r["seconds"][arm][i] for r in results) for i in range(repeats)]
        for arm in results[0]["seconds"]
    }
    first = results[0]
    report.raw["replicas"] = {"layers": layers, "width": width, **first, "slowest_s": arms}
    size = f"{first['params'] / 1e6:.1f}M params"
    check = summarize(arms["check"])
    peers = {
        "broadcast": "hvd.broadcast_parameters",
        "save": "torch.save to /dev/null",
        "copy": "clone of the parameters",
    }
    for arm, peer in peers.items():
        ratio = summarize_ratio(arms["check"], arms[arm])
        first_row = arm == "broadcast"
        report.rows.append(
            Row(
                "replicas",
                f"check_replicas, {size} (s)",
                _seconds(arms["check"]),
                peer,
                _seconds(arms[arm]),
                ratio,
                "< 1 s" if first_row else "",
                check["median"] < 1 if first_row else None,
            )
        )
    report.rows.append(Row("replicas", f"checksums alone, {size} (s)", _seconds(arms["checksums"])))
    report.notes.append(
        f"Replicas: dtrain.check_replicas on {plural(ctx.ranks, 'rank')} of a model of {layers} × "
        f"Linear({width}, {width}) ({size}, {first['bytes'] / 1e6:.0f} MB, {first['tensors']} "
        "tensors): CRC-32 of every tensor plus one MPI allgather; each figure is the slowest "
        "rank's of a repeat, after a barrier; median [quartiles]."
    )


def _seconds(values: list[float]) -> str:
    s = summarize(values)
    return f"{s['median']:.3f} [{s['q1']:.3f}–{s['q3']:.3f}]"
