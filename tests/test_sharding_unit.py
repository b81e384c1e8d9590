"""``dtrain.parameter_share``: what a rank holds, counted without a cluster (the sharded case
runs on 2 real ranks in notebooks/06-model-parallel.ipynb, which asserts the shares)."""

from __future__ import annotations

import torch
from torch import nn

import dtrain_magics.rank as dtrain


def test_a_whole_model_counts_every_parameter_once() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert dtrain.parameter_share(model) == {"numel": 4 * 3 + 3 + 3 * 2 + 2, "bytes": 23 * 4}
    tied = nn.Sequential(model[0], model[0])  # one layer used twice
    assert dtrain.parameter_share(tied)["numel"] == 15
    half = nn.Linear(4, 3).to(torch.float16)
    assert dtrain.parameter_share(half) == {"numel": 15, "bytes": 30}


def test_a_sharded_parameter_counts_its_local_shard() -> None:
    class Shard(nn.Parameter):
        """Stands for a DTensor: the whole tensor's size, but a smaller local part."""

        def to_local(self) -> torch.Tensor:
            return self.data[: len(self.data) // 2]

    module = nn.Module()
    module.weight = Shard(torch.zeros(10, 4))
    assert dtrain.parameter_share(module) == {"numel": 20, "bytes": 80}
