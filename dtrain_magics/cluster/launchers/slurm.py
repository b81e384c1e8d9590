"""``slurm``: one ``sbatch`` job whose allocation runs the environment's ``mpiexec``."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from traitlets.config import Config

from ...errors import ClusterStartError
from ..slurm_jobs import JobPoll
from .base import (
    LaunchSpec,
    Layout,
    OwnedLauncher,
    controller_address,
    find_mpiexec,
    find_supported_mpi,
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
    device: str = "auto"
    # GPUs asked for on each node (--gpus-per-node); set by gpus_per_node()
    gpus_per_node: int = 0

    @classmethod
    def from_spec(cls, spec: LaunchSpec) -> SlurmOptions:
        return cls(
            partition=spec.get("slurm_partition", ""),
            account=spec.get("slurm_account", ""),
            time_limit=spec.get("slurm_time_limit", ""),
            extra_sbatch_options=list(spec.get("slurm_options", ())),
            device=spec.get("device") or "auto",
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


@dataclass(frozen=True)
class SlurmNode:
    """A node of the partition the job goes to, as ``sinfo`` lists it."""

    host: str
    gpus: int


_GPU_GRES = re.compile(r"(?:^|,)gpu(?::[^:,()]*)?:(\d+)")


def gpu_count(gres: str) -> int:
    """GPUs in a node's ``sinfo %G`` (``gpu:4``, ``gpu:a100:4(S:0-1)``, ``(null)``)."""
    return sum(int(n) for n in _GPU_GRES.findall(gres))


def parse_sinfo(text: str, partition: str = "") -> list[SlurmNode]:
    """The nodes of ``partition`` (else the default one, marked ``*``) in ``sinfo -h -N -o
    '%n|%P|%G'`` output; all nodes listed if none is marked."""
    rows = [line.split("|") for line in text.splitlines() if line.count("|") == 2]
    if partition:
        chosen = [r for r in rows if r[1].rstrip("*") == partition]
    else:
        chosen = [r for r in rows if r[1].endswith("*")] or rows
    nodes = {host: SlurmNode(host, gpu_count(gres)) for host, _, gres in chosen}
    return sorted(nodes.values(), key=lambda n: n.host)


def slurm_nodes(partition: str = "") -> list[SlurmNode]:
    """The nodes of ``partition`` (else the default one); empty if ``sinfo`` cannot tell."""
    cmd = ["sinfo", "-h", "-N", "-o", "%n|%P|%G", *(["-p", partition] if partition else [])]
    return parse_sinfo(_query(cmd), partition)


def gpus_per_node(device: str, layout: Layout, nodes: list[SlurmNode]) -> int:
    """GPUs to ask for on each node: one per rank with ``cuda``; with ``auto`` too when every
    node of the partition has that many (``sinfo``'s gres), else none."""
    if device == "cuda":
        return layout.procs_per_node
    if device == "auto" and nodes and all(n.gpus >= layout.procs_per_node for n in nodes):
        return layout.procs_per_node
    return 0


_JOB_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_")
_JOB_KEEP = frozenset({"SLURM_CONF"})  # where Slurm's configuration is, not a job's setting


def stale_job_variables(environ: Mapping[str, str], keep: Collection[str] = ()) -> list[str]:
    """The names of ``environ``'s ``SLURM_*``, ``SBATCH_*`` and ``SRUN_*`` variables when it
    comes from inside a Slurm job (but ``SLURM_CONF`` and ``keep``): sbatch must not pass the
    enclosing job's settings on to the new job."""
    if not (environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")):
        return []
    return sorted(
        name
        for name in environ
        if name.startswith(_JOB_PREFIXES) and name not in _JOB_KEEP and name not in keep
    )


def submit_command(environ: Mapping[str, str], keep: Collection[str] = ()) -> list[str]:
    """``sbatch``, run without the enclosing job's variables (``env -u NAME ... sbatch``)."""
    stale = stale_job_variables(environ, keep)
    if not stale:
        return [find_sbatch()]
    unset = [arg for name in stale for arg in ("-u", name)]
    return [shutil.which("env") or "/usr/bin/env", *unset, find_sbatch()]


def sbatch_options(layout: Layout, options: SlurmOptions) -> list[str]:
    """The ``sbatch`` options for ``layout`` and ``options``."""
    opts = [f"--nodes={layout.nodes}", f"--ntasks-per-node={layout.procs_per_node}"]
    if options.gpus_per_node:
        # not --gpus-per-task: mpiexec starts one daemon per node with srun, and every rank
        # on the node would inherit its single task's GPU; ranks pick theirs by local rank
        opts.append(f"--gpus-per-node={options.gpus_per_node}")
    if options.partition:
        opts.append(f"--partition={options.partition}")
    if options.account:
        opts.append(f"--account={options.account}")
    if options.time_limit:
        opts.append(f"--time={options.time_limit}")
    return opts + options.extra_sbatch_options


def check_submission(layout: Layout, options: SlurmOptions) -> None:
    """``ClusterStartError`` naming Slurm's reason if ``sbatch --test-only`` refuses a job of
    ``layout`` and ``options`` (nothing is submitted); nothing if Slurm does not answer in time,
    as the start then says why."""
    script = "\n".join(["#!/bin/sh", *(f"#SBATCH {o}" for o in sbatch_options(layout, options))])
    try:
        done = subprocess.run(
            [*submit_command(os.environ), "--test-only"],
            input=script + "\ntrue\n",
            capture_output=True,
            text=True,
            timeout=15,
        )
    except (OSError, subprocess.SubprocessError):
        log.debug("sbatch --test-only failed", exc_info=True)
        return
    if done.returncode != 0:
        from .slurm_engines import refused, sbatch_reason

        raise refused(sbatch_reason(done.stderr))


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
            *(
                f"#SBATCH {o}".replace("{", "{{").replace("}", "}}")  # not template fields
                for o in sbatch_options(layout, options)
            ),
            f"exec {mpiexec} -n {{n}} {{program}} --mpi {{program_args}}",
            "",
        ]
    )


class SlurmLauncher(OwnedLauncher):
    """``--nodes`` → ``#SBATCH --nodes``, ``--procs-per-node`` → ``--ntasks-per-node``, one GPU
    per rank (``--gpus-per-node``) with ``--device cuda``, and with ``auto`` where the
    partition's nodes have them."""

    name: ClassVar[str] = "slurm"
    uses: ClassVar[tuple[str, ...]] = ("device",)

    def __init__(self) -> None:
        self._polls: dict[str, JobPoll] = {}  # by job id: squeue asked at most every 2 s

    def check(self, spec: LaunchSpec, layout: Layout | None = None) -> None:
        find_sbatch()
        find_supported_mpi()

    def check_submission(self, spec: LaunchSpec, layout: Layout) -> None:
        """``ClusterStartError`` if Slurm would refuse the job (``sbatch --test-only``): asked
        before a running cluster is stopped for one, as it waits on Slurm's controller."""
        check_submission(layout, self._options(spec, layout)[0])

    @staticmethod
    def _options(spec: LaunchSpec, layout: Layout) -> tuple[SlurmOptions, list[SlurmNode]]:
        """The job's options, GPUs included, and the partition's nodes as ``sinfo`` lists them."""
        options = SlurmOptions.from_spec(spec)
        nodes = slurm_nodes(options.partition)
        gpus = gpus_per_node(options.device, layout, nodes)
        return dataclasses.replace(options, gpus_per_node=gpus), nodes

    def cluster_kwargs(self, spec: LaunchSpec, layout: Layout) -> dict[str, Any]:
        find_sbatch()
        options, nodes = self._options(spec, layout)
        local_only = bool(nodes) and all(is_local_host(n.host) for n in nodes)
        env = {**multi_host_environment(layout, local_only), **dict(spec.env)}
        if layout.nodes > 1 and "OMPI_MCA_btl" in env:
            # several Slurm nodes on this one host: MPI sees separate nodes, which need its TCP
            # transport between them (still on loopback only, per btl_tcp_if_include)
            env["OMPI_MCA_btl"] += ",tcp"
        name = f"dtrain-engines-{uuid.uuid4().hex[:12]}.sbatch"
        config = Config()
        config.SlurmEngineSetLauncher.batch_template = slurm_batch_template(layout, options, env)
        # not the notebook's directory
        config.SlurmEngineSetLauncher.batch_file_name = os.path.join(tempfile.gettempdir(), name)
        config.SlurmEngineSetLauncher.environment = env  # sbatch --export=ALL passes it on
        # but not the variables of a job the notebook itself runs in
        config.SlurmEngineSetLauncher.submit_command = submit_command(os.environ, keep=env)
        return {
            "engines": "dtrain_magics.cluster.launchers.slurm_engines.SlurmEngines",
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

    def job_note(self, spec: LaunchSpec, engine_set: Any) -> str:
        """What the submitted job asks for, GPUs included, for the start's progress line."""
        job_id = getattr(engine_set, "job_id", "") or "(not yet submitted)"
        template = getattr(engine_set, "batch_template", "")
        found = re.search(r"^#SBATCH --gpus-per-node=(\d+)$", template, re.MULTILINE)
        if found:
            return f"Slurm job {job_id} submitted, with {found.group(1)} GPUs per node"
        if (spec.get("device") or "auto") != "auto":
            return f"Slurm job {job_id} submitted, without GPUs (--device cpu)"
        return (
            f"Slurm job {job_id} submitted, without GPUs: sinfo shows fewer GPUs than ranks on "
            "the partition's nodes; --device cuda asks for one per rank"
        )
