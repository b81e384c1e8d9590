"""``--check-replicas``: the code each rank runs after the cell to compare its models."""

from __future__ import annotations

CHECK_MODULE = "dtrain_magics.rank.replicas"


def check_replicas_code(names: tuple[str, ...]) -> str:
    """A line for every rank: compare the named models (every ``torch.nn.Module`` bound in the
    rank's namespace when ``names`` is empty) across ranks; it raises ``ReplicasDiffer`` on
    every rank if they differ. The trailing semicolon keeps its value out of the cell's."""
    return (
        "# --check-replicas: every rank compares its models with the other ranks'\n"
        f"__import__({CHECK_MODULE!r}, fromlist=['check_namespace'])"
        f".check_namespace(globals(), {tuple(names)!r});"
    )
