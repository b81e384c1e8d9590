"""Training throughput with ``dtrain.log`` on every step versus no logging, in one run.

The same small data-parallel training loop (2 Horovod ranks, an MLP on generated data) runs in
alternating blocks inside each cell: a block without logging, then a block with
``dtrain.log(loss=..., samples=...)`` and ``dtrain.progress`` on every step (the order flips
from pair to pair). Both variants thus share the same cell, cluster state and machine
conditions, while the notebook receives and records the logged blocks' messages as it does in
real use. Blocks last a few seconds each, so a logged block carries the steady message rate of
a training loop (one message per 0.5 s, ``telemetry.INTERVAL``) rather than mostly the first
and last message of a short ``dtrain.progress`` loop. It prints steps/s of each, the ratio of
their totals with a bootstrap 90% interval over the block pairs, and the spread of per-pair
ratios. Target: ratio >= 0.98.

Throughput on a small shared machine varies by several percent from block to block, more than
logging costs, so it also prints a direct measure that drift cancels out of: how much longer
than the median plain step the steps just after each message took (the message's cost), as a
share of the logged blocks' time.

Usage: python benchmarks/logging_overhead.py [--cells C] [--blocks B] [--steps N]
"""

from __future__ import annotations

import argparse
import random
import statistics

from IPython.testing.globalipapp import start_ipython

SETUP = """
import time, torch
from dtrain_magics.rank.telemetry import current as current_telemetry
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
    times = []
    t0 = time.perf_counter()
    for i in range(steps):
        a = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - a)
    return time.perf_counter() - t0, times, []

def logged_block(steps):
    telemetry, times, sent = current_telemetry(), [], []
    t0 = time.perf_counter()
    for i in dtrain.progress(range(steps), desc="bench"):
        a = time.perf_counter()
        loss = step()
        seq = telemetry._seq
        dtrain.log(loss=loss.item(), samples=64)
        times.append(time.perf_counter() - a)
        if telemetry._seq != seq:
            sent.append(i)
    return time.perf_counter() - t0, times, sent
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
    delayed_s = 0.0  # time the steps after each message took beyond the median plain step
    try:
        ip.run_cell_magic("distributed", line, SETUP)
        ip.run_cell_magic("distributed", line, PAIRS.format(blocks=2, steps=50))  # warm-up
        for _ in range(args.cells):
            ip.run_cell_magic(
                "distributed", line, PAIRS.format(blocks=args.blocks, steps=args.steps)
            )
            per_rank = cluster.view().pull("pairs")
            for blocks in zip(*per_rank, strict=True):  # one block pair, as seen by each rank
                plain, logged = [b[0] for b in blocks], [b[1] for b in blocks]
                pairs.append((max(b[0] for b in plain), max(b[0] for b in logged)))
                delayed_s += message_delay(plain, logged)
    finally:
        cluster.stop()
    plain_s, logged_s = sum(p for p, _ in pairs), sum(g for _, g in pairs)
    steps = args.steps * len(pairs)
    ratios = sorted(p / g for p, g in pairs)
    q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
    low, high = bootstrap_interval(pairs)
    print(f"no logging:            {steps / plain_s:8.1f} steps/s ({len(pairs)} blocks)")
    print(f"dtrain.log every step: {steps / logged_s:8.1f} steps/s ({len(pairs)} blocks)")
    print(
        f"ratio logged/plain:    {plain_s / logged_s:8.3f}  (totals, 90% interval {low:.3f}-"
        f"{high:.3f}; per-pair median {statistics.median(ratios):.3f}, quartiles "
        f"{q1:.3f}-{q3:.3f}; target >= 0.98)"
    )
    print(
        f"steps delayed by messages: {1000 * delayed_s:.0f} ms in {logged_s:.1f} s of logged "
        f"blocks, a ratio of {1 - delayed_s / logged_s:.3f}"
    )


def message_delay(plain: list[tuple], logged: list[tuple], after: int = 6) -> float:
    """Seconds the steps from each message on (``after`` of them) took beyond a plain step.

    ``plain`` and ``logged`` hold each rank's ``(seconds, step times, steps that sent)``; ranks
    run in lockstep, so a step takes as long as its slowest rank.
    """
    typical = statistics.median(max(ts) for ts in zip(*(b[1] for b in plain), strict=True))
    times = [max(ts) for ts in zip(*(b[1] for b in logged), strict=True)]
    window = {i + k for b in logged for i in b[2] for k in range(after) if i + k < len(times)}
    return sum(times[i] - typical for i in window)


def bootstrap_interval(pairs: list[tuple[float, float]], rounds: int = 2000) -> tuple[float, float]:
    """90% interval of the ratio of totals, resampling block pairs."""
    rng = random.Random(0)
    ratios = []
    for _ in range(rounds):
        sample = rng.choices(pairs, k=len(pairs))
        ratios.append(sum(p for p, _ in sample) / sum(g for _, g in sample))
    ratios.sort()
    return ratios[int(0.05 * rounds)], ratios[int(0.95 * rounds)]


if __name__ == "__main__":
    main()
