"""Each rank's value of a cell's last expression, as ``%%px`` shows it, through real kernels:
labelled by rank, the same value once for all the ranks that have it, rich reprs as in a plain
cell, in the dashboard's and the text view's runs alike, and kept in the saved notebook."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from nbformat.v4 import new_code_cell, new_notebook

import dtrain_magics

pytestmark = pytest.mark.cluster

RICH = """%%distributed
class Table:  # what a DataFrame is to IPython: HTML beside a text repr
    def _repr_html_(self):
        return f"<table class='shard'><tr><td>rows of rank {rank}</td></tr></table>"
    def __repr__(self):
        return f"Table(rank={rank})"
Table()"""

FIGURE = """%%distributed
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(2, 2))
ax.plot([0, 1], [0, rank + 1])
plt.close(fig)
fig"""


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> Any:
    nb = new_notebook(
        cells=[
            new_code_cell(c)
            for c in (
                "%load_ext dtrain_magics",
                "%%distributed --nodes 2\nrank * 10",
                "%%distributed\nsize",
                RICH,
                FIGURE,
                "%%distributed --no-widget\n{'rank': rank, 'lines': list(range(40))}",
                "%%distributed\nimport time\ntime.sleep(1.5)  # long enough for the dashboard\n"
                "f'rank {rank} slept'",
                "%%distributed\nx = rank\nx;",
                "import json, dtrain_magics\n"
                "print(json.dumps([r.values for r in dtrain_magics.runs()]))",
            )
        ]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    NotebookClient(nb, timeout=240, kernel_name="python3", store_widget_state=True).execute()
    path = tmp_path_factory.mktemp("nb") / "values.ipynb"
    nbformat.write(nb, path)
    return nbformat.read(path, as_version=4)  # as saved and reopened


def _shown(cell: Any) -> list[dict[str, Any]]:
    """The cell's display outputs after its run's record: the ranks' outputs."""
    outputs = [o for o in cell.outputs if o.output_type == "display_data"]
    records = [i for i, o in enumerate(outputs) if "dtrain-record" in o.data.get("text/html", "")]
    return [dict(o.data) for o in outputs[records[-1] + 1 :]] if records else []


def _texts(cell: Any) -> list[str]:
    return [o.get("text/plain", "") for o in _shown(cell)]


def test_each_rank_value_labelled_by_rank(notebook: Any) -> None:
    assert _texts(notebook.cells[1]) == ["Out[rank 0]: 0", "Out[rank 1]: 10"]


def test_the_same_value_is_shown_once_for_every_rank(notebook: Any) -> None:
    assert _texts(notebook.cells[2]) == ["Out[rank 0-1]: 2"]


def test_rich_reprs_as_a_plain_cell_shows_them(notebook: Any) -> None:
    shown = _shown(notebook.cells[3])
    assert [o.get("text/plain") for o in shown] == [
        "Out[rank 0]:",
        "Table(rank=0)",
        "Out[rank 1]:",
        "Table(rank=1)",
    ]
    assert "<table class='shard'><tr><td>rows of rank 0</td>" in shown[1]["text/html"]
    assert "rows of rank 1" in shown[3]["text/html"]


def test_a_figure_is_a_png_per_rank(notebook: Any) -> None:
    shown = _shown(notebook.cells[4])
    assert [o.get("text/plain", "").split(" ")[0] for o in shown] == [
        "Out[rank",
        "<Figure",
        "Out[rank",
        "<Figure",
    ]
    pngs = [o["image/png"] for o in shown if "image/png" in o]
    assert len(pngs) == 2 and pngs[0] != pngs[1]  # each rank drew its own line


def test_the_text_view_shows_values_too(notebook: Any) -> None:
    cell = notebook.cells[5]
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    assert "[dtrain] succeeded · 2 ranks" in text
    values = [
        o.data["text/plain"]
        for o in cell.outputs
        if o.output_type == "display_data" and "Out[" in o.data.get("text/plain", "")
    ]
    assert len(values) == 2
    assert values[0].startswith("Out[rank 0]:\n{'rank': 0,")  # a multi-line repr: on its own
    assert values[1].startswith("Out[rank 1]:\n{'rank': 1,")


def test_after_the_dashboard_and_without_a_value(notebook: Any) -> None:
    cell = notebook.cells[6]
    assert _texts(cell) == ["Out[rank 0]: 'rank 0 slept'", "Out[rank 1]: 'rank 1 slept'"]
    for output in cell.outputs:
        assert "application/vnd.jupyter.widget-view+json" not in output.get("data", {})
    assert _shown(notebook.cells[7]) == []  # `x;` shows nothing, as in a plain cell


def test_the_record_keeps_the_values(notebook: Any) -> None:
    printed = "".join(o.get("text", "") for o in notebook.cells[8].outputs)
    values = json.loads(printed)
    assert values[0] == [{"ranks": [0], "text": "0"}, {"ranks": [1], "text": "10"}]
    assert values[1] == [{"ranks": [0, 1], "text": "2"}]
    assert values[-1] == []  # `x;`
    html, _ = HTMLExporter().from_notebook_node(notebook)
    assert "Out[rank 0-1]: 2" in html and "rows of rank 1" in html


def test_values_in_run_json_and_the_run_record(ip: Any, cluster: Any, capsys: Any) -> None:
    ip.run_cell_magic("distributed", "--nodes 2", "rank // 2")
    assert "Out[rank 0-1]: 0" in capsys.readouterr().out
    record = dtrain_magics.last_run()
    assert record is not None and record.values == [{"ranks": [0, 1], "text": "0"}]
    summary = json.loads((Path(record.dir) / "run.json").read_text())
    assert summary["values"] == [{"ranks": [0, 1], "text": "0"}]
    ip.run_cell_magic("distributed", "--nodes 2 --ranks 1", "'only rank one'")
    assert re.search(r"Out\[rank 1\]: 'only rank one'", capsys.readouterr().out)
