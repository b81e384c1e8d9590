"""Settings, the configuration form, and launchers through %%distributed, on the real stack."""

from __future__ import annotations

import html
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import rank_values
from IPython.core.error import UsageError
from kernel_session import KernelSession

import dtrain_magics
from dtrain_magics import ConfigPanel
from dtrain_magics.config.store import SettingsStore, load_file, save_file

ROOT = Path(__file__).resolve().parent.parent


def test_form_round_trips_to_settings_and_magic_line(magics: Any) -> None:
    panel = ConfigPanel(magics)
    panel.fields["nodes"].value = 2
    panel.fields["procs_per_node"].value = 3
    panel.fields["backend"].value = "torch"
    panel.fields["timeout"].value = "90"
    panel.fields["env"].value = "NCCL_DEBUG=INFO\nOMP_NUM_THREADS=1\nMSG=hello world"
    assert panel.magic_line == (  # quoted where a value has a space: it pastes as it reads
        "%%distributed --nodes 2 --procs-per-node 3 --backend torch "
        "--timeout 90 --env 'MSG=hello world' --env NCCL_DEBUG=INFO --env OMP_NUM_THREADS=1"
    )
    assert panel.apply()
    settings = magics.settings.defaults()
    assert (settings.nodes, settings.procs_per_node, settings.backend, settings.timeout) == (
        2,
        3,
        "torch",
        90.0,
    )
    assert settings.env == {"NCCL_DEBUG": "INFO", "OMP_NUM_THREADS": "1", "MSG": "hello world"}
    # the line parses back to the same settings
    line = panel.magic_line.removeprefix("%%distributed ")
    parsed, _, sources, _ = magics.parse(line)
    assert parsed.values() == settings.values() and sources == ""


def test_launcher_fields_show_only_for_their_launcher(magics: Any) -> None:
    panel = ConfigPanel(magics)
    shown = lambda: {n for n, r in panel.rows.items() if r.layout.display != "none"}  # noqa: E731
    assert "hostfile" not in shown() and "slurm_partition" not in shown()
    panel.fields["launcher"].value = "slurm"
    assert {"slurm_partition", "slurm_account", "slurm_time_limit"} <= shown()
    assert "hostfile" not in shown()
    panel.fields["launcher"].value = "mpi"
    assert "hostfile" in shown() and "slurm_partition" not in shown()
    # a hidden field is not applied (nor saved): it belongs to a launcher not chosen
    panel.fields["hostfile"].value = "/tmp"
    panel.fields["launcher"].value = "local"
    assert panel.apply()
    assert "hostfile" not in magics.settings.applied and "--hostfile" not in panel.magic_line


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("nodes", 0, "Nodes must be a positive integer up to 1024, got 0."),
        ("procs_per_node", -2, "Procs per node must be a positive integer up to 1024, got -2."),
        ("timeout", "-5", "Timeout (s) must be a positive number of seconds, got -5.0."),
        ("timeout", "soon", "Timeout (s) must be a positive number of seconds, got 'soon'."),
        ("env", "JUSTANAME", "Rank env takes NAME=VALUE, got 'JUSTANAME'."),
    ],
)
def test_invalid_values_are_marked_and_not_applied(
    magics: Any, name: str, value: Any, reason: str
) -> None:
    panel = ConfigPanel(magics)
    assert panel.apply() and "Applied" in panel.message.value
    panel.fields[name].value = value
    # named as the form labels it; no stale line to copy, no stale "Applied"
    assert reason in html.unescape(panel.errors[name].value)
    assert panel.magic_line == "" and panel.copy.value == "" and panel.message.value == ""
    assert not panel.apply()
    assert magics.settings.applied == {}
    assert "Not applied" in panel.message.value


def test_flags_beat_form_beats_file(tmp_path: Path) -> None:
    path = save_file({"nodes": 4, "backend": "torch"}, tmp_path / "c.json")
    store = SettingsStore()
    store.file_values = load_file(path)
    store.apply({**store.defaults().values(), "nodes": 3})
    settings, sources = store.resolve({"nodes": 2})
    assert (settings.nodes, settings.backend) == (2, "torch")
    assert sources == {"nodes": "flag", "backend": "config file"}
    settings, sources = store.resolve({})
    assert settings.nodes == 3 and sources["nodes"] == "form"


def test_broken_config_file_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"DistributedSettings": {"nodes": 0}}')
    with pytest.raises(Exception, match="--nodes must be a positive integer"):
        load_file(path)
    path.write_text('{"DistributedSettings": {"gpus": 2}}')
    with pytest.raises(Exception, match="unknown settings gpus"):
        load_file(path)


@pytest.mark.cluster
def test_apply_changes_what_the_next_cell_uses(ip: Any, cluster: Any) -> None:
    magics = dtrain_magics._magics
    panel = ConfigPanel(magics)
    panel.fields["nodes"].value = 2
    panel.fields["backend"].value = "torch"
    try:
        assert panel.apply()
        ip.run_cell_magic("distributed", "--no-widget", "facts = (size, 'dist' in globals())")
        assert rank_values(cluster, "facts") == [(2, True), (2, True)]
        assert "backend from the form" in dtrain_magics.last_run().options["sources"]
    finally:
        panel.reset()
        ip.run_cell_magic("distributed", "--nodes 2 --no-widget", "pass")
    assert magics.settings.applied == {}


@pytest.mark.cluster
def test_status_line_follows_runs(ip: Any, cluster: Any) -> None:
    panel = ConfigPanel(dtrain_magics._magics)
    shown: list[str] = []
    panel.status.observe(lambda change: shown.append(change["new"]), names="value")
    ip.run_cell_magic("distributed", "--nodes 2 --no-widget", "import time; time.sleep(0.5)")
    assert any("2 ranks" in s and "busy" in s for s in shown), shown
    assert "running, 2 ranks" in shown[-1] and shown[-1].endswith("idle</code>"), shown


def test_copy_button_carries_the_line_escaped() -> None:
    from dtrain_magics.ui.config_form import copy_button

    html = copy_button('%%distributed --env A="x<y"')
    assert 'data-line="%%distributed --env A=&quot;x&lt;y&quot;"' in html
    assert "navigator.clipboard.writeText(this.dataset.line)" in html


@pytest.mark.cluster
def test_start_and_stop_buttons_control_a_real_cluster(magics: Any) -> None:
    panel = ConfigPanel(magics)
    panel.fields["nodes"].value = 2
    panel.buttons["Start"].click()
    assert magics.cluster.running and len(magics.cluster.engines) == 2
    assert "running, 2 ranks" in panel.status.value and "idle" in panel.status.value
    pids = [p.pid for p in magics.cluster.processes()]
    panel.buttons["Stop"].click()
    assert not magics.cluster.running
    assert "not running" in panel.status.value
    import psutil

    assert not [
        p
        for p in pids
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]


def test_an_unreadable_hostfile_is_marked_in_the_form(magics: Any, tmp_path: Path) -> None:
    panel = ConfigPanel(magics)
    panel.fields["launcher"].value = "mpi"
    for path, reason in (
        (tmp_path / "missing", "No such file or directory"),
        (tmp_path, "Is a directory"),
    ):
        panel.fields["hostfile"].value = str(path)
        shown = html.unescape(panel.errors["hostfile"].value)
        assert f"cannot read the hostfile {str(path)!r}: {reason}." in shown, shown
        assert not panel.apply()
    assert magics.settings.applied == {}


@pytest.mark.cluster
def test_a_bad_hostfile_on_a_cell_keeps_the_running_cluster(
    ip: Any, cluster: Any, tmp_path: Path
) -> None:
    """It stopped the warm cluster (namespaces lost), then failed to start the new one."""
    ip.run_cell_magic("distributed", "--nodes 2", "important = rank * 100")
    pids = [e.pid for e in cluster.engines]
    line = f"--launcher mpi --hostfile {tmp_path / 'missing'}"
    with pytest.raises(
        UsageError, match=r"^cannot read the hostfile .*: No such file or directory\.$"
    ):
        ip.run_cell_magic("distributed", line, "x = 1")
    assert cluster.running and [e.pid for e in cluster.engines] == pids
    assert rank_values(cluster, "important") == [0, 100]


def test_start_and_restart_are_refused_while_a_cell_runs(magics: Any) -> None:
    panel = ConfigPanel(magics)
    magics.runner.gate.enter()  # as a running cell does
    try:
        for name in ("Start", "Restart"):
            panel.buttons[name].click()
            assert "A cell runs on the cluster: stop it first" in panel.message.value
        assert not magics.cluster.running
    finally:
        magics.runner.gate.leave()


@pytest.mark.cluster
def test_the_forms_stop_during_a_cell_stops_the_cell_then_the_cluster(
    kernel: KernelSession,
) -> None:
    """It stopped the cluster under the running cell, which then waited for ever."""
    shown = kernel.submit("%load_ext dtrain_magics\nform = %dtrain config\nform")
    stop = None
    while True:
        msg = kernel.kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != shown:
            continue
        state = msg["content"].get("data", {}).get("state", {})
        if msg["msg_type"] == "comm_open" and state.get("description") == "Stop":
            stop = msg["content"]["comm_id"]
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    assert stop is not None
    running = kernel.submit(
        "%%distributed --nodes 2 --no-widget\nimport time\nprint('looping', flush=True)\n"
        "while True:\n    time.sleep(0.05)\n"
    )
    assert kernel.collect(running, timeout=120, until="[rank 1] looping").status == "running"
    clicked = time.monotonic()
    click = {"comm_id": stop, "data": {"method": "custom", "content": {"event": "click"}}}
    kernel.kc.shell_channel.send(kernel.kc.session.msg("comm_msg", click))
    reply = kernel.collect(running, timeout=60)
    assert time.monotonic() - clicked < 15
    assert reply.status == "error" and "interrupted: every rank was stopped" in reply.text
    reply = kernel.run("%dtrain status\nprint(form.message.value)")
    assert "not running" in reply.text and "Cluster stopped." in reply.text, reply.text
    assert kernel.run("%%distributed --nodes 2 --no-widget\nx = 1", timeout=180).status == "ok"
    kernel.run("%dtrain stop")


@pytest.mark.cluster
def test_saved_settings_reach_a_fresh_kernel(tmp_path: Path) -> None:
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path)}
    first = KernelSession(env=env)
    try:
        reply = first.run(
            "%load_ext dtrain_magics\np = %dtrain config\n"
            "p.fields['nodes'].value = 2\np.fields['timeout'].value = '120'\n"
            "print(p.save())"
        )
        assert "True" in reply.text, reply.text
    finally:
        first.close()
    assert load_file(tmp_path / "dtrain_magics_config.json") == {"nodes": 2, "timeout": 120.0}
    second = KernelSession(env=env)
    try:
        second.run("%load_ext dtrain_magics")
        reply = second.run("%%distributed --no-widget\nprint('ranks', size)", timeout=120)
        assert "[rank 1] ranks 2" in reply.text, reply.text
        reply = second.run("print(_dtrain.options['sources'])")
        assert (
            "nodes from the config file" in reply.text
            and "timeout from the config file" in reply.text
        )
    finally:
        second.close()


def test_unknown_launcher_is_a_usage_error(magics: Any) -> None:
    with pytest.raises(UsageError, match="--launcher must be one of local, mpi, slurm, profile"):
        magics.parse("--launcher kubernetes")


@pytest.mark.cluster
def test_mpi_hostfile_launcher_through_the_magic(magics: Any, tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=2\n")
    ns = magics.shell.user_ns
    magics.distributed(
        f"--launcher mpi --hostfile {hostfile} --procs-per-node 2 --no-widget --pull total",
        "import torch\ntotal = hvd.allreduce(torch.tensor([rank + 1.0]), op=hvd.Sum).item()",
    )
    assert ns["total"] == 3.0 and magics.cluster.launcher == "mpi"
    with pytest.raises(Exception, match="cannot read the hostfile"):
        magics.distributed("--launcher mpi --hostfile /nonexistent/hosts --no-widget", "pass")


def _squeue() -> str:
    return subprocess.run(
        ["squeue", "-h", "-o", "%i %T %j"], capture_output=True, text=True, timeout=15
    ).stdout


@pytest.mark.cluster
def test_slurm_launcher_through_the_magic(magics: Any, slurm_up: None) -> None:
    magics.distributed(
        "--launcher slurm --procs-per-node 2 --no-widget --pull facts",
        "import os, torch\n"
        "facts = (hvd.allreduce(torch.tensor([rank + 1.0]), op=hvd.Sum).item(), "
        "os.environ.get('SLURM_JOB_ID'))",
    )
    total, job_id = magics.shell.user_ns["facts"]
    assert total == 3.0 and job_id
    assert f"{job_id} RUNNING" in _squeue()
    magics.dtrain("stop")
    assert job_id not in _squeue()


@pytest.mark.cluster
def test_profile_launcher_connects_and_never_stops_a_foreign_cluster(magics: Any) -> None:
    import ipyparallel as ipp

    from dtrain_magics.cluster.launchers import LaunchSpec, Layout, get_launcher

    kwargs = get_launcher("local").cluster_kwargs(LaunchSpec(), Layout(2, 1))
    foreign = ipp.Cluster(profile="dtrain-foreign", **kwargs)
    foreign.start_cluster_sync()
    try:
        magics.distributed(
            f"--launcher profile --profile dtrain-foreign --cluster-id {foreign.cluster_id} "
            "--no-widget --pull total",
            "import torch\ntotal = hvd.allreduce(torch.tensor([rank + 1.0]), op=hvd.Sum).item()",
        )
        assert magics.shell.user_ns["total"] == 3.0
        magics.dtrain("stop")
        client = foreign.connect_client_sync()
        client.wait_for_engines(2, timeout=30)
        assert len(client.ids) == 2  # still running: we only disconnected
        client.close()
    finally:
        foreign.stop_cluster_sync()


@pytest.mark.cluster
def test_a_rank_dying_in_a_foreign_cluster_disconnects_at_once(magics: Any) -> None:
    """Its mpiexec is not ours to read or restart: the cell waited 15 s for a report, then 120 s
    to connect to the engines MPI had ended, then failed to start (170 s in all)."""
    import ipyparallel as ipp

    from dtrain_magics.cluster.launchers import LaunchSpec, Layout, get_launcher
    from dtrain_magics.errors import RankError

    kwargs = get_launcher("local").cluster_kwargs(LaunchSpec(), Layout(2, 1))
    foreign = ipp.Cluster(
        profile="dtrain-foreign", controller_args=["--HeartMonitor.period=500"], **kwargs
    )
    foreign.start_cluster_sync()
    line = f"--launcher profile --profile dtrain-foreign --cluster-id {foreign.cluster_id}"
    try:
        magics.distributed(f"{line} --no-widget", "x = rank")
        started = time.monotonic()
        with pytest.raises(RankError) as info:
            magics.distributed(
                f"{line} --no-widget",
                "import os, torch\nfor i in range(1_000_000):\n    hvd.allreduce(torch.ones(1))\n"
                "    if rank == 1 and i == 50:\n        os._exit(3)",
            )
        took = time.monotonic() - started
        said = str(info.value)
        # MPI's report is not ours to read: which of the ranks it ended came first is unknown
        assert said.startswith("rank 1 died (") or "Rank 1 died with it" in said, said
        assert said.endswith(
            "the cluster was started elsewhere, the notebook disconnected from it: restart it "
            "(ipcluster stop, then ipcluster start), then run the cell."
        ), said
        assert took < 30, took
        assert not magics.cluster.running
        assert foreign.controller is not None and foreign.controller.running  # never stopped
    finally:
        foreign.stop_cluster_sync()


@pytest.mark.cluster
def test_a_profile_cluster_whose_engines_are_not_one_mpi_job_is_refused(magics: Any) -> None:
    import ipyparallel as ipp

    from dtrain_magics.errors import ClusterStartError

    plain = ipp.Cluster(profile="dtrain-plain", n=2, controller_ip="127.0.0.1")  # no mpiexec
    plain.start_cluster_sync()
    try:
        plain.connect_client_sync().wait_for_engines(2, timeout=60)
        with pytest.raises(ClusterStartError) as info:
            magics.distributed(
                f"--launcher profile --profile dtrain-plain --cluster-id {plain.cluster_id} "
                "--no-widget",
                "x = 1",
            )
        assert str(info.value) == (
            "the cluster's 2 engines are MPI ranks [0, 0], not one MPI job's: start its "
            "engines under MPI (ipcluster start --engines=mpi -n 2)."
        )
        assert not magics.cluster.running
    finally:
        plain.stop_cluster_sync()


def test_ipython_config_reaches_the_settings_in_a_real_kernel(tmp_path: Path) -> None:
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_config.py").write_text(
        "c.DistributedSettings.nodes = 3\nc.DistributedSettings.backend = 'torch'\n"
    )
    env = {
        **os.environ,
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "JUPYTER_CONFIG_DIR": str(tmp_path),
    }
    session = KernelSession(env=env)
    try:
        reply = session.run(
            "%load_ext dtrain_magics\nimport dtrain_magics\n"
            "settings, options, sources, _ = dtrain_magics._magics.parse('--timeout 5')\n"
            "print('resolved', options.nodes, options.backend, options.timeout)\n"
            "print('sources', sources)\n"
            "print('form', dtrain_magics.ConfigPanel().fields['nodes'].value)"
        )
        assert "resolved 3 torch 5.0" in reply.text, reply.text
        assert "backend from the IPython config, nodes from the IPython config" in reply.text
        assert "form 3" in reply.text
    finally:
        session.close()


def test_swallowed_errors_are_logged_with_their_trace(tmp_path: Path) -> None:
    env = {**os.environ, "DTRAIN_RUNS_DIR": str(tmp_path / "runs")}
    session = KernelSession(env=env)
    try:
        reply = session.run(
            "%load_ext dtrain_magics\n%dtrain status\n"
            "from dtrain_magics.store import kernel_state, paths\n"
            "paths.clusters_dir().parent.mkdir(parents=True, exist_ok=True)\n"
            "paths.clusters_dir().write_text('a file where a folder should be')\n"
            "kernel_state.publish({'state': 'stopped'})  # fails, must not raise\n"
            "from dtrain_magics.store.writer import writer\n"
            "writer.flush()\n"
            "print('published')"
        )
        assert "published" in reply.text, reply.text
        line = next(ln for ln in reply.text.splitlines() if ln.startswith("diagnostics log: "))
        log = Path(line.removeprefix("diagnostics log: "))
        assert log.parent == tmp_path / "runs" / "_logs"
        text = log.read_text()
        assert "could not write the cluster state file" in text and "Traceback" in text
    finally:
        session.close()
