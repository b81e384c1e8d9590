"""Write the example notebooks from their source here (kept as code so diffs stay readable).

Usage: python scripts/make_notebooks.py   (rewrites notebooks/*.ipynb, without outputs)
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

QUICKSTART = [
    new_markdown_cell("""# Quickstart: train on two Horovod ranks from this notebook

This notebook trains a small convolutional network on scikit-learn's bundled handwritten
digits (no download) with **data-parallel training on 2 ranks**. `%%distributed` runs a cell
on every rank of a warm [ipyparallel](https://ipyparallel.readthedocs.io) cluster started
under MPI, with [Horovod](https://horovod.ai) already initialised on each rank.

On a laptop the two ranks are two processes on this machine; on GPU nodes the same cells
pin one GPU per local rank (`device` becomes `cuda:<local_rank>`)."""),
    new_code_cell("%load_ext dtrain_magics"),
    new_markdown_cell("""## Data and model, defined once in the notebook

Both functions are sent to every rank with `--push`, and reused here to evaluate the model
the ranks trained. Each rank reads its own shard of the training set."""),
    new_code_cell('''def load_digits_split():
    """Digits as 1×8×8 images in [0, 1], split into train and held-out test sets."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def make_model():
    """A small CNN for 8×8 digits."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )'''),
    new_markdown_cell("""## Train on every rank

The usual Horovod recipe: broadcast the initial parameters from rank 0, wrap the optimizer in
`hvd.DistributedOptimizer` (gradients are averaged across ranks with allreduce), and scale the
learning rate by the number of ranks. `rank`, `size`, `device`, `hvd` and `dtrain` are already
bound. `dtrain.progress` gives each rank a progress bar (with the ETA) and `dtrain.log` a chart
per metric (with steps/s and samples/s) in the live dashboard; when the run ends, a record of
it stays in the notebook. `--pull state` copies rank 0's `state` back into this notebook."""),
    new_code_cell("""%%distributed --nodes 2 --push load_digits_split,make_model --pull state
import torch
import torch.nn.functional as F

x_train, x_test, y_train, y_test = load_digits_split()
per_rank = len(x_train) // size                      # equal shards keep ranks in step
x_shard = x_train[rank * per_rank:(rank + 1) * per_rank].to(device)
y_shard = y_train[rank * per_rank:(rank + 1) * per_rank].to(device)

torch.manual_seed(0)
model = make_model().to(device)
hvd.broadcast_parameters(model.state_dict(), root_rank=0)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3 * size)
optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
hvd.broadcast_optimizer_state(optimizer, root_rank=0)

batch = 32
for epoch in dtrain.progress(range(15), desc="epoch"):    # a progress bar per rank, ETA
    order = torch.randperm(per_rank)
    for start in range(0, per_rank, batch):
        idx = order[start:start + batch]
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x_shard[idx]), y_shard[idx])
        loss.backward()
        optimizer.step()
        dtrain.log(loss=loss.item(), samples=len(idx))    # a loss chart, samples/s
    mean_loss = hvd.allreduce(loss.detach(), name="epoch_loss").item()
    if rank == 0 and (epoch + 1) % 5 == 0:
        print(f"epoch {epoch + 1}: loss {mean_loss:.3f}")

state = {name: tensor.cpu() for name, tensor in model.state_dict().items()}"""),
    new_markdown_cell("""## Evaluate the trained model here, in the notebook"""),
    new_code_cell('''import torch

_, x_test, _, y_test = load_digits_split()
model = make_model()
model.load_state_dict(state)
model.eval()
with torch.no_grad():
    accuracy = (model(x_test).argmax(dim=1) == y_test).float().mean().item()
print(f"held-out accuracy: {accuracy:.3f}")
assert accuracy >= 0.95, f"expected at least 0.95 held-out accuracy, got {accuracy:.3f}"'''),
    new_markdown_cell("""## What to try next

- `%dtrain status` shows the warm cluster; `%dtrain stop` stops it.
- Run the training cell again with `--nodes 4`: the cluster restarts with 4 ranks.
- Add `--timeout 60` to bound a cell's run time; an error on any rank stops all of them.
- Use `--backend torch` to run the same cell under `torch.distributed` (wrap the model in
  `DistributedDataParallel` instead of the Horovod optimizer)."""),
]


SCALE = [
    new_markdown_cell("""# Configure once, then scale from 1 to 4 ranks

`%dtrain config` shows the settings form: choose nodes, processes per node, device, backend and
launcher, then **Apply** (defaults for later cells in this kernel) or **Save** (also for new
kernels). Flags on a cell still win over the form.

Below, the same training runs at 1, 2 and 4 ranks, and the run records (`dtrain_magics.runs()`)
give throughput and time-to-accuracy for a plot. On a laptop the ranks share its cores, so
more ranks are not faster here; on a cluster each rank has its own GPU or node."""),
    new_code_cell("%load_ext dtrain_magics\n%dtrain config"),
    new_markdown_cell("""## The same training at 1, 2 and 4 ranks

`train_digits` (in `dtrain_magics.examples`) trains a small CNN on scikit-learn's digits with
whichever backend the cell runs, scaling the learning rate by the number of ranks and logging
loss, samples and held-out accuracy to the dashboard."""),
    new_code_cell(
        "%%distributed --nodes 1\nfrom dtrain_magics.examples import train_digits\n"
        "result = train_digits(epochs=6)"
    ),
    new_code_cell(
        "%%distributed --nodes 2\nfrom dtrain_magics.examples import train_digits\n"
        "result = train_digits(epochs=6)"
    ),
    new_code_cell(
        "%%distributed --nodes 2 --procs-per-node 2\n"
        "from dtrain_magics.examples import train_digits\nresult = train_digits(epochs=6)"
    ),
    new_markdown_cell("""## Throughput and time-to-accuracy from the run records"""),
    new_code_cell('''import dtrain_magics
import matplotlib.pyplot as plt


def time_to_accuracy(record, target=0.9):
    """Seconds from the first logged point until rank 0's test accuracy reaches the target."""
    points = [m for m in record.metrics if m["rank"] == 0]
    start = min(m["time"] for m in points)
    hits = [m["time"] for m in points if m["name"] == "test_accuracy" and m["value"] >= target]
    return min(hits) - start if hits else float("nan")


def samples_per_second(record):
    """All ranks' samples divided by the time the ranks spent logging them."""
    rows = [m for m in record.metrics if m["name"] == "samples"]
    span = max(m["time"] for m in rows) - min(m["time"] for m in rows)
    return sum(m["value"] for m in rows) / span


runs = [r for r in dtrain_magics.runs() if r.status == "succeeded"][-3:]
ranks = [len(r.ranks) for r in runs]
throughput = [samples_per_second(r) for r in runs]
tta = [time_to_accuracy(r) for r in runs]
for n, s, t in zip(ranks, throughput, tta):
    print(f"{n} ranks: {s:8.0f} samples/s, time to 90% test accuracy {t:5.1f} s")

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
left.bar([str(n) for n in ranks], throughput)
left.set(title="throughput", xlabel="ranks", ylabel="samples/s")
right.bar([str(n) for n in ranks], tta)
right.set(title="time to 90% test accuracy", xlabel="ranks", ylabel="seconds")
plt.tight_layout()
assert ranks == [1, 2, 4] and all(s > 0 for s in throughput)'''),
    new_markdown_cell("""## What to try next

- Change the defaults in the form and press **Apply**; run a cell without flags.
- Press **Save** and restart the kernel: `%load_ext dtrain_magics` loads the saved settings.
- On a Slurm cluster, pick the `slurm` launcher in the form (see `05-gpu-cluster.ipynb`)."""),
]

BACKENDS = [
    new_markdown_cell("""# Horovod and `torch.distributed` side by side

The same model and data under `--backend horovod` (Horovod's `DistributedOptimizer` averages
gradients with allreduce over MPI) and `--backend torch` (`DistributedDataParallel` over gloo on
CPU, NCCL on GPUs; the rendezvous is arranged over MPI, so no `MASTER_ADDR` to set).
`train_digits` picks the right wrapper for the backend the cell runs with."""),
    new_code_cell("%load_ext dtrain_magics"),
    new_code_cell(
        "%%distributed --nodes 2 --backend horovod --pull result\n"
        "from dtrain_magics.examples import train_digits\n"
        "result = train_digits(epochs=8)\nprint(type(hvd).__name__, 'ranks', size)"
    ),
    new_code_cell("horovod_result = result"),
    new_code_cell(
        "%%distributed --nodes 2 --backend torch --pull result\n"
        "from dtrain_magics.examples import train_digits\n"
        "result = train_digits(epochs=8)\nprint(dist.get_backend(), 'ranks', size)"
    ),
    new_code_cell("""torch_result = result
for r in (horovod_result, torch_result):
    print(f"{r['backend']:8s} {r['ranks']} ranks: test accuracy {r['test_accuracy']:.3f} "
          f"in {r['seconds']:.1f} s")
assert min(horovod_result["test_accuracy"], torch_result["test_accuracy"]) >= 0.9"""),
    new_markdown_cell("""## What to try next

- Both backends give the same accuracy within noise; the difference is in how gradients
  travel (MPI for Horovod here, gloo or NCCL for DDP).
- Switch back and forth: each cell re-initialises the backend on the warm cluster."""),
]

GPU = [
    new_markdown_cell("""# The same training on GPU nodes

This notebook runs unchanged on a laptop CPU and on GPU nodes. `--device auto` gives every rank
`cuda:<local_rank>` (that GPU made current) where there are GPUs, and the CPU elsewhere; the
model and batches go to `device`, and Horovod or NCCL do the rest."""),
    new_code_cell("%load_ext dtrain_magics"),
    new_code_cell(
        "%%distributed --nodes 2 --device auto --pull result\n"
        "from dtrain_magics.examples import train_digits\n"
        "print('rank', rank, 'on', device)\nresult = train_digits(epochs=8)"
    ),
    new_code_cell("""print(f"test accuracy {result['test_accuracy']:.3f} in {result['seconds']:.1f} s")
assert result["test_accuracy"] >= 0.9"""),
    new_markdown_cell("""## What changes on a GPU cluster

1. Install with the cluster's torch build: `TORCH_SPEC="torch==2.11.0" make setup` (Horovod is
   rebuilt against it once and cached).
2. Run on GPU nodes through Slurm — one job, ranks started by `mpiexec` inside it, one GPU per
   task:

   ```
   %%distributed --launcher slurm --nodes 2 --procs-per-node 4 --device cuda --partition gpu --time-limit 01:00:00
   from dtrain_magics.examples import train_digits
   result = train_digits(epochs=8)
   ```

   or with an MPI hostfile (`--launcher mpi --hostfile hosts`), or connect to a cluster you
   started yourself (`--launcher profile --profile NAME`).
3. `--device cuda` fails at once, in one sentence, if a rank sees no GPU; `--device auto` falls
   back to the CPU.

## What to try next

- Set the launcher and partition once in `%dtrain config` and **Save** them.
- Use `--backend torch` for NCCL-based DDP."""),
]

TRAIN_WITH_CHECKPOINTS = """%%distributed --nodes 2 --max-restarts 2 --check-replicas model --push CHECKPOINT,EPOCHS,crash_at_epoch --pull resumed_from,history,state
import os, signal
import torch
import torch.nn.functional as F
from dtrain_magics.examples import accuracy, load_digits_split, make_model

x_train, x_test, y_train, y_test = load_digits_split()
per_rank = len(x_train) // size
x, y = x_train[rank * per_rank:(rank + 1) * per_rank].to(device), y_train[rank * per_rank:(rank + 1) * per_rank].to(device)

torch.manual_seed(0)
model = make_model().to(device)
optimizer = hvd.DistributedOptimizer(
    torch.optim.Adam(model.parameters(), lr=0.002 * size), named_parameters=model.named_parameters()
)

saved = dtrain.load_checkpoint(CHECKPOINT)  # read on rank 0, sent to every rank
if saved is None:
    resumed_from, history = 0, []
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
else:
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    resumed_from, history = saved["epoch"] + 1, saved["history"]

for epoch in dtrain.progress(range(resumed_from, EPOCHS), desc="epoch"):
    if epoch == crash_at_epoch and rank == 1 and not os.path.exists(CHECKPOINT + ".lost"):
        open(CHECKPOINT + ".lost", "w").close()  # once: a preempted node, rank 1 vanishes
        os.kill(os.getpid(), signal.SIGKILL)
    order, losses = torch.randperm(per_rank), []
    for start in range(0, per_rank, 32):
        idx = order[start:start + 32]
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    mean_loss = sum(losses) / len(losses)
    history.append((epoch, mean_loss))
    dtrain.log(step=epoch, loss=mean_loss, test_accuracy=accuracy(model, x_test.to(device), y_test.to(device)))
    dtrain.checkpoint(
        {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history},
        CHECKPOINT,
    )
state = {k: v.cpu() for k, v in model.state_dict().items()}
print(f"rank {rank}: trained epochs {resumed_from} to {EPOCHS - 1}")"""

CHECKPOINTS = [
    new_markdown_cell("""# Checkpoint and restart: a run that loses a rank finishes by itself

Long training runs get interrupted: a node is preempted, a rank runs out of memory or
segfaults. This notebook trains the digits CNN on 2 ranks with a checkpoint after every epoch,
**kills rank 1 in the middle of training**, and the cell still finishes: with
`--max-restarts 2`, when a rank dies the cluster is restarted and the cell runs again, and a
cell written to resume from its last checkpoint carries on from there.

- `dtrain.checkpoint(obj, path)`: rank 0 writes atomically (temporary file, fsync, rename), the
  other ranks wait for it, so a crash leaves the old checkpoint or the new one, never half a file.
- `dtrain.load_checkpoint(path)`: rank 0 reads, every rank gets the same object (`None` when
  there is no checkpoint yet). It uses torch's safe loader (`weights_only=True`).
- `--max-restarts N`: up to N restarts when a rank **dies** (killed, out of memory, segfault,
  lost node, Slurm preemption). An exception raised by the cell, `--timeout` and Stop are not
  retried: running the same code again would fail the same way."""),
    new_code_cell("%load_ext dtrain_magics"),
    new_code_cell("""import os
import tempfile

CHECKPOINT = os.path.join(tempfile.mkdtemp(prefix="dtrain-checkpoint-"), "digits.pt")
EPOCHS = 10
crash_at_epoch = 4  # simulate losing rank 1 once, at the start of epoch 4
CHECKPOINT"""),
    new_markdown_cell("""## Rank 1 dies in epoch 4; the cell restarts and resumes

Watch the dashboard: at epoch 4 the header says the run is starting its cluster again, a
line says which attempt ended, after how long and why (rank 1 killed by SIGKILL), and the
progress bars carry on from epoch 4. Rank namespaces start empty on the new cluster, so
everything the cell needs is in the cell or pushed with `--push` (sent again on each attempt).
`--check-replicas model` then checks that both ranks ended with the same weights (a checksum
of every parameter and buffer, compared across ranks)."""),
    new_code_cell(TRAIN_WITH_CHECKPOINTS),
    new_code_cell("""for attempt in _dtrain.attempts:
    print(f"attempt {attempt['attempt']}: {attempt['status']}, {attempt['cause']}")
print("the last attempt resumed from epoch", resumed_from)
assert len(_dtrain.attempts) == 2 and "rank 1 died" in _dtrain.attempts[0]["cause"]
assert resumed_from == crash_at_epoch, resumed_from"""),
    new_markdown_cell("""## Nothing is lost but the epoch in progress

The loss history carries on from the checkpoint of epoch 3, and the model is as good as one
trained without interruption."""),
    new_code_cell("""from dtrain_magics.examples import accuracy, load_digits_split, make_model

for epoch, loss in history:
    print(f"epoch {epoch}: mean loss {loss:.4f}")
assert [e for e, _ in history] == list(range(EPOCHS))

model = make_model()
model.load_state_dict(state)
_, x_test, _, y_test = load_digits_split()
held_out = accuracy(model, x_test, y_test)
print(f"held-out accuracy after the restarted run: {held_out:.3f}")
assert held_out >= 0.95"""),
    new_markdown_cell("""## What to try next

- Run the training cell without `--max-restarts`: it fails within seconds naming rank 1 and
  the cause, and running it again resumes from the checkpoint the same way, by hand.
- Press the dashboard's **Stop** button in the middle of a run: Stop is never retried; run the
  cell again to resume.
- Set **Max restarts** once in `%dtrain config` for every cell of the notebook.
- Checkpoint every N steps instead of every epoch for long epochs; keep the step in the
  checkpoint and skip the batches already done.
- On a shared cluster, put `CHECKPOINT` on storage every node sees (rank 0 writes it)."""),
]

MODEL_PARALLEL = [
    new_markdown_cell("""# Model parallelism: one model split across ranks

The other notebooks train with **data parallelism**: every rank holds a full copy of the model
and of its optimizer state, takes its own share of each batch, and the ranks average their
gradients. That scales the data, but each rank must still fit the whole model.

**Model parallelism** splits the model itself across ranks. This notebook trains the same small
model on the same batches three ways on 2 ranks, with `--backend torch` (`torch.distributed`:
gloo on CPU, NCCL on GPUs), and shows what each rank holds:

1. **Data parallel** (`DistributedDataParallel`): the baseline, a full copy per rank.
2. **Pipeline parallel** (`torch.distributed.pipelining`): rank 0 holds the first layers, rank 1
   the last ones; each batch is cut into micro-batches that flow through the stages, so both
   ranks compute at once (the GPipe schedule).
3. **Sharded data parallel** (FSDP2, `torch.distributed.fsdp.fully_shard`): every layer's
   parameters, gradients and optimizer state are split across the ranks; a layer's full
   parameters are gathered just before it computes and freed right after.

Nothing is downloaded: the data are scikit-learn's bundled digits."""),
    new_code_cell("%load_ext dtrain_magics"),
    new_markdown_cell("""## The model and the schedule, defined once

`make_mlp` seeds torch, so every rank and every run starts from the same weights; `batches`
gives the same batches in the same order to every run. Both are sent to the ranks with `--push`
and used here to evaluate what the ranks trained."""),
    new_code_cell('''EPOCHS, BATCH, MICRO_BATCHES, LR = 6, 128, 4, 2e-3


def make_mlp(hidden=256):
    """A 4-layer MLP for the 8×8 digits (64 pixels in, 10 classes out)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def batches(n, epoch):
    """Index tensors of the epoch's batches of BATCH samples, shuffled the same way everywhere."""
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
    return [order[i:i + BATCH] for i in range(0, n - BATCH + 1, BATCH)]


full = make_mlp()
print(full)
print(f"{sum(p.numel() for p in full.parameters()):,} parameters")'''),
    new_markdown_cell("""## 1. Data parallel: a full copy on every rank

Each rank takes its half of every batch; DDP averages the gradients with allreduce, so every
copy takes the same step. `dtrain.parameter_share(model)` counts the parameters this rank holds
(for a sharded model, only its own shards)."""),
    new_code_cell("""%%distributed --nodes 2 --backend torch --push make_mlp,batches,EPOCHS,BATCH,LR --pull result
import time
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from dtrain_magics.examples import load_digits_split

x_train, x_test, y_train, y_test = load_digits_split()
x_train = x_train.flatten(1)
model = make_mlp().to(device)
share = dtrain.parameter_share(model)                   # the whole model, on every rank
ddp = DistributedDataParallel(model)
optimizer = torch.optim.Adam(ddp.parameters(), lr=LR)
half = BATCH // size
started = time.time()                                   # the training loop's time
for epoch in dtrain.progress(range(EPOCHS), desc="epoch"):
    for idx in batches(len(x_train), epoch):
        idx = idx[rank * half:(rank + 1) * half]       # this rank's half of the batch
        optimizer.zero_grad()
        loss = F.cross_entropy(ddp(x_train[idx].to(device)), y_train[idx].to(device))
        loss.backward()                                 # gradients averaged across ranks
        optimizer.step()
    dtrain.log(step=epoch, loss=loss.item())

shares = [None] * size
dist.all_gather_object(shares, share)
result = {"shares": shares, "seconds": time.time() - started,
          "state": {k: v.cpu() for k, v in model.state_dict().items()}}"""),
    new_code_cell("data_parallel = result"),
    new_markdown_cell("""## 2. Pipeline parallel: the first layers on rank 0, the last ones on rank 1

Slicing the `nn.Sequential` gives each rank its stage (the slices keep the layer names, so the
two halves' weights fit back into one model). `PipelineStage` wraps a rank's stage and
`ScheduleGPipe` runs a whole batch as `MICRO_BATCHES` micro-batches: rank 0 feeds the inputs and
sends activations on, rank 1 computes the loss and sends gradients back. Each rank's optimizer
updates only its own layers."""),
    new_code_cell("""%%distributed --nodes 2 --backend torch --push make_mlp,batches,EPOCHS,BATCH,MICRO_BATCHES,LR --pull result
import time
import torch
import torch.nn.functional as F
from torch.distributed.pipelining import PipelineStage, ScheduleGPipe
from dtrain_magics.examples import load_digits_split

x_train, x_test, y_train, y_test = load_digits_split()
x_train = x_train.flatten(1)
full = make_mlp()
layers = full[:4] if rank == 0 else full[4:]          # 2 Linear layers per stage
layers.to(device)
share = dtrain.parameter_share(layers)                 # only this stage's layers
stage = PipelineStage(layers, stage_index=rank, num_stages=size, device=device)
schedule = ScheduleGPipe(stage, n_microbatches=MICRO_BATCHES, loss_fn=F.cross_entropy)
optimizer = torch.optim.Adam(layers.parameters(), lr=LR)
first, last = rank == 0, rank == size - 1
started = time.time()                                   # the training loop's time
for epoch in dtrain.progress(range(EPOCHS), desc="epoch"):
    for idx in batches(len(x_train), epoch):          # every batch whole, through both stages
        optimizer.zero_grad()
        losses = []
        if first:
            schedule.step(x_train[idx].to(device))
        elif last:
            schedule.step(target=y_train[idx].to(device), losses=losses)
        optimizer.step()
    if last:
        dtrain.log(step=epoch, loss=torch.stack(losses).mean().item())

shares, states = [None] * size, [None] * size
dist.all_gather_object(shares, share)
dist.all_gather_object(states, {k: v.cpu() for k, v in layers.state_dict().items()})
result = {"shares": shares, "seconds": time.time() - started,
          "state": {k: v for part in states for k, v in part.items()}}"""),
    new_code_cell("pipeline = result"),
    new_markdown_cell("""## 3. Sharded data parallel (FSDP2): every layer split across the ranks

`fully_shard` on each Linear layer and then on the whole model turns every parameter into a
`DTensor` of which each rank stores one half. Training looks like data parallelism (each rank
its half of every batch), but before a layer computes its full parameters are all-gathered,
and its gradients are reduce-scattered back into shards; the optimizer only ever sees this
rank's shards, so its state is split too. `get_model_state_dict` gathers the full weights on
rank 0 at the end."""),
    new_code_cell("""%%distributed --nodes 2 --backend torch --push make_mlp,batches,EPOCHS,BATCH,LR --pull result
import time
import torch
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from dtrain_magics.examples import load_digits_split

x_train, x_test, y_train, y_test = load_digits_split()
x_train = x_train.flatten(1)
model = make_mlp().to(device)
for layer in model:
    if isinstance(layer, torch.nn.Linear):
        fully_shard(layer)                              # one all-gather per layer, as it runs
fully_shard(model)
share = dtrain.parameter_share(model)                   # this rank's shards only
optimizer = torch.optim.Adam(model.parameters(), lr=LR)
half = BATCH // size
started = time.time()                                   # the training loop's time
for epoch in dtrain.progress(range(EPOCHS), desc="epoch"):
    for idx in batches(len(x_train), epoch):
        idx = idx[rank * half:(rank + 1) * half]
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x_train[idx].to(device)), y_train[idx].to(device))
        loss.backward()                                 # gradients reduce-scattered into shards
        optimizer.step()
    dtrain.log(step=epoch, loss=loss.item())

shares = [None] * size
dist.all_gather_object(shares, share)
state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
result = {"shares": shares, "seconds": time.time() - started, "state": state}  # state: on rank 0"""),
    new_code_cell("sharded = result"),
    new_markdown_cell("""## What each rank held, and what each run learned

The weights each run trained are loaded into one full model here and evaluated on the held-out
digits. The three runs take the same steps on the same batches from the same initial weights,
so they learn the same model (up to rounding); what differs is where the parameters live and
what travels between the ranks. Training memory per rank is about four times what a rank
holds: the weights, their gradients and Adam's two moments."""),
    new_code_cell("""from dtrain_magics.examples import accuracy, load_digits_split

_, x_test, _, y_test = load_digits_split()
x_test = x_test.flatten(1)
total = sum(p.numel() for p in make_mlp().parameters())
print(f"{'':24s}{'rank 0 holds':>22s}{'rank 1 holds':>22s}{'accuracy':>10s}{'time':>8s}")
runs = {"data parallel (DDP)": data_parallel, "pipeline (2 stages)": pipeline,
        "sharded (FSDP2)": sharded}
for name, run in runs.items():
    held = [f"{s['numel']:,} ({s['bytes'] / 1024:.0f} KiB)" for s in run["shares"]]
    model = make_mlp()
    model.load_state_dict(run["state"])
    run["accuracy"] = accuracy(model, x_test, y_test)
    print(f"{name:24s}{held[0]:>22s}{held[1]:>22s}{run['accuracy']:>10.3f}{run['seconds']:>7.1f}s")

assert all(s["numel"] == total for s in data_parallel["shares"])      # a full copy each
assert sum(s["numel"] for s in pipeline["shares"]) == total           # the layers split
assert sum(s["numel"] for s in sharded["shares"]) == total            # every tensor split
assert max(s["numel"] for s in sharded["shares"]) <= total // 2 + 64
assert min(run["accuracy"] for run in runs.values()) >= 0.9"""),
    new_markdown_cell("""## When each fits

- **Data parallel** when the model, its gradients and optimizer state fit on one device: it is
  the simplest and, with a fast allreduce, the fastest. Most models train this way.
- **Sharded data parallel (FSDP)** when they do not fit, but one layer at a time does: memory per
  rank falls with the number of ranks, at the price of gathering every layer's weights in each
  forward and backward pass (more traffic than DDP's one allreduce of the gradients).
- **Pipeline parallel** when a model is deep and the links between devices are slow (across
  nodes): only activations at the stage boundaries travel, but the stages idle while the
  pipeline fills and drains; more micro-batches make that bubble smaller.

Large models combine them (FSDP within a node, pipeline stages across nodes, tensor parallelism
inside layers). On GPU nodes these cells run unchanged: `device` is each rank's GPU and
`torch.distributed` uses NCCL."""),
]


def write(name: str, cells: list) -> None:
    for index, cell in enumerate(cells):  # stable ids: a rewrite changes only what changed
        cell.id = f"{name.split('-')[0]}-{index:02d}"
    nb = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
                "name": "python3",
            },
            "language_info": {"name": "python"},
        },
    )
    nbformat.validate(nb)
    path = NOTEBOOKS / name
    path.write_text(nbformat.writes(nb) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    NOTEBOOKS.mkdir(exist_ok=True)
    write("01-quickstart.ipynb", QUICKSTART)
    write("02-configure-and-scale.ipynb", SCALE)
    write("03-horovod-and-torch-ddp.ipynb", BACKENDS)
    write("04-checkpoint-and-resume.ipynb", CHECKPOINTS)
    write("05-gpu-cluster.ipynb", GPU)
    write("06-model-parallel.ipynb", MODEL_PARALLEL)
