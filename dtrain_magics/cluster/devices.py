"""The device of a cluster's ranks, chosen in the notebook from every rank's survey.

``--device auto`` takes the GPUs only when every rank has one of its own; ``--device cuda``
where that cannot be is bad input, said in one sentence. NCCL refuses two ranks of one job on
one GPU, and a job whose ranks disagree (some on CPU, some on CUDA) waits forever in its first
collective: neither shows on a single rank.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..errors import BadOptions


def choose_device(requested: str, surveys: list[dict[str, Any]]) -> tuple[str, str | None]:
    """``cpu`` or ``cuda`` for every rank, and a note when ``auto`` left GPUs unused (for the
    run's headline); ``surveys`` come from ``rank.devices.survey``.

    Raises ``BadOptions`` when ``--device cuda`` cannot give each rank a GPU of its own.
    """
    if requested == "cpu" or not surveys:
        return "cpu", None
    without = [s for s in surveys if not s["gpus"]]
    if without:
        first = min(without, key=lambda s: s["rank"])
        if requested == "cuda":
            raise BadOptions(_no_gpu(first))
        if len(without) == len(surveys):
            return "cpu", None
        return "cpu", f"auto: rank {first['rank']} sees no GPU"
    shared = _shared_gpu(surveys)
    if shared is None:
        return "cuda", None
    ranks, survey = shared
    count, host_size, host = survey["gpus"], survey["host_size"], survey["host"]
    if requested == "cuda":
        raise BadOptions(
            f"--device cuda would put ranks {ranks[0]} and {ranks[1]} on one GPU of {host} "
            f"({count} for {host_size} ranks there), and NCCL cannot share a GPU between "
            f"ranks: run at most {count} per host (--procs-per-node {count}), or use "
            "--device cpu."
        )
    return "cpu", f"auto: {count} GPU{'s' if count > 1 else ''} for {host_size} ranks on {host}"


def _no_gpu(survey: dict[str, Any]) -> str:
    why = f": {survey['reason'].rstrip('.')}" if survey.get("reason") else ""
    visible = survey.get("visible")
    hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    return (
        f"--device cuda was requested but rank {survey['rank']} sees no CUDA GPU{hint}{why}; "
        "use --device auto or --device cpu."
    )


def _shared_gpu(surveys: list[dict[str, Any]]) -> tuple[list[int], dict[str, Any]] | None:
    """Two ranks that would take the same GPU of one host, with the first one's survey."""
    takers: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for survey in sorted(surveys, key=lambda s: s["rank"]):
        takers[survey["host"], survey["gpu"]].append(survey)
    for found in takers.values():
        if len(found) > 1:
            return [s["rank"] for s in found], found[0]
    return None
