"""The code every arm runs on its ranks, as source text: one copy for all of them.

Under ``%%distributed`` and through ipyparallel directly it runs in the rank namespace, where
``hvd`` (or ``dist``), ``device`` and ``dtrain`` are bound; under ``mpiexec`` the runner script
(``RUNNER``) binds the same names before it executes the same text. Every function returns a
JSON-able dict; timing happens inside the ranks, after a warm-up.
"""

from __future__ import annotations

# A small MLP trained data-parallel with hvd.DistributedOptimizer. ``log=True`` adds what a
# user adds for the dashboard: dtrain.progress around the loop and dtrain.log every step.
TRAIN = r'''
import time as _bench_time
import torch as _bench_torch

_bench_trainer = None


def bench_trainer(batch=64, features=256, hidden=512, classes=10):
    """One optimiser step of a small MLP (created once per namespace)."""
    global _bench_trainer
    if _bench_trainer is not None:
        return _bench_trainer
    torch = _bench_torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes)
    ).to(device)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = hvd.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.01), named_parameters=model.named_parameters()
    )
    x = torch.randn(batch, features, device=device)
    y = torch.randint(0, classes, (batch,), device=device)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    _bench_trainer = step
    return step


def bench_train(steps, warmup, log, batch=64):
    """Time ``steps`` training steps after ``warmup`` ones; per-step times and message steps."""
    step = bench_trainer(batch)
    for _ in range(warmup):
        step()
    telemetry = None
    if log:
        from dtrain_magics.rank import telemetry as _telemetry_module

        telemetry = _telemetry_module.current()
    perf = _bench_time.perf_counter
    times, sent = [], []
    loop = dtrain.progress(range(steps), desc="bench") if log else range(steps)
    started = perf()
    for i in loop:
        begun = perf()
        loss = step()
        if log:
            seq = getattr(telemetry, "_seq", None)
            dtrain.log(loss=loss, samples=batch)
            if seq is not None and telemetry._seq != seq:
                sent.append(i)
        times.append(perf() - begun)
    seconds = perf() - started
    return {
        "rank": hvd.rank(),
        "size": hvd.size(),
        "steps": steps,
        "batch": batch,
        "seconds": seconds,
        "times": times,
        "sent": sent,
    }
'''

# Allreduce of float32 tensors of each size, in place, after two warm-up calls. The tensors hold
# zeros so that repeated sums stay finite.
ALLREDUCE = r'''
import time as _bench_time
import torch as _bench_torch


def bench_allreduce(sizes, budget_bytes, backend, most_blocks=21):
    """Seconds per in-place allreduce of ``size`` bytes, for each size: the fastest of up to
    ``most_blocks`` timed blocks of repeats (one call at least each), after two warm-up calls.
    The blocks go round the sizes (block 1 of every size, then block 2, ...), so each size's
    blocks are spread over the whole run: a slow phase of a shared machine (seconds long) spoils
    a few blocks of every size rather than every block of one size. Many short blocks rather
    than a few long ones: a latency-bound size (gloo's, under 1 MB) runs fast only in windows
    of a few milliseconds on a small virtual machine: over six ``mpiexec`` runs here the fastest
    of seven 40-call blocks landed 1.5–2.1× apart, and that of 21 blocks of 13 calls, the same
    calls, 1.2–1.5× apart."""
    torch = _bench_torch
    perf = _bench_time.perf_counter
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def barrier():
        if backend == "horovod":
            hvd.barrier()
        else:
            dist.barrier()

    def once(tensor, name):
        if backend == "horovod":
            hvd.allreduce_(tensor, op=hvd.Sum, name=name)
        else:
            dist.all_reduce(tensor)

    runs = {}  # size: (tensor, Horovod name, {turn: calls of the block timed then})
    for size in sizes:
        name = f"bench.{size}"
        tensor = torch.zeros(max(1, size // 4), dtype=torch.float32, device=device)
        reps = int(min(7 * 40, max(7, budget_bytes // size)))
        n = min(most_blocks, reps)
        blocks = [reps // n] * (n - 1) + [reps - (n - 1) * (reps // n)]
        # fewer blocks than turns: each block in the last turn of its share, spread over the run
        schedule = {
            turn: blocks[turn * n // most_blocks]
            for turn in range(most_blocks)
            if (turn + 1) * n // most_blocks != turn * n // most_blocks
        }
        runs[size] = (tensor, name, schedule)
        for _ in range(2):
            once(tensor, name)
    best = {size: float("inf") for size in sizes}
    for turn in range(most_blocks):
        for size, (tensor, name, schedule) in runs.items():
            calls = schedule.get(turn)
            if calls is None:
                continue
            sync()
            barrier()
            started = perf()
            for _ in range(calls):
                once(tensor, name)
            sync()
            best[size] = min(best[size], (perf() - started) / calls)
    del runs, tensor
    return {"seconds": {str(size): best[size] for size in sizes}}
'''

# What a cold job does: start, initialise Horovod, one allreduce.
COLD_JOB = r"""
import torch
import horovod.torch as hvd

hvd.init()
device = torch.device("cuda", hvd.local_rank()) if DEVICE == "cuda" else torch.device("cpu")
hvd.allreduce(torch.ones(1, device=device), op=hvd.Sum, name="cold")
"""

# One process copying a tensor into another: this machine's memory-copy bandwidth.
MEMCPY = r"""
import json, sys, time
import torch

device = torch.device(sys.argv[1])
sizes = json.loads(sys.argv[2])
seconds = {}
for size in sizes:
    src = torch.ones(max(1, size // 4), dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    reps = int(min(200, max(5, (1 << 28) // size)))
    for _ in range(3):
        dst.copy_(src)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds[str(size)] = (time.perf_counter() - started) / reps
print(json.dumps(seconds))
"""

# Under mpiexec: bind what %%distributed binds (hvd or dist, rank, size, device), execute the
# workload's source, call one function, and write each rank's result to OUT/rank-N.json.
RUNNER = r"""
import json, os, sys

spec = json.loads(sys.argv[1])
import torch

from dtrain_magics.rank.world import from_environment

here = from_environment()  # any MPI's variables
world_rank, world_size = (here.rank, here.size) if here else (0, 1)
local_rank = here.host_rank if here else 0
if spec["device"] == "cuda":
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
else:
    device = torch.device("cpu")
if spec["backend"] == "horovod":
    import horovod.torch as hvd

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
else:
    import torch.distributed as dist

    rank, size = world_rank, world_size
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        init_method=spec["init_method"],
        rank=rank,
        world_size=size,
    )
with open(spec["source"]) as f:
    exec(compile(f.read(), spec["source"], "exec"))
result = globals()[spec["call"]](**spec["kwargs"])
with open(os.path.join(spec["out"], f"rank-{rank}.json"), "w") as f:
    json.dump(result, f)
if spec["backend"] == "horovod":
    hvd.shutdown()
else:  # gloo's threads abort the process at exit unless the group is torn down first
    dist.barrier()
    dist.destroy_process_group()
"""
