"""The ``mpi`` (hostfile) and ``slurm`` launchers: their errors, and real 2-rank Horovod runs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ipyparallel as ipp
import psutil
import pytest
from IPython.core.error import UsageError

from dtrain_magics.cluster.launchers import LaunchSpec, Layout, find_mpiexec, get_launcher
from dtrain_magics.cluster.launchers import base as launchers
from dtrain_magics.cluster.launchers.slurm import (
    SlurmOptions,
    slurm_batch_template,
)
from dtrain_magics.cluster.launchers.slurm_engines import sbatch_reason
from dtrain_magics.cluster.slurm_jobs import query_state
from dtrain_magics.errors import ClusterStartError

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")


# -- errors and arguments (no cluster) ---------------------------------------------------------


def cluster_kwargs(launcher: str, layout: Layout, **options: Any) -> dict[str, Any]:
    """The ipyparallel ``Cluster`` arguments the launcher gives for these settings."""
    spec = LaunchSpec(launcher, tuple(sorted(options.items())))
    return get_launcher(launcher).cluster_kwargs(spec, layout)


def test_missing_hostfile_is_one_clear_sentence(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-hostfile"
    with pytest.raises(ClusterStartError, match=r"^cannot read the hostfile .*no-such-hostfile"):
        cluster_kwargs("mpi", Layout(2, 1), hostfile=str(missing))


def test_unreadable_or_empty_hostfile(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("# nothing here\n\n")
    with pytest.raises(ClusterStartError, match="names no hosts"):
        cluster_kwargs("mpi", Layout(2, 1), hostfile=str(tmp_path / "empty"))
    with pytest.raises(ClusterStartError, match="cannot read the hostfile"):
        cluster_kwargs("mpi", Layout(2, 1), hostfile=str(tmp_path))  # a directory
    with pytest.raises(ClusterStartError, match="needs a hostfile"):
        cluster_kwargs("mpi", Layout(2, 1))


def test_no_sbatch_is_one_clear_sentence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterStartError) as info:
        cluster_kwargs("slurm", Layout(1, 2))
    message = str(info.value)
    assert "sbatch was not found" in message and "--launcher local" in message
    assert message.count(". ") == 0 and message.endswith(".")


def test_what_sbatch_said_is_one_line_without_its_prefixes() -> None:
    assert sbatch_reason("sbatch: error: Invalid --time specification\n") == (
        "Invalid --time specification"
    )
    assert (
        sbatch_reason(
            "sbatch: error: invalid partition specified: nope\n"
            "allocation failure: Invalid partition name specified\n"
        )
        == "invalid partition specified: nope; allocation failure: Invalid partition name specified"
    )
    assert (
        sbatch_reason(
            "sbatch: unrecognized option '--bogus'\nTry \"sbatch --help\" for more information\n"
        )
        == "unrecognized option '--bogus'"
    )
    assert sbatch_reason("") == "it gave no reason"


def test_the_slurm_engines_class_survives_ipyparallels_cluster_file(tmp_path: Path) -> None:
    """``ipcluster list``/``stop`` read the class back with import_item: ``module:Class``, the
    default name of a class that is no entry point, failed there."""
    from dtrain_magics.cluster.launchers.slurm_engines import SlurmEngines

    kwargs = cluster_kwargs("slurm", Layout(2, 1))
    cluster = ipp.Cluster(profile_dir=str(tmp_path), cluster_id="x", log_level=40, **kwargs)
    saved = cluster.to_dict()
    assert saved["engines"]["class"] == SlurmEngines.entrypoint_name
    again = ipp.Cluster.from_dict(saved, profile_dir=str(tmp_path))
    assert again.engine_launcher_class is SlurmEngines


def test_local_hostfile_keeps_the_controller_on_loopback(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# one host\nlocalhost slots=2\n127.0.0.1\n")
    kwargs = cluster_kwargs("mpi", Layout(1, 2), hostfile=str(hostfile))
    assert kwargs["controller_ip"] == "127.0.0.1" and "controller_location" not in kwargs
    args = kwargs["config"].MPIEngineSetLauncher.mpi_args
    assert args[:2] == ["--hostfile", str(hostfile)]
    assert kwargs["config"].MPIEngineSetLauncher.environment["OMPI_MCA_btl_tcp_if_include"] == "lo"


def test_remote_hostfile_listens_for_remote_engines(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=1\nnode-b.example.org slots=1  # the other one\n")
    kwargs = cluster_kwargs("mpi", Layout(2, 1), hostfile=str(hostfile))
    assert kwargs["controller_ip"] == "*" and kwargs["controller_location"]
    env = kwargs["config"].MPIEngineSetLauncher.environment
    assert "OMPI_MCA_btl_tcp_if_include" not in env and env["OMPI_ALLOW_RUN_AS_ROOT"] == "1"
    args = kwargs["config"].MPIEngineSetLauncher.mpi_args
    assert {"OMPI_ALLOW_RUN_AS_ROOT", "IPP_CLUSTER_ID"} <= set(args)


def test_ranks_get_malloc_on_huge_pages_unless_the_user_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert launchers.malloc_tunables("") == "glibc.malloc.hugetlb=1"
    kept = "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert launchers.malloc_tunables("glibc.malloc.arena_max=2") == kept
    assert launchers.malloc_tunables("glibc.malloc.hugetlb=0") == "glibc.malloc.hugetlb=0"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=2")
    assert launchers.rank_environment(Layout(1, 2))["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=2"


def test_slurm_template_runs_mpiexec_in_the_allocation() -> None:
    options = SlurmOptions(
        partition="gpu",
        account="proj",
        time_limit="01:00:00",
        extra_sbatch_options=["--qos=high", "--comment={x}"],
        gpus_per_node=4,
    )
    env = launchers.rank_environment(Layout(2, 4))
    template = slurm_batch_template(Layout(2, 4), options, env)
    lines = template.splitlines()
    for line in [
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --time=01:00:00",
        "#SBATCH --qos=high",
        "#SBATCH --comment={{x}}",
        "#SBATCH --output={output_file}",
    ]:
        assert line in lines
    run = lines[-1]
    assert run.startswith(f"exec {find_mpiexec()} ") and "srun" not in template
    assert run.endswith("-n {n} {program} --mpi {program_args}")
    no_gpu = slurm_batch_template(Layout(1, 2), SlurmOptions(), env)
    assert "--gpus-per" not in no_gpu and "--partition" not in no_gpu


# -- real clusters -------------------------------------------------------------------------------


@ipp.interactive
def _allreduce() -> dict[str, Any]:
    """Runs on an engine: Horovod's rank, size, the sum of rank+1 over all ranks and the
    rank's ``GLIBC_TUNABLES``."""
    import os

    import horovod.torch as hvd
    import torch

    hvd.init()
    rank = hvd.rank()
    total = hvd.allreduce(torch.tensor([rank + 1.0]), op=hvd.Sum)
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return {"rank": rank, "size": hvd.size(), "sum": float(total.item()), "tunables": tunables}


@ipp.interactive
def _slurm_place() -> tuple[str, str]:
    """Runs on an engine: the Slurm job it belongs to and the Slurm node it runs on."""
    import os

    return os.environ.get("SLURM_JOB_ID", ""), os.environ.get("SLURMD_NODENAME", "")


def _cluster_processes(cluster_id: str) -> list[psutil.Process]:
    """Live processes started for ``cluster_id`` (ipyparallel sets IPP_CLUSTER_ID in their env)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("IPP_CLUSTER_ID") == cluster_id:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _wait_until(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


def _start(kwargs: dict[str, Any]) -> tuple[Any, Any]:
    cluster = ipp.Cluster(profile="dtrain-launchers", **kwargs)
    cluster.start_controller_sync()
    cluster.start_engines_sync()
    return cluster, cluster.connect_client_sync()


def _check_horovod(client: Any) -> None:
    client.wait_for_engines(2, timeout=120)
    results = sorted(client[:].apply_sync(_allreduce), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["size"] == 2 and r["sum"] == 3.0 for r in results), results
    assert all(launchers.MALLOC_HUGE_PAGES in r["tunables"].split(":") for r in results), results


def _stop(cluster: Any, client: Any) -> None:
    client.close()
    cluster.stop_cluster_sync()
    left = _wait_until(lambda: not _cluster_processes(cluster.cluster_id), timeout=30)
    assert left, f"processes left behind: {_cluster_processes(cluster.cluster_id)}"


@ipp.interactive
def _ranks_here() -> int:
    """Runs on an engine: how many ranks mpiexec put on its host (from any MPI's variables)."""
    from dtrain_magics.rank.world import place

    return place().host_size


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_mpi_launcher_runs_horovod_over_a_hostfile(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=1\n")  # --procs-per-node 2 oversubscribes its slot
    cluster, client = _start(cluster_kwargs("mpi", Layout(1, 2), hostfile=str(hostfile)))
    try:
        _check_horovod(client)
        assert client[:].apply_sync(_ranks_here) == [2, 2]
    finally:
        _stop(cluster, client)


@pytest.mark.cluster
def test_a_hostfile_with_fewer_hosts_than_nodes_leaves_the_cluster_alone(
    ip: Any, cluster: Any, tmp_path: Path
) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=4\n127.0.0.1 slots=4  # the same host again\n")
    engines, cluster_id = list(cluster.engines), cluster.cluster_id
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("distributed", f"--launcher mpi --hostfile {hostfile} -n 2", "x = 1")
    assert str(info.value) == (
        f"the hostfile {str(hostfile)!r} names 1 host (this machine) and --nodes asks for 2: "
        "add hosts to it or lower --nodes."
    )
    assert cluster.running and cluster.engines == engines and cluster.cluster_id == cluster_id


def _squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.fixture(params=[Layout(1, 2), Layout(2, 1)], ids=["1x2", "2x1"])
def slurm_cluster(slurm_up: None, request: pytest.FixtureRequest) -> Iterator[tuple[Any, ...]]:
    """A started 2-rank Slurm cluster (1 node × 2 procs, then 2 nodes × 1 proc), its layout."""
    cluster, client = _start(cluster_kwargs("slurm", request.param))
    try:
        yield cluster, client, request.param
    finally:
        if cluster.engines:  # the test did not stop it
            _stop(cluster, client)


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_slurm_launcher_runs_horovod_under_mpiexec(slurm_cluster: tuple[Any, ...]) -> None:
    cluster, client, layout = slurm_cluster
    [engines] = cluster.engines.values()
    job_id = engines.job_id
    assert job_id in _squeue_ids()
    assert not os.path.exists(engines.batch_file)  # Slurm keeps its copy of the job script
    _check_horovod(client)
    assert query_state(job_id)[1] == "RUNNING"
    places = client[:].apply_sync(_slurm_place)
    assert [job for job, _ in places] == [job_id, job_id]
    assert len({node for _, node in places}) == layout.nodes, places

    _stop(cluster, client)
    assert _wait_until(lambda: job_id not in _squeue_ids(), timeout=30), "job still in squeue"


@contextmanager
def _slurm_busy() -> Iterator[str]:
    """Both Slurm nodes taken by another job, so a new job waits in the queue (PENDING)."""
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=2",
            "--exclusive",
            "--output=/dev/null",  # not slurm-<id>.out in the working directory
            "--wrap",
            "sleep 600",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    blocker = out.stdout.strip().split(";")[0]
    try:
        assert _wait_until(lambda: query_state(blocker)[1] == "RUNNING", 60)
        yield blocker
    finally:
        subprocess.run(["scancel", blocker], check=False)
        _wait_until(lambda: blocker not in _squeue_ids(), 30)


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_a_job_pending_past_the_timeout_is_cancelled(slurm_up: None) -> None:
    from dtrain_magics.cluster import TrainingCluster

    with _slurm_busy() as blocker:
        spec = LaunchSpec(launcher="slurm", options=(("slurm_pending_timeout", 5.0),))
        cluster = TrainingCluster(spec=spec)
        started = time.monotonic()
        with pytest.raises(ClusterStartError, match=r"stayed pending for .* and was cancelled"):
            cluster.ensure(Layout(1, 2), spec=spec)
        assert time.monotonic() - started < 60
        assert _wait_until(lambda: _squeue_ids() == {blocker}, 30), _squeue_ids()
        assert not cluster.processes()


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_interrupt_while_the_job_is_pending_cancels_it(slurm_up: None) -> None:
    from kernel_session import KernelSession

    with _slurm_busy() as blocker:
        session = KernelSession()
        try:
            assert session.run("%load_ext dtrain_magics").status == "ok"
            msg_id = session.submit(
                "%%distributed --launcher slurm --procs-per-node 2 --no-widget\nprint('hi')"
            )
            reply = session.collect(msg_id, until="is pending")
            assert reply.status == "running", reply.text
            [job] = _squeue_ids() - {blocker}
            assert query_state(job)[1] == "PENDING"
            session.km.interrupt_kernel()
            reply = session.collect(msg_id, timeout=60)
            assert reply.ename == "RunInterrupted", reply.text
            assert _wait_until(lambda: job not in _squeue_ids(), 30), "pending job not cancelled"
        finally:
            session.close()


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_slurm_start_from_inside_a_job_asks_squeue_sparingly(
    slurm_up: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtrain_magics.cluster import TrainingCluster

    calls = tmp_path / "squeue.log"
    wrapper = tmp_path / "squeue"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {shutil.which("squeue")} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    # the notebook runs inside a Slurm job: srun (Open MPI's, to reach the second node) refuses
    # these two together, and a job id that is not the new job's
    outer = {"SLURM_JOB_ID": "999999", "SLURM_MEM_PER_CPU": "100", "SLURM_MEM_PER_NODE": "200"}
    for name, value in outer.items():
        monkeypatch.setenv(name, value)
    cluster = TrainingCluster(launcher="slurm", profile="dtrain-launchers")
    started = time.monotonic()
    try:
        cluster.start(Layout(2, 1))
        took = time.monotonic() - started
        asked = calls.read_text().splitlines()
        print(f"[timing] slurm start {took:.1f} s, squeue asked {len(asked)} times")
        assert len(asked) <= took / 2 + 2, asked
        job_ids = {job for job, _ in cluster.client[:].apply_sync(_slurm_place)}
        assert len(job_ids) == 1 and "999999" not in job_ids, job_ids
        _check_horovod(cluster.client)
    finally:
        cluster.stop()


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_a_killed_kernel_cancels_its_slurm_job(slurm_up: None) -> None:
    from kernel_session import KernelSession

    session = KernelSession()
    try:
        assert session.run("%load_ext dtrain_magics").status == "ok"
        reply = session.run(
            "%%distributed --launcher slurm --procs-per-node 2 --no-widget\n"
            "import os\nprint('JOB', os.environ['SLURM_JOB_ID'])",
            timeout=180,
        )
        found = re.search(r"JOB (\d+)", reply.text)
        assert reply.status == "ok" and found, reply.text
        job = found.group(1)
        # --device auto on nodes without GPU gres: the start says that it asked for none
        assert f"Slurm job {job} submitted, without GPUs" in reply.text, reply.text
        assert job in _squeue_ids()
        kernel_pid = int(session.run("import os; print(os.getpid())").text)
        killed = time.monotonic()
        os.kill(kernel_pid, signal.SIGKILL)
        assert _wait_until(lambda: job not in _squeue_ids(), 15), "the job outlived the kernel"
        print(f"[timing] job {job} left squeue {time.monotonic() - killed:.1f} s after the kill")
    finally:
        session.kc.stop_channels()
        # also once the kernel is dead: it closes the manager's sockets, which would otherwise
        # hold pytest's exit (zmq's context waits for them)
        session.km.shutdown_kernel(now=True)


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_a_job_slurm_refuses_is_a_usage_error_and_the_running_cluster_stays(
    slurm_up: None, magics: Any
) -> None:
    magics.distributed("--nodes 2 --no-widget", "kept = rank")
    pids = [e.pid for e in magics.cluster.engines]
    for flags, reason in [
        ("--time-limit abc", "Invalid --time specification"),
        ("--partition nope", "invalid partition specified: nope"),
        ("--nodes 3", "allocation failure: Requested node configuration is not available"),
    ]:
        with pytest.raises(UsageError) as info:
            magics.distributed(f"--launcher slurm {flags} --no-widget", "x = rank")
        said = str(info.value)
        assert said.startswith(f"Slurm refused the engines' job ({reason}"), said
        assert said.endswith("--time-limit or --sbatch-option."), said
    assert magics.cluster.running and [e.pid for e in magics.cluster.engines] == pids
    magics.distributed("--nodes 2 --no-widget --pull kept", "kept = kept + 1")
    assert magics.shell.user_ns["kept"] == 1


@pytest.mark.cluster
@pytest.mark.timeout(240)
def test_a_job_sbatch_refuses_as_it_starts_says_why_and_leaves_nothing(
    slurm_up: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    """Past the check (Slurm's limits may change between the two): sbatch's reason, not a
    traceback of ipyparallel's; no scancel of no job; no job script left in the temp dir."""
    import tempfile

    from dtrain_magics.cluster import TrainingCluster

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    spec = LaunchSpec(launcher="slurm", options=(("slurm_time_limit", "abc"),))
    cluster = TrainingCluster(spec=spec, profile="dtrain-launchers")
    with pytest.raises(ClusterStartError) as info:
        cluster.start(Layout(2, 1))
    assert str(info.value).startswith(
        "Slurm refused the engines' job (Invalid --time specification); change --nodes"
    ), info.value
    assert not cluster.running and not cluster.processes()
    assert not list(tmp_path.glob("dtrain-engines-*.sbatch"))
    assert "scancel" not in capfd.readouterr().err
