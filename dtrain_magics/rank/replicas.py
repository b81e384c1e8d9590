"""Whether every rank holds the same model: a CRC-32 per tensor, one allgather, one sentence.

``check_replicas`` (``dtrain.check_replicas``) and ``check_namespace`` (``--check-replicas``)
gather every rank's checksums over MPI's world (either backend); when they differ, every rank
raises the same sentence. A rank's own failure to find or read a model travels in the same
gather, so no rank waits for one that raised."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from .collectives import mpi_wait
from .subset import _user_frames, world_comm
from .tracebacks import rebuild, render

Entry = tuple[str, tuple[int, ...], str, int]  # kind ("parameter", "buffer", "tensor"), shape,
Sums = dict[str, Entry]  # dtype and CRC-32 of one tensor; a model's entries by name, in order


class _Phrased(RuntimeError):
    """An error whose message reads on from "rank N"; its traceback ends at the user's call,
    and shows nothing when ``--check-replicas`` made the call (the message says it all)."""

    by_flag = False

    def _render_traceback_(self) -> list[str]:
        if self.by_flag:
            return []
        return render(self, rebuild(_user_frames(self.__traceback__)))


class ReplicasDiffer(_Phrased):
    """The ranks hold different models (raised on every rank, with the same sentence)."""


class NothingToCheck(_Phrased):
    """``--check-replicas`` found no model to check on this rank."""


_FLAG = "--check-replicas"
_NAME = "name a torch.nn.Module or a state_dict bound in the cell, as in --check-replicas model"


def _ranks(ranks: Sequence[int], verb: str) -> str:
    """``rank 1 holds`` or ``ranks 1, 3 hold`` (``verb`` in the singular)."""
    if len(ranks) == 1:
        return f"rank {ranks[0]} {verb}"
    plural = {"holds": "hold", "does": "do"}.get(verb, verb)
    return f"ranks {', '.join(map(str, ranks))} {plural}"


def _advice(name: str, kind: str, backend: str) -> str:
    """What to do about a tensor of ``kind`` that differs, in ``backend``'s words."""
    sync = "or use torch.nn.SyncBatchNorm"
    if backend == "torch":
        if kind == "buffer":
            return f"let DistributedDataParallel broadcast the buffers (its default) {sync}"
        return "wrap the model in DistributedDataParallel, which broadcasts rank 0's parameters"
    source = name if kind == "tensor" else f"{name}.state_dict()"
    broadcast = f"hvd.broadcast_parameters({source}, root_rank=0)"
    if kind == "buffer":
        return f"synchronise the buffers: broadcast them from rank 0 ({broadcast}) {sync}"
    after = "after building the model"
    return f"broadcast the parameters from rank 0 {after} ({broadcast}) and synchronise buffers"


def difference(name: str, sums: Sequence[Sums | None], backend: str = "horovod") -> str | None:
    """The sentence, after "rank N", saying how the ranks' checksums of ``name`` differ (rank by
    rank in ``sums``, None where a rank has no such model); None when they hold the same."""
    have, lack = ([r for r, s in enumerate(sums) if (s is None) == b] for b in (False, True))
    if lack:
        who = f"{_ranks(lack, 'does')} not hold a model {name!r}, which {_ranks(have, 'holds')}"
        return f"found that the replicas differ: {who}"
    known = [s for s in sums if s is not None]
    for key in dict.fromkeys(key for s in known for key in s):
        layouts = [s[key][:3] if key in s else None for s in known]
        if any(layout != layouts[0] for layout in layouts):
            groups: dict[tuple[Any, ...] | None, list[int]] = {}
            for rank, layout in enumerate(layouts):
                groups.setdefault(layout, []).append(rank)
            parts = [
                f"{_ranks(ranks, 'does')} not hold it"
                if layout is None
                else f"{_ranks(ranks, 'holds')} it as a {layout[2]} {layout[0]} of shape "
                f"{list(layout[1])}"
                for layout, ranks in groups.items()
            ]
            held = ", ".join(parts[:-1]) + " and " + parts[-1]
            return (
                f"found that the replicas differ in {name}'s {key!r}: {held}; build the same "
                "model, with the same dtypes, on every rank"
            )
    differing = [k for k in known[0] if any(s[k] != known[0][k] for s in known)]
    if not differing:
        return None
    first, n = differing[0], len(differing)
    kind = known[0][first][0]
    others = [r for r, s in enumerate(known) if s[first] != known[0][first]]
    count = f"the first of {n} tensors that differ" if n > 1 else "the only tensor that differs"
    return (
        f"found that the replicas differ: {_ranks(others, 'holds')} other values than rank 0 in "
        f"{name}'s {kind} {first!r} ({count}); {_advice(name, kind, backend)}"
    )


def _tensors(obj: Any, name: str) -> list[tuple[str, str, Any]]:
    """(name, kind, tensor) of every parameter and buffer of a module, or tensor of a mapping."""
    import torch

    if isinstance(obj, torch.nn.Module):
        params = [(k, "parameter", t) for k, t in obj.named_parameters()]
        return params + [(k, "buffer", t) for k, t in obj.named_buffers()]
    if not isinstance(obj, Mapping):
        raise TypeError(
            "dtrain.check_replicas takes a torch.nn.Module or a mapping of names to tensors "
            f"(a state_dict), and {name} is a {type(obj).__name__}"
        )
    found: list[tuple[str, str, Any]] = []
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            found.append((str(key), "tensor", value))
        elif isinstance(value, Mapping):
            found += [(f"{key}.{k}", kind, t) for k, kind, t in _tensors(value, name)]
    return found


def checksums(obj: Any, name: str = "model") -> Sums:
    """This rank's entry for every tensor of ``obj``: the CRC-32 of its bytes, read on the CPU
    without a copy where it lives there; a DTensor sharded across ranks (FSDP) is left out."""
    import torch

    tensors = _tensors(obj, name)
    if not tensors and isinstance(obj, Mapping):
        raise TypeError(f"{name} holds no tensors, so its replicas cannot be compared")
    sums: Sums = {}
    for key, kind, tensor in tensors:
        if not all(p.is_replicate() for p in getattr(tensor, "placements", ())):
            continue  # its ranks hold different shards by design
        data = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        data = data.detach().cpu().resolve_conj().resolve_neg().contiguous()
        crc = zlib.crc32(data.view(-1).view(torch.uint8).numpy())
        sums[key] = (kind, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."), crc)
    return sums


def _compare(find: Any) -> dict[str, int]:
    """Checksum the models ``find()`` returns (name → object), gather, and raise on every rank
    if the ranks differ or one of them failed; the number of tensors checked per model."""
    from . import rank_context

    comm = world_comm()  # a cell on some of the ranks fails here, at once
    error: Exception | None = None
    try:
        payload: tuple[str, Any] = ("ok", {n: checksums(o, n) for n, o in find().items()})
    except Exception as e:
        error = e
        said = str(e) if isinstance(e, _Phrased) else f"failed with {type(e).__name__}: {e}"
        payload = ("error", said)
    with mpi_wait("dtrain.check_replicas", "allgather"):
        gathered = comm.allgather(payload)
    if error is not None:
        raise error
    for rank, (status, said) in enumerate(gathered):
        if status == "error":
            raise ReplicasDiffer(f"could not compare the replicas because rank {rank} {said}")
    backend = getattr(rank_context._current, "backend", "horovod")
    for name in dict.fromkeys(n for _, models in gathered for n in models):
        sentence = difference(name, [models.get(name) for _, models in gathered], backend)
        if sentence:
            raise ReplicasDiffer(sentence)
    return {name: len(sums) for name, sums in gathered[0][1].items()}


def check_replicas(model: Any, name: str = "model") -> int:
    """Check that every rank holds the same parameters and buffers of ``model`` (a
    ``torch.nn.Module`` or a state_dict); every rank must call it. Raises ``ReplicasDiffer``
    on every rank naming the ranks and the first tensor that differ; else the tensor count."""
    return _compare(lambda: {name: model})[name]


def _lookup(namespace: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    import torch

    if not names:
        found = {n: v for n, v in sorted(namespace.items()) if isinstance(v, torch.nn.Module)}
        found = {n: v for n, v in found.items() if not n.startswith("_")}
        if not found:
            raise NothingToCheck(f"has no torch.nn.Module to check with {_FLAG}; {_NAME}")
        return found
    for n in names:
        value = namespace.get(n)
        if n not in namespace or not isinstance(value, torch.nn.Module | Mapping):
            held = f", only a {type(value).__name__}" if n in namespace else ""
            raise NothingToCheck(f"has no model {n!r} to check with {_FLAG}{held}; {_NAME}")
    return {n: namespace[n] for n in names}


def check_namespace(namespace: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """``--check-replicas [names]`` after a cell: check the named models of ``namespace`` (every
    ``torch.nn.Module`` bound in it when ``names`` is empty) on every rank; the names checked."""
    try:
        return list(_compare(lambda: _lookup(namespace, names)))
    except _Phrased as e:
        e.by_flag = True
        raise
