"""Bad flags and bad cells: one-sentence UsageErrors, nothing sent, the cluster untouched."""

from __future__ import annotations

from typing import Any

import pytest
from IPython.core.error import UsageError

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--nodes 0", "--nodes must be a positive integer up to 1024, got 0."),
        ("--nodes -1", "--nodes must be a positive integer up to 1024, got -1."),
        ("--nodes abc", "--nodes must be a positive integer up to 1024, got 'abc'"),
        ("--nodes 2.5", "--nodes must be a positive integer up to 1024, got '2.5'"),
        ("--nodes 600 -p 2", "asks for 1200 ranks; at most 1024 are supported."),
        ("--procs-per-node 0", "--procs-per-node must be a positive integer up to 1024, got 0."),
        ("--backend mxnet", "--backend must be one of horovod, torch, got 'mxnet'."),
        ("--device tpu", "--device must be one of auto, cpu, cuda, got 'tpu'."),
        ("--timeout 0", "--timeout must be a positive number of seconds, got 0.0."),
        ("--timeout -5", "--timeout must be a positive number of seconds, got -5.0."),
        ("--timeout soon", "--timeout must be a positive number of seconds, got 'soon'"),
        ("--push 1x", "--push takes comma-separated Python names, and '1x' is not one."),
        ("--max-restarts -1", "--max-restarts must be a whole number from 0 up to 100, got -1."),
        ("--max-restarts 101", "--max-restarts must be a whole number from 0 up to 100, got 101."),
        ("--max-restarts x", "--max-restarts must be a whole number from 0 up to 100, got 'x'"),
        (
            "--check-replicas 2model",
            "--check-replicas takes comma-separated Python names, and '2model' is not one.",
        ),
        (
            "--check-replicas ,",
            "--check-replicas ',' names nothing; give comma-separated Python names.",
        ),
        ("--env 'A=1", "the line does not split into words (No closing quotation): close it."),
        ("--gpus 2", "unrecognized arguments: --gpus 2"),
        (
            "--partition gpu",
            "--partition is a setting of the slurm launcher, and this cell runs with the local "
            "launcher: add --launcher slurm, or leave --partition out.",
        ),
    ],
)
def test_bad_flags_raise_usage_error(ip: Any, cluster: Any, line: str, message: str) -> None:
    engines = list(cluster.engines)
    sent = len(cluster.client.history)
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("distributed", line, "print('never')")
    assert message in str(info.value)
    assert "\n" not in str(info.value).strip()
    assert cluster.engines == engines and cluster.running
    assert len(cluster.client.history) == sent


def test_empty_cell_is_a_usage_error(ip: Any, cluster: Any) -> None:
    with pytest.raises(UsageError, match="the cell is empty"):
        ip.run_cell_magic("distributed", "--nodes 2", "   \n")


def test_unknown_dtrain_subcommand(ip: Any) -> None:
    with pytest.raises(
        UsageError,
        match=r"unknown %dtrain command 'explode'; use status, where, stop, restart or config\.",
    ):
        ip.run_line_magic("dtrain", "explode")


def test_help_is_a_numpy_docstring_with_an_example(ip: Any) -> None:
    doc = ip.find_cell_magic("distributed").__doc__
    assert "Examples\n" in doc and "%%distributed --nodes 2" in doc
    assert "--procs-per-node" in doc and "--pull" in doc  # the argument list is appended
