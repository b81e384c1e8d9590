"""Device resolution and GPU pinning on a rank."""

from __future__ import annotations

import os
from typing import Any


def resolve_device(requested: str, host_rank: int, rank: int) -> Any:
    """Turn ``auto``/``cpu``/``cuda`` into a ``torch.device``, pinning one GPU per local rank.

    Ranks that share a host take GPUs in order of their index on that host; where a host
    has fewer GPUs than ranks, ranks share them round-robin.
    """
    import torch

    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        raise RuntimeError(
            f"--device cuda was requested but rank {rank} sees no CUDA GPU{hint}; "
            "use --device auto or --device cpu."
        )
    if requested == "cpu" or not has_cuda:
        return torch.device("cpu")
    index = host_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
