"""Pure logic: option validation and rank-output line buffering (no cluster)."""

from __future__ import annotations

import pytest

from dtrain_magics.options import BadOptions, RunOptions, parse_names


def test_defaults() -> None:
    options = RunOptions().validate()
    assert (
        options.nodes,
        options.procs_per_node,
        options.backend,
        options.device,
        options.timeout,
    ) == (1, 1, "horovod", "auto", None)
    assert options.layout.ranks == 1


def test_layout_multiplies_nodes_and_procs() -> None:
    assert RunOptions(nodes=3, procs_per_node=2).layout.ranks == 6


@pytest.mark.parametrize("nodes", [0, -3, True, 2.0])
def test_invalid_nodes(nodes: object) -> None:
    with pytest.raises(BadOptions, match="--nodes must be a positive integer"):
        RunOptions(nodes=nodes).validate()  # type: ignore[arg-type]


def test_parse_names() -> None:
    assert parse_names(" a, b ,,c ") == ("a", "b", "c")
    assert parse_names(None) == ()
