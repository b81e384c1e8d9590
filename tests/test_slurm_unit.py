"""Pure logic of the Slurm launcher: squeue's answers, how often it is asked, the GPUs and the
environment a job gets, and the watchdog's arguments (no Slurm needed)."""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dtrain_magics.cluster import watchdog
from dtrain_magics.cluster.launchers import LaunchSpec, Layout
from dtrain_magics.cluster.launchers.slurm import (
    SlurmLauncher,
    SlurmNode,
    SlurmOptions,
    gpu_count,
    gpus_per_node,
    parse_sinfo,
    slurm_batch_template,
    stale_job_variables,
    submit_command,
)
from dtrain_magics.cluster.slurm_jobs import JobPoll, JobState, parse_squeue

INVALID = "slurm_load_jobs error: Invalid job id specified\n"


@pytest.mark.parametrize(
    ("returncode", "stdout", "stderr", "state"),
    [
        (0, "PENDING\n", "", ("pending", "PENDING")),
        (0, "CONFIGURING\n", "", ("pending", "CONFIGURING")),  # its nodes boot
        (0, "RUNNING\n", "", ("running", "RUNNING")),
        (0, "SUSPENDED\n", "", ("running", "SUSPENDED")),
        (0, "COMPLETING\n", "", ("ended", "COMPLETING")),
        (0, "FAILED\n", "", ("ended", "FAILED")),
        (0, "", "", ("ended", "")),  # the controller answered without the job
        (1, "", INVALID, ("ended", "")),  # the controller no longer knows it
        (1, "", "squeue: error: Socket timed out on send/recv operation\n", ("unknown", "")),
        (1, "", "slurm_load_jobs error: Unable to contact slurm controller\n", ("unknown", "")),
        (None, "", "", ("unknown", "")),  # squeue timed out or is missing
    ],
)
def test_squeue_answers(
    returncode: int | None, stdout: str, stderr: str, state: tuple[str, str]
) -> None:
    assert parse_squeue(returncode, stdout, stderr) == state


def test_squeue_is_asked_at_most_every_two_seconds() -> None:
    now = [0.0]
    answers: list[tuple[JobState, str]] = [("pending", "PENDING"), ("unknown", "")]
    answers += [("running", "RUNNING")] * 10
    asked: list[float] = []

    def query(job_id: str) -> tuple[JobState, str]:
        asked.append(now[0])
        return answers[len(asked) - 1]

    poll = JobPoll("42", query=query, clock=lambda: now[0])
    states = []
    for _ in range(1000):  # every 10 ms for 10 s, as a start's loop does
        states.append(poll.poll())
        now[0] += 0.01
    assert asked[0] == 0.0 and len(asked) == 5, asked
    assert all(b - a >= 2.0 - 1e-9 for a, b in itertools.pairwise(asked)), asked
    # a failed question (the second) keeps the job pending instead of calling it gone
    assert set(states[: int(4.0 / 0.01)]) == {"pending"} and states[-1] == "running"


@pytest.fixture
def fake_squeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``fake_squeue(stdout, stderr, code)``: an ``squeue`` on PATH that answers so."""

    def install(stdout: str, stderr: str = "", code: int = 0) -> None:
        script = tmp_path / "squeue"
        script.write_text(
            f"#!/bin/sh\nprintf '%s' '{stdout}'\nprintf '%s' '{stderr}' >&2\nexit {code}\n"
        )
        script.chmod(script.stat().st_mode | stat.S_IEXEC)

    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return install


class _EngineSet:
    job_id = "42"
    batch_template = ""


def test_a_failed_squeue_does_not_end_a_job(fake_squeue: Any) -> None:
    fake_squeue("", "squeue: error: Socket timed out on send/recv operation\n", 1)
    launcher = SlurmLauncher()
    assert not launcher.job_ended(_EngineSet()) and launcher.pending(_EngineSet()) is None


@pytest.mark.parametrize(
    ("stdout", "stderr", "code", "pending", "ended"),
    [
        ("PENDING\n", "", 0, "42", False),
        ("CONFIGURING\n", "", 0, "42 (nodes booting)", False),
        ("RUNNING\n", "", 0, None, False),
        ("", INVALID, 1, None, True),
    ],
)
def test_launcher_reads_squeue(
    fake_squeue: Any, stdout: str, stderr: str, code: int, pending: str | None, ended: bool
) -> None:
    fake_squeue(stdout, stderr, code)
    launcher = SlurmLauncher()
    assert launcher.pending(_EngineSet()) == pending
    assert launcher.job_ended(_EngineSet()) is ended


def test_gpu_counts_from_gres() -> None:
    assert gpu_count("(null)") == 0
    assert gpu_count("gpu:4") == 4
    assert gpu_count("gpu:a100:4(S:0-1)") == 4
    assert gpu_count("gpu:tesla:2(S:0,1),gpu:k80:2(S:1),mps:200") == 4
    assert gpu_count("mps:100,gpumem:8G") == 0


def test_sinfo_rows_of_the_partition() -> None:
    text = "a|cpu*|(null)\nb|cpu*|(null)\ng1|gpu|gpu:a100:4(S:0-1)\ng2|gpu|gpu:2\nb|gpu|(null)\n"
    assert parse_sinfo(text) == [SlurmNode("a", 0), SlurmNode("b", 0)]  # the default one
    assert parse_sinfo(text, "gpu") == [SlurmNode("b", 0), SlurmNode("g1", 4), SlurmNode("g2", 2)]
    assert parse_sinfo("x|p1|gpu:1\n") == [SlurmNode("x", 1)]  # no default: every node
    assert parse_sinfo("") == []


@pytest.mark.parametrize(
    ("device", "gpus", "expected"),
    [
        ("cuda", [0], 4),  # asked for: Slurm says if it cannot be had
        ("auto", [4, 8], 4),
        ("auto", [4, 2], 0),  # a node with fewer GPUs than ranks
        ("auto", [], 0),  # sinfo did not answer
        ("cpu", [8], 0),
    ],
)
def test_gpus_per_node(device: str, gpus: list[int], expected: int) -> None:
    nodes = [SlurmNode(f"n{i}", g) for i, g in enumerate(gpus)]
    assert gpus_per_node(device, Layout(2, 4), nodes) == expected


def test_gpus_are_asked_per_node_not_per_task() -> None:
    template = slurm_batch_template(Layout(2, 4), SlurmOptions(gpus_per_node=4), {})
    assert "#SBATCH --gpus-per-node=4" in template.splitlines()
    assert "gpus-per-task" not in template
    engine_set = _EngineSet()
    engine_set.batch_template = template
    note = SlurmLauncher().job_note(LaunchSpec("slurm", (("device", "auto"),)), engine_set)
    assert note == "Slurm job 42 submitted, with 4 GPUs per node"
    engine_set.batch_template = slurm_batch_template(Layout(2, 4), SlurmOptions(), {})
    note = SlurmLauncher().job_note(LaunchSpec("slurm", (("device", "auto"),)), engine_set)
    assert "without GPUs" in note and "--device cuda" in note


def test_a_job_inside_a_job_drops_the_outer_jobs_variables() -> None:
    outer = {
        "SLURM_JOB_ID": "7",
        "SLURM_MEM_PER_NODE": "1000",
        "SLURM_CONF": "/etc/slurm/other.conf",
        "SBATCH_MEM_BIND": "local",
        "SRUN_CPUS_PER_TASK": "4",
        "SLURM_USER_SET": "kept by --env",
        "PATH": "/usr/bin",
        "MY_SLURM_THING": "x",
    }
    assert stale_job_variables(outer, keep={"SLURM_USER_SET"}) == [
        "SBATCH_MEM_BIND",
        "SLURM_JOB_ID",
        "SLURM_MEM_PER_NODE",
        "SRUN_CPUS_PER_TASK",
    ]
    outside = {k: v for k, v in outer.items() if k != "SLURM_JOB_ID"}
    assert stale_job_variables(outside) == []


def test_sbatch_runs_without_the_stale_variables(tmp_path: Path) -> None:
    environ = {**os.environ, "SLURM_JOB_ID": "7", "SLURM_MEM_PER_CPU": "10", "KEPT": "1"}
    command = submit_command(environ)
    assert command[0].endswith("env") and command[-1].endswith("sbatch")
    # what sbatch would see: run `env` itself in its place
    done = subprocess.run(
        [*command[:-1], "env"], env=environ, capture_output=True, text=True, check=True
    )
    names = {line.partition("=")[0] for line in done.stdout.splitlines()}
    assert "KEPT" in names and not names & {"SLURM_JOB_ID", "SLURM_MEM_PER_CPU"}
    outside = {k: v for k, v in environ.items() if not k.startswith("SLURM_")}
    assert submit_command(outside) == [command[-1]]


def test_watchdog_arguments() -> None:
    assert watchdog.main(["12", "--slurm-job"]) == 2
    assert watchdog.main(["12", "--slurm-job", "abc"]) == 2
    assert watchdog.main(["--slurm-job", "5"]) == 2


def test_watchdog_cancels_the_job_when_the_kernel_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "scancel.log"
    scancel = tmp_path / "scancel"
    scancel.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scancel.chmod(scancel.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    kernel = subprocess.Popen([sys.executable, "-c", "pass"])
    kernel.wait()
    assert watchdog.watch(kernel.pid, [], ["1234"], poll=0.05) == 0
    assert calls.read_text().split() == ["1234"]
