"""The example notebooks' model and training loop: digits from scikit-learn, nothing downloaded.

``train_digits`` runs on every rank under ``%%distributed``; it uses Horovod or
``torch.distributed`` (DDP), whichever backend the cell runs with, and reports to the dashboard.
"""

from __future__ import annotations

import time
from typing import Any


def load_digits_split() -> tuple[Any, Any, Any, Any]:
    """Digits as 1×8×8 images in [0, 1], split into train and held-out test sets."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    return tuple(train_test_split(x, y, test_size=0.25, random_state=0, stratify=y))


def make_model() -> Any:
    """A small CNN for 8×8 digits."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def accuracy(model: Any, x: Any, y: Any) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        value = (model(x).argmax(dim=1) == y).float().mean().item()
    model.train()
    return float(value)


def train_digits(epochs: int = 10, batch: int = 32, lr: float = 1e-3) -> dict[str, Any]:
    """Train the CNN data-parallel on this rank's shard; return rank 0's results.

    Logs ``loss``, ``samples`` every step and ``test_accuracy`` every epoch with ``dtrain.log``;
    the learning rate is scaled by the number of ranks.
    """
    import torch
    import torch.nn.functional as F

    import dtrain_magics.rank as dtrain

    ctx = dtrain.context()
    rank, size, device = ctx.rank, ctx.size, ctx.device
    x_train, x_test, y_train, y_test = load_digits_split()
    per_rank = len(x_train) // size  # equal shards keep ranks in step
    x_shard = x_train[rank * per_rank : (rank + 1) * per_rank].to(device)
    y_shard = y_train[rank * per_rank : (rank + 1) * per_rank].to(device)
    x_test, y_test = x_test.to(device), y_test.to(device)

    torch.manual_seed(0)
    model = make_model().to(device)
    optimizer, forward = _distributed(ctx.backend, model, lr * size, device)
    started, step = time.time(), 0
    for _epoch in dtrain.progress(range(epochs), desc="epoch"):
        order = torch.randperm(per_rank)
        for start in range(0, per_rank, batch):
            idx = order[start : start + batch]
            optimizer.zero_grad()
            loss = F.cross_entropy(forward(x_shard[idx]), y_shard[idx])
            loss.backward()
            optimizer.step()
            dtrain.log(step=step, loss=loss.item(), samples=len(idx))
            step += 1
        dtrain.log(step=step, test_accuracy=accuracy(model, x_test, y_test))
    return {
        "state": {k: v.cpu() for k, v in model.state_dict().items()},
        "test_accuracy": accuracy(model, x_test, y_test),
        "seconds": time.time() - started,
        "ranks": size,
        "backend": ctx.backend,
    }


def _distributed(backend: str, model: Any, lr: float, device: Any) -> tuple[Any, Any]:
    """The optimizer and forward function for ``backend``: Horovod, or DDP."""
    import torch

    if backend == "horovod":
        import horovod.torch as hvd

        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        optimizer = hvd.DistributedOptimizer(
            torch.optim.Adam(model.parameters(), lr=lr), named_parameters=model.named_parameters()
        )
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        return optimizer, model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=ids)  # broadcasts rank 0's parameters
    return torch.optim.Adam(ddp.parameters(), lr=lr), ddp
