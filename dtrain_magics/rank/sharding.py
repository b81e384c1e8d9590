"""How much of a model this rank holds: its own shard of FSDP parameters, or whole tensors.

``p.numel()`` of a parameter that FSDP2 (``fully_shard``) sharded is the size of the whole
parameter, not of the part this rank stores: counting what a rank holds needs ``to_local()``.
"""

from __future__ import annotations

from typing import Any


def parameter_share(module: Any) -> dict[str, int]:
    """The parameters ``module`` keeps on this rank: ``{"numel": ..., "bytes": ...}``.

    A sharded parameter (a ``DTensor``, as ``fully_shard`` makes them) counts with its local
    shard only; a plain parameter counts whole; a parameter shared by two layers counts once.
    """
    numel = nbytes = 0
    seen: set[int] = set()
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        local = p.to_local() if hasattr(p, "to_local") else p
        numel += local.numel()
        nbytes += local.numel() * local.element_size()
    return {"numel": numel, "bytes": nbytes}
