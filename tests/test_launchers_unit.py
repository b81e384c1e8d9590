"""Without a cluster: which processes the cluster may stop, and the arguments and environment
the launchers give ``mpiexec`` for each MPI."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

from dtrain_magics.cluster.engine import share_cores
from dtrain_magics.cluster.launchers import LaunchSpec, Layout, check_spec, get_launcher
from dtrain_magics.cluster.launchers.base import (
    YIELD,
    check_horovod_build,
    find_supported_mpi,
    mpiexec_args,
    mpiexec_options,
    multi_host_environment,
    rank_environment,
)
from dtrain_magics.cluster.launchers.mpi import read_hostfile
from dtrain_magics.cluster.launchers.slurm import SlurmOptions, slurm_batch_template
from dtrain_magics.cluster.ranks import RankEngine, local_pids, signal_engines
from dtrain_magics.errors import ClusterStartError
from dtrain_magics.install import doctor
from dtrain_magics.install.facts import MpiInfo
from dtrain_magics.install.mpi_flavours import sharing_options, this_host_only


def test_only_engines_on_this_host_are_tracked_for_stopping() -> None:
    engines = [
        RankEngine(0, 10, os.getpid(), socket.gethostname()),
        RankEngine(1, 11, 4343, "node-b.example.org"),  # that pid here is another process
        RankEngine(2, 12, 4242, "localhost"),
    ]
    assert local_pids(engines) == {os.getpid(), 4242}


# -- the MPI found decides the options -----------------------------------------------------------

OMPI4 = MpiInfo("Open MPI", "4.1.8", "/opt/ompi4/bin/mpiexec", None)
OMPI5 = MpiInfo("Open MPI", "5.0.11", "/venv/bin/mpiexec", None)
MPICH = MpiInfo("MPICH", "5.0.2", "/venv/bin/mpiexec", None)
BANNERS = {
    "ompi4": "mpiexec (OpenRTE) 4.1.8\n\nReport bugs to http://www.open-mpi.org/community/help/",
    "mpich": "HYDRA build details:\n    Version:                                 4.1.2\n"
    "    Release Date:                            Wed Jun  7 15:22:45 CDT 2023",
    "intel": "Intel(R) MPI Library for Linux* OS, Version 2021.10 Build 20230619 (id: c2e19c2f3e)",
}


def test_open_mpi_4_and_5_get_their_own_options_and_transport() -> None:
    assert mpiexec_options(OMPI5) == [
        *("--map-by", ":OVERSUBSCRIBE", "--bind-to", "none", "--stdin", "none")
    ]
    assert mpiexec_options(OMPI4) == ["--oversubscribe", "--bind-to", "none", "--stdin", "none"]
    assert mpiexec_options(OMPI5, per_node=3)[:2] == ["--map-by", "ppr:3:node:OVERSUBSCRIBE"]
    assert mpiexec_options(OMPI4, per_node=3)[:3] == ["--map-by", "ppr:3:node", "--oversubscribe"]
    assert rank_environment(Layout(1, 2), OMPI5)["OMPI_MCA_btl"] == "self,sm"
    assert rank_environment(Layout(1, 2), OMPI4)["OMPI_MCA_btl"] == "self,vader"  # no sm in 4.x
    # the doctor's test run makes the same choice
    assert sharing_options(OMPI4)[0] == "--oversubscribe"
    assert doctor.run_environment(OMPI4, 2)["OMPI_MCA_btl"] == "self,vader"


def test_mpich_gets_hydras_options_and_ucx_on_loopback() -> None:
    report = "-print-all-exitcodes"  # Hydra's only word on a rank that exits; no --stdin none
    assert mpiexec_options(MPICH) == ["-bind-to", "none", report]
    assert mpiexec_options(MPICH, per_node=3) == ["-ppn", "3", "-bind-to", "none", report]
    assert this_host_only(MPICH) == ["-launcher", "fork", "-rmk", "user"]
    env = rank_environment(Layout(1, 2), MPICH)
    assert env["UCX_NET_DEVICES"] == "lo" and "OMPI_MCA_btl" not in env
    assert "UCX_NET_DEVICES" not in multi_host_environment(Layout(2, 1), False, MPICH)
    # Hydra passes the whole environment on: no Open MPI -x
    assert mpiexec_args({"A": "1"}, MPICH, 2) == ["-ppn", "2", "-bind-to", "none", report]
    assert doctor.run_environment(MPICH, 2)["UCX_NET_DEVICES"] == "lo"


def test_hostfiles_of_either_syntax_name_their_hosts(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a:4\nnode-b slots=2  # Open MPI's\n::1\n[::1]:2\n")
    assert read_hostfile(str(hostfile)) == ["node-a", "node-b", "::1", "[::1]:2"]


def _fake_mpiexec(folder: Path, banner: str) -> Path:
    """An ``mpiexec`` in ``folder`` that prints ``banner`` for ``--version``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "mpiexec"
    script.write_text(f"#!/bin/sh\ncat <<'END'\n{banner}\nEND\n")
    script.chmod(0o755)
    return script


def test_the_launchers_follow_the_version_of_the_mpiexec_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mpiexec = _fake_mpiexec(tmp_path / "bin", BANNERS["ompi4"])
    monkeypatch.setattr(sys, "prefix", str(tmp_path))  # the environment's own bin comes first
    assert find_supported_mpi() == MpiInfo("Open MPI", "4.1.8", str(mpiexec), None)
    config = get_launcher("local").cluster_kwargs(LaunchSpec(), Layout(1, 2))["config"]
    assert config.MPIEngineSetLauncher.mpi_cmd == [str(mpiexec)]
    assert "--oversubscribe" in config.MPIEngineSetLauncher.mpi_args
    assert ":OVERSUBSCRIBE" not in config.MPIEngineSetLauncher.mpi_args
    assert config.MPIEngineSetLauncher.environment["OMPI_MCA_btl"] == "self,vader"


def test_mpich_found_first_gets_hydras_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mpiexec = _fake_mpiexec(tmp_path / "bin", BANNERS["mpich"])
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    config = get_launcher("local").cluster_kwargs(LaunchSpec(), Layout(1, 2))["config"]
    assert config.MPIEngineSetLauncher.mpi_cmd == [str(mpiexec)]
    assert config.MPIEngineSetLauncher.mpi_args == [
        *("-bind-to", "none", "-print-all-exitcodes", "-launcher", "fork", "-rmk", "user")
    ]
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost:2\n")
    kwargs = get_launcher("mpi").cluster_kwargs(_mpi_spec(hostfile), Layout(1, 2))
    assert kwargs["config"].MPIEngineSetLauncher.mpi_args == [
        *("-hosts", "localhost", "-ppn", "2", "-bind-to", "none", "-print-all-exitcodes")
    ]
    # hosts as the hostfile writes them (srun inside an allocation knows no "localhost")
    hostfile.write_text(f"{socket.gethostname()}:2\nNode-B.example.org slots=2\nnode-b\n")
    kwargs = get_launcher("mpi").cluster_kwargs(_mpi_spec(hostfile), Layout(2, 1))
    hosts = f"{socket.gethostname()},Node-B.example.org"
    assert kwargs["config"].MPIEngineSetLauncher.mpi_args[:2] == ["-hosts", hosts]
    assert "UCX_NET_DEVICES" not in kwargs["config"].MPIEngineSetLauncher.environment
    # in a batch job Hydra starts its proxies on the allocation's nodes itself (srun)
    template = slurm_batch_template(Layout(2, 1), SlurmOptions(), {"A": "1"})
    assert f"exec {mpiexec} -bind-to none -print-all-exitcodes -n {{n}} " in template, template


@pytest.mark.parametrize(("mpi", "named"), [("intel", "Intel MPI 2021.10")])
def test_another_mpi_is_refused_before_the_cluster_is_touched(
    magics: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mpi: str, named: str
) -> None:
    mpiexec = _fake_mpiexec(tmp_path / "bin", BANNERS[mpi])
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    with pytest.raises(UsageError) as info:
        magics.distributed("--no-widget", "x = 1")
    message = str(info.value)
    assert message.startswith(f"{mpiexec} is {named}, but the cluster starts its ranks with Open")
    assert "Open MPI's or MPICH's mpiexec" in message
    assert 'pip install "dtrain-magics[mpi]"' in message and message.count(". ") == 0
    assert magics.cluster.status()["state"] == "stopped" and not magics.cluster.processes()

    # the same MPI first on PATH, where this environment has no mpiexec: put Open MPI first
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    with pytest.raises(UsageError, match="put Open MPI's or MPICH's mpiexec first on PATH"):
        magics.distributed("--no-widget", "x = 1")


# -- the mpi (hostfile) launcher -----------------------------------------------------------------


def _mpi_spec(hostfile: Path) -> LaunchSpec:
    return LaunchSpec("mpi", (("hostfile", str(hostfile)),))


def test_the_mpi_launcher_puts_procs_per_node_on_each_host(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=8\nnode-b.example.org slots=8\nnode-c slots=8\n")
    kwargs = get_launcher("mpi").cluster_kwargs(_mpi_spec(hostfile), Layout(2, 3))
    args = kwargs["config"].MPIEngineSetLauncher.mpi_args
    assert kwargs["n"] == 6
    assert args[:2] == ["--hostfile", str(hostfile)]
    assert args[2 : 2 + len(mpiexec_options(per_node=3))] == mpiexec_options(per_node=3)
    assert "ppr:3:node" in " ".join(args)


def test_the_controller_stays_on_loopback_when_the_hosts_used_are_this_machine(
    tmp_path: Path,
) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=2\nnode-b.example.org slots=2\n")
    one = get_launcher("mpi").cluster_kwargs(_mpi_spec(hostfile), Layout(1, 2))
    assert one["controller_ip"] == "127.0.0.1"  # --map-by ppr fills localhost only
    two = get_launcher("mpi").cluster_kwargs(_mpi_spec(hostfile), Layout(2, 1))
    assert two["controller_ip"] == "*"


def test_a_hostfile_naming_fewer_hosts_than_nodes_is_refused(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a slots=4\nnode-a slots=4\nnode-b\n")  # node-a's lines add slots
    check_spec(_mpi_spec(hostfile), Layout(2, 4))
    with pytest.raises(ClusterStartError) as info:
        check_spec(_mpi_spec(hostfile), Layout(3, 1))
    assert str(info.value) == (
        f"the hostfile {str(hostfile)!r} names 2 hosts (node-a, node-b) and --nodes asks for 3: "
        "add hosts to it or lower --nodes."
    )
    with pytest.raises(ClusterStartError, match="names 2 hosts"):
        get_launcher("mpi").cluster_kwargs(_mpi_spec(hostfile), Layout(3, 1))


# -- sharing the cores of each rank's host -------------------------------------------------------


def test_local_ranks_share_the_cores_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(YIELD, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})  # a cgroup's share
    env = rank_environment(Layout(1, 2), OMPI5)
    assert env["OMP_NUM_THREADS"] == "2" and YIELD not in env
    env = rank_environment(Layout(2, 2), OMPI5)
    assert env["OMP_NUM_THREADS"] == "1" and env[YIELD] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert rank_environment(Layout(2, 2), OMPI5)["OMP_NUM_THREADS"] == "3"
    # the doctor's test run shares the same cores
    assert doctor.run_environment(OMPI5, 2)["OMP_NUM_THREADS"] == "2"


def test_remote_ranks_get_no_share_of_the_notebook_hosts_cores(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(YIELD, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost\nnode-b.example.org\n")
    kwargs = get_launcher("mpi").cluster_kwargs(_mpi_spec(hostfile), Layout(2, 1))
    env = kwargs["config"].MPIEngineSetLauncher.environment
    assert "OMP_NUM_THREADS" not in env and YIELD not in env
    monkeypatch.setenv("OMP_NUM_THREADS", "6")  # the user's choice goes to every host
    kwargs = get_launcher("mpi").cluster_kwargs(_mpi_spec(hostfile), Layout(2, 1))
    assert kwargs["config"].MPIEngineSetLauncher.environment["OMP_NUM_THREADS"] == "6"
    assert "OMP_NUM_THREADS" in kwargs["config"].MPIEngineSetLauncher.mpi_args


def _rank_env(rank: int, size: int, here: int) -> dict[str, str]:
    """What Open MPI's mpiexec puts into a rank's environment."""
    return {
        "OMPI_COMM_WORLD_RANK": str(rank),
        "OMPI_COMM_WORLD_SIZE": str(size),
        "OMPI_COMM_WORLD_LOCAL_RANK": str(rank % here),
        "OMPI_COMM_WORLD_LOCAL_SIZE": str(here),
    }


def test_an_engine_shares_its_own_hosts_cores_where_the_launcher_did_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    env = _rank_env(5, 8, here=4)  # 4 ranks on a host of 8 cores
    share_cores(env)
    assert env["OMP_NUM_THREADS"] == "2" and YIELD not in env
    env = _rank_env(5, 16, here=8)
    share_cores(env)
    assert env["OMP_NUM_THREADS"] == "1" and env[YIELD] == "1"
    env = {**_rank_env(0, 2, here=2), "OMP_NUM_THREADS": "3", YIELD: "0"}  # launcher's or user's
    share_cores(env)
    assert env["OMP_NUM_THREADS"] == "3" and env[YIELD] == "0"
    env = {}  # not under mpiexec
    share_cores(env)
    assert env == {}


def test_the_mpi_launcher_forwards_where_programs_libraries_and_modules_are(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/lib")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost\nnode-b.example.org\n")
    config = get_launcher("mpi").cluster_kwargs(_mpi_spec(hostfile), Layout(2, 1))["config"]
    args = config.MPIEngineSetLauncher.mpi_args
    forwarded = {name for flag, name in itertools.pairwise(args) if flag == "-x"}
    assert {"PATH", "LD_LIBRARY_PATH", "IPP_CLUSTER_ID"} <= forwarded
    assert "PYTHONPATH" not in forwarded  # not set here: nothing to forward


# -- signals -------------------------------------------------------------------------------------


def test_a_signal_waits_for_no_nanny_that_never_answers() -> None:
    class LostNode:
        """A client whose nannies never answer (their node is gone)."""

        def send_signal(self, sig: int, targets: list[int], block: bool) -> Future[Any]:
            assert block is False and targets == [11]
            return Future()

    here = subprocess.Popen(["sleep", "60"])  # an engine on this host
    other = subprocess.Popen(["sleep", "60"])  # a process here with the remote engine's pid
    try:
        engines = [
            RankEngine(0, 10, here.pid, "localhost"),
            RankEngine(1, 11, other.pid, "node-b.example.org"),
        ]
        started = time.monotonic()
        signal_engines(LostNode(), engines, signal.SIGTERM, timeout=0.5)
        assert 0.5 <= time.monotonic() - started < 5
        assert here.wait(timeout=10) == -signal.SIGTERM
        assert other.poll() is None
    finally:
        for proc in (here, other):
            proc.kill()
            proc.wait(timeout=10)


# -- Horovod built for another MPI -----------------------------------------------------------------


def test_a_horovod_built_for_another_mpi_is_refused_in_one_sentence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    package = tmp_path / "horovod"  # found, never imported
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('horovod must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "horovod", raising=False)
    check_horovod_build(OMPI5)  # no marker: not built by install-horovod, nothing to compare
    marker = package / ".dtrain-build"
    marker.write_text("horovod-0.28.1-torch2.13.0_cpu-py311-ompi5.0.11\n")
    check_horovod_build(OMPI5)
    marker.write_text("horovod-0.28.1-torch2.13.0_cpu-py311-ompi5.0.9\n")
    check_horovod_build(OMPI5)  # a patch release of the same Open MPI keeps its ABI
    marker.write_text("horovod-0.28.1-torch2.13.0_cpu-py311-ompi4.1.8\n")
    with pytest.raises(ClusterStartError) as info:
        check_horovod_build(OMPI5)
    assert str(info.value) == (
        "Horovod was built for another MPI (ompi4.1.8) than the cluster's mpiexec, "
        "/venv/bin/mpiexec (ompi5.0.11): run `dtrain-magics install-horovod` to build it for "
        "this one, then %dtrain restart."
    )


def test_the_local_launcher_switches_off_open_mpis_slurm_components_per_version() -> None:
    assert this_host_only(OMPI5) == [*("--prtemca", "ras", "^slurm", "--prtemca", "plm", "^slurm")]
    assert this_host_only(OMPI4) == ["--mca", "ras", "^slurm", "--mca", "plm", "^slurm"]
    config = get_launcher("local").cluster_kwargs(LaunchSpec(), Layout(1, 2))["config"]
    assert config.MPIEngineSetLauncher.mpi_args[-6:] == this_host_only(find_supported_mpi())
