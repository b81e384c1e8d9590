"""``dtrain.check_replicas`` without a cluster: the checksums of one rank, the sentence built from
the ranks' gathered checksums, and what ``--check-replicas`` finds in a namespace (the 2-rank
runs are in test_replicas.py)."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
import torch
from torch import nn

from dtrain_magics.rank.replicas import NothingToCheck, Sums, _lookup, checksums, difference

ADVICE = (
    "broadcast the parameters from rank 0 after building the model "
    "(hvd.broadcast_parameters(model.state_dict(), root_rank=0)) and synchronise buffers"
)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def _changed(sums: Sums, key: str) -> Sums:
    kind, shape, dtype, crc = sums[key]
    return {**sums, key: (kind, shape, dtype, crc + 1)}


def test_every_parameter_and_buffer_gets_its_kind_shape_dtype_and_crc() -> None:
    model = _net()
    sums = checksums(model)
    assert list(sums) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "2.weight",
        "2.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    kind, shape, dtype, crc = sums["0.weight"]
    assert (kind, shape, dtype) == ("parameter", (3, 4), "float32")
    assert crc == zlib.crc32(model[0].weight.detach().numpy().tobytes())
    assert sums["1.num_batches_tracked"][:3] == ("buffer", (), "int64")
    assert checksums(_net()) == sums  # the same values, the same sums
    assert checksums(_net(seed=1))["0.weight"] != sums["0.weight"]


def test_any_dtype_layout_and_mapping_is_read() -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state: dict[str, Any] = {
        "half": torch.ones(5, dtype=torch.bfloat16),
        "scalar": torch.tensor(3),
        "flag": torch.tensor([True, False]),
        "strided": base.t(),  # not contiguous: read in its logical order
        "empty": torch.zeros(0, 3),
        "step": 7,  # not a tensor: not compared
        "optimizer": {"lr": torch.tensor(0.1)},  # nested: compared under a dotted name
    }
    sums = checksums(state, "state")
    assert list(sums) == ["half", "scalar", "flag", "strided", "empty", "optimizer.lr"]
    assert sums["half"][:3] == ("tensor", (5,), "bfloat16")
    assert sums["scalar"][:3] == ("tensor", (), "int64")
    assert sums["strided"][3] == zlib.crc32(base.t().contiguous().numpy().tobytes())
    assert sums["empty"][3] == 0
    grad = nn.Linear(2, 2)
    grad(torch.ones(1, 2)).sum().backward()  # tensors that require grad are read detached
    assert len(checksums(grad)) == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, 2], "dtrain.check_replicas takes a torch.nn.Module or a mapping of names to tensors "
         "(a state_dict), and model is a list"),
        ({"step": 3}, "model holds no tensors, so its replicas cannot be compared"),
    ],
)  # fmt: skip
def test_what_is_not_a_model_is_a_type_error(value: Any, message: str) -> None:
    with pytest.raises(TypeError) as info:
        checksums(value)
    assert str(info.value) == message


def test_the_same_sums_on_every_rank_are_no_difference() -> None:
    sums = checksums(_net())
    assert difference("model", [sums, dict(sums), dict(sums)]) is None
    assert difference("model", [{}, {}]) is None


def test_values_that_differ_name_the_ranks_and_the_first_tensor() -> None:
    sums = checksums(_net())
    other = _changed(_changed(_changed(sums, "2.bias"), "0.weight"), "1.running_mean")
    assert difference("model", [sums, other]) == (
        "found that the replicas differ: rank 1 holds other values than rank 0 in model's "
        f"parameter '0.weight' (the first of 3 tensors that differ); {ADVICE}"
    )
    # four ranks: those that disagree with rank 0, whatever they hold among themselves
    third = _changed(other, "0.weight")
    assert str(difference("model", [sums, other, sums, third])).startswith(
        "found that the replicas differ: ranks 1, 3 hold other values than rank 0 in model's "
        "parameter '0.weight' (the first of 3 tensors that differ)"
    )
    # rank 0 alone differs: every other rank is named
    assert "ranks 1, 2 hold other values than rank 0" in str(difference("m", [other, sums, sums]))


def test_a_buffer_alone_and_the_torch_backend_get_their_own_advice() -> None:
    sums = checksums(_net())
    other = _changed(sums, "1.running_var")
    assert difference("net", [sums, other]) == (
        "found that the replicas differ: rank 1 holds other values than rank 0 in net's buffer "
        "'1.running_var' (the only tensor that differs); synchronise the buffers: broadcast them "
        "from rank 0 (hvd.broadcast_parameters(net.state_dict(), root_rank=0)) or use "
        "torch.nn.SyncBatchNorm"
    )
    assert str(difference("net", [sums, other], "torch")).endswith(
        "; let DistributedDataParallel broadcast the buffers (its default) or use "
        "torch.nn.SyncBatchNorm"
    )
    assert str(difference("net", [sums, _changed(sums, "0.bias")], "torch")).endswith(
        "; wrap the model in DistributedDataParallel, which broadcasts rank 0's parameters"
    )
    state = {"w": ("tensor", (2,), "float32", 1)}
    assert str(difference("sd", [state, _changed(state, "w")])).endswith(
        "sd's tensor 'w' (the only tensor that differs); broadcast the parameters from rank 0 "
        "after building the model (hvd.broadcast_parameters(sd, root_rank=0)) and synchronise "
        "buffers"
    )


def test_tensors_of_other_shapes_or_on_some_ranks_only_are_one_sentence() -> None:
    w = ("parameter", (8, 4), "float32", 1)
    assert difference("model", [{"w": w}, {"w": ("parameter", (4, 8), "float32", 1)}]) == (
        "found that the replicas differ in model's 'w': rank 0 holds it as a float32 parameter "
        "of shape [8, 4] and rank 1 holds it as a float32 parameter of shape [4, 8]; build the "
        "same model, with the same dtypes, on every rank"
    )
    half = ("parameter", (8, 4), "bfloat16", 1)
    assert difference("model", [{"w": w}, {}, {"w": half}, {}]) == (
        "found that the replicas differ in model's 'w': rank 0 holds it as a float32 parameter "
        "of shape [8, 4], ranks 1, 3 do not hold it and rank 2 holds it as a bfloat16 parameter "
        "of shape [8, 4]; build the same model, with the same dtypes, on every rank"
    )
    extra = ("buffer", (3,), "float32", 5)
    assert difference("model", [{"w": w}, {"w": w, "x": extra}]) == (
        "found that the replicas differ in model's 'x': rank 0 does not hold it and rank 1 holds "
        "it as a float32 buffer of shape [3]; build the same model, with the same dtypes, on "
        "every rank"
    )


def test_a_model_on_some_ranks_only_is_one_sentence() -> None:
    sums = checksums(_net())
    assert difference("teacher", [sums, None, sums]) == (
        "found that the replicas differ: rank 1 does not hold a model 'teacher', which ranks 0, 2 "
        "hold"
    )


def test_check_replicas_names_what_it_finds_in_a_namespace() -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    namespace = {"b": b, "a": a, "_hidden": nn.Linear(1, 1), "nn": nn, "n": 3, "sd": {}}
    assert _lookup(namespace, ()) == {"a": a, "b": b}
    assert _lookup(namespace, ("b", "sd")) == {"b": b, "sd": {}}


@pytest.mark.parametrize(
    ("namespace", "names", "message"),
    [
        ({"model": nn.Linear(2, 2)}, ("modle",), "has no model 'modle' to check with "
         "--check-replicas; name a torch.nn.Module or a state_dict bound in the cell, as in "
         "--check-replicas model"),
        ({"model": [1]}, ("model",), "has no model 'model' to check with --check-replicas, only "
         "a list; name a torch.nn.Module or a state_dict bound in the cell, as in "
         "--check-replicas model"),
        ({"x": 1, "_m": nn.Linear(1, 1)}, (), "has no torch.nn.Module to check with "
         "--check-replicas; name a torch.nn.Module or a state_dict bound in the cell, as in "
         "--check-replicas model"),
    ],
)  # fmt: skip
def test_a_namespace_without_the_model_is_one_sentence(
    namespace: dict[str, Any], names: tuple[str, ...], message: str
) -> None:
    with pytest.raises(NothingToCheck) as info:
        _lookup(namespace, names)
    assert str(info.value) == message
