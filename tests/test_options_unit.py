"""Pure logic: option validation and rank-output line buffering (no cluster)."""

from __future__ import annotations

import io

import pytest

from dtrain_magics.options import BadOptions, RunOptions, parse_names
from dtrain_magics.output import RankOutputPrinter


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


def test_printer_labels_whole_lines_and_never_repeats() -> None:
    out, err = io.StringIO(), io.StringIO()
    printer = RankOutputPrinter(out, err)
    printer.feed(0, "stdout", "hel")
    assert out.getvalue() == ""
    printer.feed(0, "stdout", "hello\nwor")
    printer.feed(1, "stdout", "one\n")
    printer.feed(0, "stdout", "hello\nwor")  # same text again: nothing new
    printer.feed(1, "stderr", "oops\n")
    printer.flush()
    printer.feed(0, "stdout", "hello\nworld")  # flushed partial is not printed twice
    printer.flush()
    assert out.getvalue() == "[rank 0] hello\n[rank 1] one\n[rank 0] wor\n[rank 0] ld\n"
    assert err.getvalue() == "[rank 1] oops\n"
