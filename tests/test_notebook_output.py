"""What a notebook keeps of a run, through real kernels: rank output inline as %%px shows it,
one traceback numbered as the cell, a record that renders without a kernel, and cells that
run on the cluster as it is."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from kernel_session import KernelSession
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from nbformat.v4 import new_code_cell, new_notebook

pytestmark = pytest.mark.cluster


def _execute(cells: list[str], **kwargs: Any) -> Any:
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    NotebookClient(
        nb, timeout=240, kernel_name="python3", store_widget_state=True, allow_errors=True, **kwargs
    ).execute()
    return nb


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> Any:
    nb = _execute(
        [
            "%load_ext dtrain_magics",
            "%%distributed --nodes 2\nx = rank * 10\n"
            "if rank == 1:\n    print('only rank one speaks')",
            "%%distributed\nimport time\ntime.sleep(0.5)\nprint(rank, size, x)",
            "%%distributed --nodes 2\nimport torch\n"
            "total = hvd.allreduce(torch.ones(1), op=hvd.Sum)\n"
            "if rank == 1:\n    raise ValueError('rank one broke')",
            "import dtrain_magics\n"
            "print('pids', [e.pid for e in dtrain_magics._magics.cluster.engines])",
        ]
    )
    path = tmp_path_factory.mktemp("nb") / "saved.ipynb"
    nbformat.write(nb, path)
    return nbformat.read(path, as_version=4)  # as saved and reopened


def _text(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_rank_output_is_inline_and_silent_ranks_take_no_space(notebook: Any) -> None:
    first = notebook.cells[1]
    assert _text(first) == "[rank 1] only rank one speaks\n"
    streams = [o for o in first.outputs if o.output_type == "stream"]
    assert [o.name for o in streams] == ["stdout"]


def test_a_cell_without_flags_runs_on_the_running_cluster_as_it_is(notebook: Any) -> None:
    text = _text(notebook.cells[2])
    assert "[rank 0] 0 2 0" in text and "[rank 1] 1 2 10" in text  # x survived: no restart
    record = _record(notebook.cells[2])
    assert "restarted" not in record


def test_one_traceback_numbered_as_the_cell(notebook: Any) -> None:
    cell = notebook.cells[3]
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "RankError"
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(errors[0].traceback))
    assert f"In[{cell.execution_count}]" in traceback, traceback
    assert traceback.count("Traceback (most recent call last)") == 1
    everything_else = _text(cell) + "".join(
        o.get("data", {}).get("text/html", "") for o in cell.outputs if o.output_type != "error"
    )
    assert "Traceback" not in everything_else  # not again in the dashboard or the record
    assert "rank 1: ValueError: rank one broke" in re.sub("<[^>]+>", "", _record(cell))


def test_a_failed_ranks_log_holds_its_traceback(notebook: Any) -> None:
    """The rank's log file (``_dtrain.log(1)``) was empty: the error went to the cell only."""
    (run_dir,) = re.findall(r"logs and metrics: <code>([^<]+)</code>", _record(notebook.cells[3]))
    text = (Path(run_dir) / "rank-1.log").read_text()
    assert "ValueError: rank one broke" in text and "\x1b[" not in text, text


def _record(cell: Any) -> str:
    html = [
        o.data["text/html"]
        for o in cell.outputs
        if "dtrain-record" in o.get("data", {}).get("text/html", "")
    ]
    assert len(html) == 1, cell.outputs
    return str(html[0])


def test_records_survive_save_and_render_in_nbconvert_html(notebook: Any) -> None:
    for cell in notebook.cells[1:4]:
        for output in cell.outputs:
            assert "application/vnd.jupyter.widget-view+json" not in output.get("data", {})
    html, _ = HTMLExporter().from_notebook_node(notebook)
    assert html.count('class="dtrain-record"') == 3
    assert 'data-status="succeeded"' in html and 'data-status="failed"' in html
    assert "only rank one speaks" in html


def test_settings_applied_in_the_form_restart_the_cluster_and_say_so(tmp_path: Path) -> None:
    session = KernelSession(env={"JUPYTER_CONFIG_DIR": str(tmp_path), **_env()})
    try:
        assert session.run("%load_ext dtrain_magics").status == "ok"
        reply = session.run("%%distributed --nodes 2 --no-widget\nx = rank", timeout=180)
        assert reply.status == "ok", reply.text
        reply = session.run("%%distributed --no-widget\nprint('ranks', size)", timeout=120)
        assert "[rank 1] ranks 2" in reply.text and "restarted" not in reply.text
        session.run("p = %dtrain config\np.fields['nodes'].value = 3\nprint('applied', p.apply())")
        reply = session.run("%%distributed --no-widget\nprint('ranks', size)", timeout=180)
        assert "[rank 2] ranks 3" in reply.text, reply.text
        assert "The cluster was restarted (2 ranks" in reply.text
        assert "the settings applied in the form changed since it started" in reply.text
    finally:
        session.close()


def test_flags_change_only_what_they_name_and_the_ranks_keep_their_backend() -> None:
    """``--env`` alone keeps the running cluster's nodes; a cell without ``--backend`` keeps the
    ranks' backend; a record prints as it shows; stopping a restarted cluster prints no engine
    log (the kernel's diagnostics log keeps it)."""
    session = KernelSession(env=_env())
    try:
        assert session.run("%load_ext dtrain_magics").status == "ok"
        reply = session.run("%%distributed --nodes 2 --no-widget\nx = rank", timeout=180)
        assert reply.status == "ok", reply.text
        reply = session.run(
            "%%distributed --env DTRAIN_FLAG_TEST=kept --no-widget\n"
            "import os\nprint('seen', size, os.environ.get('DTRAIN_FLAG_TEST'))",
            timeout=180,
        )
        assert "[rank 1] seen 2 kept" in reply.text, reply.text
        assert (
            "The cluster was restarted (2 ranks (2 nodes × 1 proc), local launcher → 2 ranks "
            "(2 nodes × 1 proc), local launcher, --env DTRAIN_FLAG_TEST): this cell's flags ask "
            "for another cluster."
        ) in reply.text, reply.text
        reply = session.run(
            "%%distributed --backend torch --no-widget\nimport torch\nt = torch.ones(1)\n"
            "dist.all_reduce(t)",
            timeout=120,
        )
        assert reply.status == "ok", reply.text
        reply = session.run(
            "%%distributed --no-widget\nimport os\nt = torch.ones(1)\ndist.all_reduce(t)\n"
            "print('still', t.item(), 'hvd' in globals(), os.environ.get('DTRAIN_FLAG_TEST'))",
            timeout=120,
        )
        assert "[rank 1] still 2.0 False kept" in reply.text, reply.text
        assert "restarted" not in reply.text
        assert session.run("%dtrain restart", timeout=120).status == "ok"  # the ranks are new
        reply = session.run("%%distributed --no-widget\n'dist' in globals()", timeout=120)
        assert "Out[rank 0-1]: True" in reply.text, reply.text  # and keep the backend
        reply = session.run("%%distributed --backend horovod --no-widget\n'dist' in globals()")
        assert "Out[rank 0-1]: False" in reply.text, reply.text
        reply = session.run("print(_dtrain)")  # printed, not only shown as a cell's value
        assert re.search(r"<RunRecord \S+: succeeded in [\d.]+ s, 2 ranks; ", reply.text), reply
        for line in ("%dtrain restart", "%dtrain stop"):  # ipyparallel printed the engines'
            reply = session.run(line, timeout=120)  # log when it stopped them after a restart
            assert reply.status == "ok", reply.text
            assert "Output for" not in reply.text and "IPEngine" not in reply.text, reply.text
        reply = session.run(  # kept for a bug report instead, in the kernel's diagnostics log
            "from dtrain_magics.store import diagnostics\nprint(diagnostics.log_path().read_text())"
        )
        assert "WARNING dtrain_magics.ipyparallel: Output for ipengine" in reply.text, reply.text
    finally:
        session.close()


def test_cells_read_and_fail_as_local_cells_do() -> None:
    """IPython's syntax runs on the ranks; a syntax error shows as a local cell's, with
    nothing sent; top-level ``await`` (which ipyparallel's engines never
    answer) is refused so; ``sys.exit`` and ``--check-replicas`` fail with a sentence, not
    IPython's console hints or the injected check's line. Lines count from the first one under
    the magic, as a rank's traceback counts them."""
    plain = re.compile(r"\x1b\[[0-9;]*m")
    session = KernelSession(env=_env())
    try:
        assert session.run("%load_ext dtrain_magics").status == "ok"
        reply = session.run("%%distributed --nodes 2 --no-widget\nx = (1,\n")
        assert reply.ename == "SyntaxError", reply.text
        shown = plain.sub("", reply.text)
        assert "File <distributed cell>:1" in shown and "x = (1," in shown, shown
        assert "Traceback" not in shown and "magics.py" not in shown, shown
        assert "Starting 2 ranks" not in shown  # nothing was sent: no cluster was started
        reply = session.run(
            "%%distributed --nodes 2 --no-widget\n!echo shell $PPID\n%time y = 1", timeout=180
        )
        assert reply.status == "ok", reply.text
        assert "[rank 0] shell" in reply.text and "[rank 1] Wall time" in reply.text, reply.text
        reply = session.run("%%distributed --no-widget\nimport asyncio\nawait asyncio.sleep(0)")
        assert reply.ename == "SyntaxError", reply.text
        assert "the ranks cannot await at the top level of a cell" in reply.text, reply.text
        assert "File <distributed cell>:2" in plain.sub("", reply.text), reply.text
        reply = session.run("%%distributed --no-widget\nimport sys\nsys.exit(3)")
        assert reply.ename == "RankError" and "rank 0 failed with SystemExit: 3." in reply.text
        assert "%tb" not in reply.text and "To exit" not in reply.text, reply.text
        reply = session.run(
            "%%distributed --no-widget --check-replicas\nimport torch\n"
            "m = torch.nn.Linear(2, 2)\nif rank == 1:\n    torch.nn.init.zeros_(m.bias)\n"
            "    torch.nn.init.ones_(m.weight)\n"
        )
        assert reply.ename == "RankError", reply.text
        assert "rank 0 found that the replicas differ: rank 1 holds" in reply.text, reply.text
        assert "check_namespace" not in reply.text and "Traceback" not in reply.text, reply.text
        reply = session.run(
            "%%distributed --no-widget\nclass Bad:\n    def __repr__(self):\n"
            "        raise RuntimeError(f'repr exploded on {rank}')\n"
            "Bad() if rank == 1 else 'fine'"
        )  # an error in showing the value, named as the rank's traceback names it
        assert "rank 1 failed with RuntimeError: repr exploded on 1." in reply.text, reply.text
        reply = session.run(
            "%%distributed --no-widget\nraise ValueError('\\x1b[1mbold\\x1b[0m words')"
        )
        assert "rank 0 failed with ValueError: bold words." in reply.text, reply.text
        reply = session.run("%%distributed --no-widget\nimport torch.distributed as d\nd.barrier()")
        assert "(torch.distributed is set up by --backend torch: run the cell with it)." in (
            reply.text
        ), reply.text
        reply = session.run("%%distributed --no-widget\nprint('after', y)")
        assert "[rank 1] after 1" in reply.text, reply.text  # the ranks and namespaces stay
    finally:
        session.close()


def test_a_second_cluster_that_crowds_the_cores_is_named_once() -> None:
    first, second = KernelSession(env=_env()), KernelSession(env=_env())
    try:
        for session in (first, second):
            assert session.run("%load_ext dtrain_magics").status == "ok"
        reply = first.run("%%distributed --nodes 2 --no-widget\nx = 1", timeout=180)
        assert reply.status == "ok", reply.text
        reply = second.run("%%distributed --nodes 2 --no-widget\nx = 1", timeout=180)
        # other kernels on this machine may run clusters too: at least this test's 2 ranks
        assert re.search(r"Another notebook's cluster already runs \d+ ranks", reply.text), (
            reply.text
        )
        reply = second.run("%%distributed --nodes 1 --no-widget\nx = 1", timeout=180)
        assert "Another notebook's cluster" not in reply.text  # said once
    finally:
        first.close()
        second.close()


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
