"""Training throughput with ``dtrain.log`` on every step versus no logging, in one run.

The same small data-parallel training loop (2 Horovod ranks, an MLP on generated data) runs in
alternating blocks inside each cell: a block without logging, then a block with
``dtrain.log(loss=..., samples=...)`` and ``dtrain.progress`` on every step (the order flips
from pair to pair). Both variants thus share the same cell, cluster state and machine
conditions, while the notebook receives and records the logged blocks' messages as it does in
real use. Blocks last a few seconds each, so a logged block carries the steady message rate of
a training loop (one message per 0.25 s) rather than mostly the first and last message of a
short ``dtrain.progress`` loop. It prints steps/s of each, the ratio of their totals and the
spread of per-pair ratios. Target: ratio >= 0.98.

Usage: python benchmarks/logging_overhead.py [--cells C] [--blocks B] [--steps N]
"""

from __future__ import annotations

import argparse
import statistics

from IPython.testing.globalipapp import start_ipython

SETUP = """
import time, torch
torch.manual_seed(rank)
model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
hvd.broadcast_parameters(model.state_dict(), root_rank=0)
opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.01),
                               named_parameters=model.named_parameters())
x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))

def step():
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss

def plain_block(steps):
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step()
    return time.perf_counter() - t0

def logged_block(steps):
    t0 = time.perf_counter()
    for i in dtrain.progress(range(steps), desc="bench"):
        loss = step()
        dtrain.log(loss=loss.item(), samples=64)
    return time.perf_counter() - t0
"""

PAIRS = """
pairs = []
for b in range({blocks}):
    if b % 2 == 0:
        plain_s = plain_block({steps}); logged_s = logged_block({steps})
    else:
        logged_s = logged_block({steps}); plain_s = plain_block({steps})
    pairs.append((plain_s, logged_s))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=4, help="cells run")
    parser.add_argument("--blocks", type=int, default=10, help="block pairs per cell")
    parser.add_argument("--steps", type=int, default=600, help="steps per block")
    args = parser.parse_args()
    ip = start_ipython()
    ip.run_line_magic("load_ext", "dtrain_magics")
    import dtrain_magics

    cluster = dtrain_magics._magics.cluster
    line = "--nodes 2 --no-widget"
    pairs: list[tuple[float, float]] = []
    try:
        ip.run_cell_magic("distributed", line, SETUP)
        ip.run_cell_magic("distributed", line, PAIRS.format(blocks=2, steps=50))  # warm-up
        for _ in range(args.cells):
            ip.run_cell_magic(
                "distributed", line, PAIRS.format(blocks=args.blocks, steps=args.steps)
            )
            per_rank = cluster.view().pull("pairs")  # the slowest rank's time for each block
            pairs += [
                (max(p for p, _ in blocks), max(g for _, g in blocks))
                for blocks in zip(*per_rank, strict=True)
            ]
    finally:
        cluster.stop()
    plain_s, logged_s = sum(p for p, _ in pairs), sum(g for _, g in pairs)
    steps = args.steps * len(pairs)
    ratios = sorted(p / g for p, g in pairs)
    q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
    print(f"no logging:            {steps / plain_s:8.1f} steps/s ({len(pairs)} blocks)")
    print(f"dtrain.log every step: {steps / logged_s:8.1f} steps/s ({len(pairs)} blocks)")
    print(
        f"ratio logged/plain:    {plain_s / logged_s:8.3f}  (totals; per-pair median "
        f"{statistics.median(ratios):.3f}, quartiles {q1:.3f}-{q3:.3f}; target >= 0.98)"
    )


if __name__ == "__main__":
    main()
