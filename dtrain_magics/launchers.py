"""How engines are started: the ipyparallel ``Cluster`` arguments for each launcher."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from traitlets.config import Config

from . import controller
from .errors import ClusterStartError

LAUNCHERS = ("local", "mpi", "slurm", "profile")

# names that always mean this host in a hostfile or a Slurm node list
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class SlurmOptions:
    """What the ``slurm`` launcher asks of ``sbatch`` beyond the layout."""

    partition: str = ""
    account: str = ""
    time_limit: str = ""
    extra_sbatch_options: list[str] = field(default_factory=list)
    # seconds a job may wait in the queue before the start is given up (enforced by the caller)
    pending_timeout: float = 300.0
    # set to 1 when the device is cuda
    gpus_per_task: int = 0


@dataclass(frozen=True)
class Layout:
    """How many ranks, arranged as nodes × processes per node."""

    nodes: int
    procs_per_node: int

    @property
    def ranks(self) -> int:
        return self.nodes * self.procs_per_node

    def __str__(self) -> str:
        return f"{self.ranks} ranks ({self.nodes} nodes × {self.procs_per_node} procs)"


def find_mpiexec() -> str:
    """The ``mpiexec`` of this Python's environment, else the first on PATH."""
    env_bin = os.path.join(sys.prefix, "bin")
    found = shutil.which("mpiexec", path=env_bin) or shutil.which("mpiexec")
    if found is None:
        raise ClusterStartError(
            f"mpiexec was not found in {env_bin} or on PATH; run `make setup` "
            "(it installs Open MPI into the project venv) or install Open MPI."
        )
    return found


def rank_environment(layout: Layout) -> dict[str, str]:
    """Environment for every rank of a local cluster."""
    cores = os.cpu_count() or 1
    env = {
        # Open MPI refuses root unless told; harmless for other users.
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        # keep MPI's own TCP traffic on loopback for a one-host cluster
        "OMPI_MCA_btl_tcp_if_include": "lo",
        # ranks on one host talk over shared memory: no MPI TCP listener on any interface
        "OMPI_MCA_btl": "self,sm",
        "DTRAIN_PROCS_PER_NODE": str(layout.procs_per_node),
    }
    # share the cores between ranks instead of every rank's torch using all of them
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", str(max(1, cores // layout.ranks)))
    if layout.ranks >= cores:
        # a rank waiting in a collective spins at 100% CPU; with every core taken by a rank, it
        # then competes with the rank still computing, and with the notebook and controller.
        # Yielding while idle gave about 25% more steps/s with 2 ranks on 2 cores (benchmarks/).
        yield_var = "OMPI_MCA_mpi_yield_when_idle"
        env[yield_var] = os.environ.get(yield_var, "1")
    return env


def local_cluster_kwargs(layout: Layout) -> dict[str, Any]:
    """``ipyparallel.Cluster`` arguments: ``layout.ranks`` MPI engines on this host, on loopback."""
    config = Config()
    config.MPIEngineSetLauncher.mpi_cmd = [find_mpiexec()]
    # more ranks than cores is allowed, and ranks are not pinned to cores
    config.MPIEngineSetLauncher.mpi_args = ["--map-by", ":OVERSUBSCRIBE", "--bind-to", "none"]
    config.MPIEngineSetLauncher.environment = rank_environment(layout)
    return {
        "engines": "mpi",
        "n": layout.ranks,
        "controller_ip": "127.0.0.1",
        "config": config,
    }


def cluster_kwargs(
    launcher: str,
    layout: Layout,
    *,
    hostfile: str | None = None,
    slurm: SlurmOptions | None = None,
) -> dict[str, Any]:
    """``ipyparallel.Cluster`` arguments for ``launcher`` (``local``, ``mpi`` or ``slurm``)."""
    if launcher == "local":
        return local_cluster_kwargs(layout)
    if launcher == "mpi":
        if hostfile is None:
            raise ClusterStartError("the mpi launcher needs a hostfile (--hostfile PATH).")
        return mpi_cluster_kwargs(layout, hostfile)
    if launcher == "slurm":
        return slurm_cluster_kwargs(layout, slurm or SlurmOptions())
    raise ValueError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}.")


@dataclass(frozen=True)
class LaunchSpec:
    """Where and how engines start: the launcher and its own settings, plus rank env vars.

    ``profile`` connects to a running ipyparallel cluster (by profile or cluster id) instead of
    starting one; such a cluster is never stopped by us.
    """

    launcher: str = "local"
    hostfile: str = ""
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    profile: str = ""
    cluster_id: str = ""
    env: tuple[tuple[str, str], ...] = ()


def launch_kwargs(spec: LaunchSpec, layout: Layout) -> dict[str, Any]:
    """``ipyparallel.Cluster`` arguments for ``spec``, with ``spec.env`` set on every rank and
    our controller entry point (ipyparallel's controller with a quieter log)."""
    kwargs = cluster_kwargs(spec.launcher, layout, hostfile=spec.hostfile or None, slurm=spec.slurm)
    kwargs["config"].LocalControllerLauncher.controller_cmd = controller.command()
    env = dict(spec.env)
    if env:
        config = kwargs["config"]
        for section in ("MPIEngineSetLauncher", "SlurmEngineSetLauncher"):
            if section in config:
                config[section].environment = {**config[section].environment, **env}
        if "MPIEngineSetLauncher" in config and spec.launcher == "mpi":
            forwarded = [arg for name in env for arg in ("-x", name)]  # reach remote ranks too
            config.MPIEngineSetLauncher.mpi_args = [
                *config.MPIEngineSetLauncher.mpi_args,
                *forwarded,
            ]
    return kwargs


# -- mpi: mpiexec --hostfile ----------------------------------------------------------------


def read_hostfile(path: str) -> list[str]:
    """The host names of an Open MPI hostfile (first word of each line, comments skipped)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ClusterStartError(f"cannot read the hostfile {path!r}: {reason}.") from None
    hosts = [line.split("#", 1)[0].split()[:1] for line in lines]
    found = [h[0] for h in hosts if h]
    if not found:
        raise ClusterStartError(f"the hostfile {path!r} names no hosts.")
    return found


def is_local_host(name: str) -> bool:
    """True if ``name`` is this machine (loopback, its short name or its full name)."""
    name = name.lower()
    short = socket.gethostname().split(".")[0].lower()
    return name in _LOOPBACK or name.split(".")[0] == short or name == socket.getfqdn().lower()


def controller_address(local_only: bool) -> dict[str, str]:
    """Loopback for a one-host cluster; else listen everywhere, located by this host's name."""
    if local_only:
        return {"controller_ip": "127.0.0.1"}
    return {"controller_ip": "*", "controller_location": socket.gethostname()}


def multi_host_environment(layout: Layout, local_only: bool) -> dict[str, str]:
    """``rank_environment`` without the loopback-only MPI transport when ranks span hosts."""
    env = rank_environment(layout)
    if not local_only:
        del env["OMPI_MCA_btl_tcp_if_include"]
        del env["OMPI_MCA_btl"]
    return env


def mpiexec_args(env: Mapping[str, str]) -> list[str]:
    """mpiexec options: oversubscription allowed, no pinning, ``env`` forwarded to remote ranks."""
    forwarded = [*env, "IPP_CLUSTER_ID", "IPP_PROFILE_DIR"]  # ipengine finds its cluster by these
    args = ["--map-by", ":OVERSUBSCRIBE", "--bind-to", "none"]
    for name in forwarded:
        args += ["-x", name]
    return args


def mpi_cluster_kwargs(layout: Layout, hostfile: str) -> dict[str, Any]:
    """Engines started by ``mpiexec --hostfile``; the controller is reachable from every host."""
    hostfile = os.path.abspath(hostfile)
    local_only = all(is_local_host(h) for h in read_hostfile(hostfile))
    env = multi_host_environment(layout, local_only)
    config = Config()
    config.MPIEngineSetLauncher.mpi_cmd = [find_mpiexec()]
    config.MPIEngineSetLauncher.mpi_args = ["--hostfile", hostfile, *mpiexec_args(env)]
    config.MPIEngineSetLauncher.environment = env
    return {
        "engines": "mpi",
        "n": layout.ranks,
        "config": config,
        **controller_address(local_only),
    }


# -- slurm: sbatch, then mpiexec inside the allocation ---------------------------------------


def find_sbatch() -> str:
    """The ``sbatch`` on PATH."""
    found = shutil.which("sbatch")
    if found is None:
        raise ClusterStartError(
            "Slurm's sbatch was not found on PATH; install Slurm "
            "(scripts/slurm-local.sh sets up a one-host Slurm) or use --launcher local."
        )
    return found


def slurm_hosts(partition: str = "") -> list[str]:
    """Host names of the Slurm nodes (of ``partition``); empty if ``sinfo`` cannot tell."""
    cmd = ["sinfo", "-h", "-N", "-o", "%n", *(["-p", partition] if partition else [])]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(set(out.split()))


def slurm_job_state(job_id: str) -> str:
    """The job's state as ``squeue`` reports it (``PENDING``, ``RUNNING``…); ``""`` once gone."""
    cmd = ["squeue", "-h", "-j", str(job_id), "-o", "%T"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=15).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip()


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


def slurm_cluster_kwargs(layout: Layout, options: SlurmOptions) -> dict[str, Any]:
    """Engines started as one Slurm job (``sbatch``) running ``mpiexec`` inside its allocation."""
    find_sbatch()
    hosts = slurm_hosts(options.partition)
    local_only = bool(hosts) and all(is_local_host(h) for h in hosts)
    env = multi_host_environment(layout, local_only)
    if layout.nodes > 1 and "OMPI_MCA_btl" in env:
        # several Slurm nodes on this one host: MPI sees separate nodes, which need its TCP
        # transport between them (still on loopback only, per btl_tcp_if_include)
        env["OMPI_MCA_btl"] = "self,sm,tcp"
    script = os.path.join(tempfile.gettempdir(), f"dtrain-engines-{uuid.uuid4().hex[:12]}.sbatch")
    config = Config()
    config.SlurmEngineSetLauncher.batch_template = slurm_batch_template(layout, options, env)
    config.SlurmEngineSetLauncher.batch_file_name = script  # not the notebook's directory
    config.SlurmEngineSetLauncher.environment = env  # sbatch --export=ALL passes it on
    return {
        "engines": "slurm",
        "n": layout.ranks,
        "config": config,
        **controller_address(local_only),
    }
