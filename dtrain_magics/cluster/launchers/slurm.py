"""``slurm``: one ``sbatch`` job whose allocation runs the environment's ``mpiexec``."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from traitlets.config import Config

from ...errors import ClusterStartError
from ..slurm_jobs import JobPoll, query_state
from .base import (
    LaunchSpec,
    Layout,
    OwnedLauncher,
    controller_address,
    find_mpiexec,
    is_local_host,
    mpiexec_args,
    multi_host_environment,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlurmOptions:
    """What the launcher asks of ``sbatch`` beyond the layout."""

    partition: str = ""
    account: str = ""
    time_limit: str = ""
    extra_sbatch_options: list[str] = field(default_factory=list)
    # set to 1 when the device is cuda
    gpus_per_task: int = 0

    @classmethod
    def from_spec(cls, spec: LaunchSpec) -> SlurmOptions:
        return cls(
            partition=spec.get("slurm_partition", ""),
            account=spec.get("slurm_account", ""),
            time_limit=spec.get("slurm_time_limit", ""),
            extra_sbatch_options=list(spec.get("slurm_options", ())),
            gpus_per_task=1 if spec.get("device") == "cuda" else 0,
        )


def find_sbatch() -> str:
    """The ``sbatch`` on PATH."""
    found = shutil.which("sbatch")
    if found is None:
        raise ClusterStartError(
            "Slurm's sbatch was not found on PATH; install Slurm "
            "(scripts/slurm-local.sh sets up a one-host Slurm) or use --launcher local."
        )
    return found


def _query(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=15).stdout
    except (OSError, subprocess.SubprocessError):
        log.debug("%s failed", cmd[0], exc_info=True)
        return ""


def slurm_hosts(partition: str = "") -> list[str]:
    """Host names of the Slurm nodes (of ``partition``); empty if ``sinfo`` cannot tell."""
    cmd = ["sinfo", "-h", "-N", "-o", "%n", *(["-p", partition] if partition else [])]
    return sorted(set(_query(cmd).split()))


def slurm_job_state(job_id: str) -> str:
    """Slurm's word for the job's state (``PENDING``, ``RUNNING``…); ``""`` if it is gone or
    ``squeue`` did not answer."""
    return query_state(job_id)[1]


def _sbatch_lines(layout: Layout, options: SlurmOptions) -> list[str]:
    """The ``#SBATCH`` lines for ``layout`` and ``options`` (braces escaped for the template)."""
    opts = [f"--nodes={layout.nodes}", f"--ntasks-per-node={layout.procs_per_node}"]
    if options.gpus_per_task:
        opts.append(f"--gpus-per-task={options.gpus_per_task}")
    if options.partition:
        opts.append(f"--partition={options.partition}")
    if options.account:
        opts.append(f"--account={options.account}")
    if options.time_limit:
        opts.append(f"--time={options.time_limit}")
    opts += options.extra_sbatch_options
    return [f"#SBATCH {o}".replace("{", "{{").replace("}", "}}") for o in opts]


def slurm_batch_template(layout: Layout, options: SlurmOptions, env: Mapping[str, str]) -> str:
    """The engines' job script: one allocation, ranks started by the venv's ``mpiexec``.

    ``{n}``, ``{cluster_id}``, ``{output_file}``, ``{program}`` and ``{program_args}`` are filled
    in by ipyparallel's ``SlurmEngineSetLauncher``; ``srun`` is not used because it would start
    independent singletons instead of one MPI job.
    """
    mpiexec = shlex.join([find_mpiexec(), *mpiexec_args(env)])
    return "\n".join(
        [
            "#!/bin/sh",
            "#SBATCH --export=ALL",
            "#SBATCH --job-name=ipengine-{cluster_id}",
            "#SBATCH --output={output_file}",
            *_sbatch_lines(layout, options),
            f"exec {mpiexec} -n {{n}} {{program}} --mpi {{program_args}}",
            "",
        ]
    )


class SlurmLauncher(OwnedLauncher):
    """``--nodes`` → ``#SBATCH --nodes``, ``--procs-per-node`` → ``--ntasks-per-node``, one GPU
    per task with ``--device cuda``."""

    name: ClassVar[str] = "slurm"
    uses: ClassVar[tuple[str, ...]] = ("device",)

    def __init__(self) -> None:
        self._polls: dict[str, JobPoll] = {}  # by job id: squeue asked at most every 2 s

    def check(self, spec: LaunchSpec) -> None:
        find_sbatch()
        SlurmOptions.from_spec(spec)

    def cluster_kwargs(self, spec: LaunchSpec, layout: Layout) -> dict[str, Any]:
        find_sbatch()
        options = SlurmOptions.from_spec(spec)
        hosts = slurm_hosts(options.partition)
        local_only = bool(hosts) and all(is_local_host(h) for h in hosts)
        env = {**multi_host_environment(layout, local_only), **dict(spec.env)}
        if layout.nodes > 1 and "OMPI_MCA_btl" in env:
            # several Slurm nodes on this one host: MPI sees separate nodes, which need its TCP
            # transport between them (still on loopback only, per btl_tcp_if_include)
            env["OMPI_MCA_btl"] = "self,sm,tcp"
        name = f"dtrain-engines-{uuid.uuid4().hex[:12]}.sbatch"
        config = Config()
        config.SlurmEngineSetLauncher.batch_template = slurm_batch_template(layout, options, env)
        # not the notebook's directory
        config.SlurmEngineSetLauncher.batch_file_name = os.path.join(tempfile.gettempdir(), name)
        config.SlurmEngineSetLauncher.environment = env  # sbatch --export=ALL passes it on
        return {
            "engines": "slurm",
            "n": layout.ranks,
            "config": config,
            **controller_address(local_only),
        }

    def _poll(self, job_id: str) -> JobPoll:
        poll = self._polls.get(job_id)
        if poll is None:
            if len(self._polls) >= 16:  # forget the oldest jobs
                del self._polls[next(iter(self._polls))]
            poll = self._polls[job_id] = JobPoll(job_id)
        return poll

    def pending(self, engine_set: Any) -> str | None:
        job_id = getattr(engine_set, "job_id", None)
        if not job_id:
            return "(not yet submitted)"
        poll = self._poll(str(job_id))
        if poll.poll() != "pending":
            return None
        return f"{job_id} (nodes booting)" if poll.word == "CONFIGURING" else str(job_id)

    def job_ended(self, engine_set: Any) -> bool:
        job_id = getattr(engine_set, "job_id", None)
        return bool(job_id) and self._poll(str(job_id)).poll() == "ended"
