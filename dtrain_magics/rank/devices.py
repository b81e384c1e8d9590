"""Devices on a rank: what each rank can use (``survey``), and pinning the chosen one.

The notebook decides the device for all ranks at once from every rank's survey
(``cluster/devices.py``): NCCL refuses two ranks of one job on one GPU, and ranks must agree on
CPU or CUDA, which no rank can see alone.
"""

from __future__ import annotations

import os
import socket
import warnings
from typing import Any

from .world import place


def survey(requested: str) -> dict[str, Any]:
    """Runs on every rank before its backend starts: the GPU this rank would take (one per rank
    of its host, in order of their index there), how many it sees, and why none if so."""
    here = place()
    found: dict[str, Any] = {
        "rank": here.rank,
        "host": socket.gethostname(),
        "host_size": here.host_size,
        "gpus": 0,
        "gpu": None,
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "reason": None,
    }
    if requested == "cpu":
        return found
    import torch

    if not torch.cuda.is_available():
        if requested == "cuda":  # the sentence that refuses it says why
            found["reason"] = cuda_unavailable_reason()
        return found
    found.update(gpus=torch.cuda.device_count(), gpu=_gpu_identity(gpu_index(here.host_rank)))
    return found


def gpu_index(host_rank: int) -> int:
    """The GPU a rank takes: one per rank of its host, in order of their index there."""
    import torch

    return host_rank % torch.cuda.device_count()


def _gpu_identity(index: int) -> str:
    """What tells GPU ``index`` apart from the others of its host, whatever each rank's
    ``CUDA_VISIBLE_DEVICES`` (a site may give each rank a different one as its GPU 0)."""
    import torch

    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        return str(uuid)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return visible.split(",")[index]
    return str(index)


def cuda_unavailable_reason() -> str | None:
    """Why a CUDA build of torch sees no GPU, in torch's words (a driver older than the CUDA
    torch was built for, no driver, no device); None for a CPU build of torch."""
    import torch

    if torch.version.cuda is None:
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.cuda.init()
        except Exception as e:  # torch says why here, or warned it from is_available()
            return str(e).strip().splitlines()[0]
    said = [str(w.message).strip() for w in caught]
    return said[0].splitlines()[0] if said else None


def resolve_device(kind: str, host_rank: int) -> Any:
    """The ``torch.device`` of ``kind`` (``cpu`` or ``cuda``, chosen for all ranks from their
    surveys) for this rank, pinning its GPU: one per rank of the host, as ``survey`` took."""
    import torch

    if kind != "cuda":
        return torch.device("cpu")
    index = gpu_index(host_rank)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
