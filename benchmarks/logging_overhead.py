"""Training throughput with ``dtrain.log`` on every step versus no logging, in one run.

Runs the same small data-parallel training loop (2 Horovod ranks, an MLP on generated data)
alternately without logging and with ``dtrain.log(loss=..., samples=...)`` and
``dtrain.progress`` on every step, and prints steps/s of each and their ratio.
Target: ratio >= 0.98.

Usage: python benchmarks/logging_overhead.py [--steps N] [--repeats R]
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
"""

PLAIN = """
t0 = time.perf_counter()
for i in range({steps}):
    loss = step()
rate = {steps} / (time.perf_counter() - t0)
"""

LOGGED = """
t0 = time.perf_counter()
for i in dtrain.progress(range({steps}), desc="bench"):
    loss = step()
    dtrain.log(loss=loss.item(), samples=64)
rate = {steps} / (time.perf_counter() - t0)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    ip = start_ipython()
    ip.run_line_magic("load_ext", "dtrain_magics")
    import dtrain_magics

    cluster = dtrain_magics._magics.cluster
    line = "--nodes 2 --no-widget"
    try:
        ip.run_cell_magic("distributed", line, SETUP)
        ip.run_cell_magic("distributed", line, PLAIN.format(steps=200))  # warm-up
        plain, logged, ratios = [], [], []
        for i in range(args.repeats):
            # alternate which variant goes first, so drift on the machine hits both alike
            order = [("plain", PLAIN), ("logged", LOGGED)][:: 1 if i % 2 == 0 else -1]
            rates = {}
            for name, template in order:
                ip.run_cell_magic("distributed", line, template.format(steps=args.steps))
                rates[name] = min(cluster.view().pull("rate"))
            plain.append(rates["plain"])
            logged.append(rates["logged"])
            ratios.append(rates["logged"] / rates["plain"])
    finally:
        cluster.stop()
    print(
        f"no logging:            {statistics.median(plain):8.1f} steps/s "
        f"(median of {args.repeats}, slowest rank)"
    )
    print(f"dtrain.log every step: {statistics.median(logged):8.1f} steps/s")
    print(
        f"ratio logged/plain:    {statistics.median(ratios):8.3f}  (median of paired runs; "
        f"min {min(ratios):.3f}, max {max(ratios):.3f}; target >= 0.98)"
    )


if __name__ == "__main__":
    main()
