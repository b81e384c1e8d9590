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
learning rate by the number of ranks. `rank`, `size`, `device` and `hvd` are already bound.
`--pull state` copies rank 0's `state` back into this notebook when the cell finishes."""),
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
for epoch in range(15):
    order = torch.randperm(per_rank)
    for start in range(0, per_rank, batch):
        idx = order[start:start + batch]
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x_shard[idx]), y_shard[idx])
        loss.backward()
        optimizer.step()
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


def write(name: str, cells: list) -> None:
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
