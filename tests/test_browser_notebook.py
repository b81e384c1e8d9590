"""In real JupyterLab and headless Chromium: the kernel shows Busy for a whole %%distributed cell,
the status bar follows the run, Run Cell Distributed keeps the cluster and clears the edited
marker, the form updates as one types, and the sidebar names runs as a person needs."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import nbformat
import pytest
from lab_server import LabServer, chromium_page, lab_server, screenshot
from nbformat.v4 import new_code_cell, new_notebook

pytestmark = [pytest.mark.cluster, pytest.mark.browser]

CELLS = [
    "%load_ext dtrain_magics",
    "%%distributed --nodes 2\nimport time\nx = rank * 10\ntime.sleep(3)",
    "print(rank, size, x)",
    "%dtrain config",
    "%%distributed --nodes 1\nimport torch\nfor i in dtrain.progress(range(30)):\n"
    "    dtrain.log(loss=1.0 / (i + 1))\n    time.sleep(0.05)\n"
    "if rank == 0:\n    raise RuntimeError('stopped on purpose')",
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabServer, Any]]:
    root = tmp_path_factory.mktemp("lab")
    nb = new_notebook(cells=[new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)"}
    nbformat.write(nb, root / "runs.ipynb")
    with lab_server(root) as server, chromium_page() as page:
        server.put_settings({"nodes": 0, "procsPerNode": 0, "pollInterval": 750})
        page.goto(server.url("lab/tree/runs.ipynb"))
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=90_000)
        news = page.get_by_text("Would you like to get notified")
        if news.count():
            page.get_by_role("button", name="No", exact=True).click()
        yield server, page


def _cell(page: Any, index: int) -> Any:
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def _run(page: Any, index: int, keys: str = "Shift+Enter") -> None:
    _cell(page, index).locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")
    page.keyboard.press(keys)


def _kernel_status(page: Any) -> str:
    return str(page.locator(".jp-Notebook-ExecutionIndicator").get_attribute("data-status"))


def test_kernel_is_busy_for_the_whole_cold_cell_and_the_status_bar_follows(
    lab: tuple[LabServer, Any],
) -> None:
    _, page = lab
    _run(page, 0)
    page.locator(".jp-StatusItem, .dtrain-StatusItem").first.wait_for(timeout=30_000)
    _run(page, 1)
    record = _cell(page, 1).locator(".dtrain-record")
    status_item = page.locator(".dtrain-StatusItem")
    samples, busy_seen_at, running_seen_at = [], None, None
    deadline = time.monotonic() + 180
    while not record.count() and time.monotonic() < deadline:
        samples.append(_kernel_status(page))
        now = time.monotonic()
        running = _cell(page, 1).locator(".dtrain-status").filter(has_text="running").count()
        if running and running_seen_at is None:
            running_seen_at = now
        if "busy" in status_item.inner_text() and busy_seen_at is None:
            busy_seen_at = now
        time.sleep(0.2)
    assert record.count(), "the cell did not finish"
    assert samples and all(s == "busy" for s in samples[2:]), samples
    assert running_seen_at is not None and busy_seen_at is not None
    assert busy_seen_at - running_seen_at < 1.5, (running_seen_at, busy_seen_at)
    ended = time.monotonic()
    status_item.filter(has_text="idle").wait_for(timeout=5_000)
    assert time.monotonic() - ended < 1.5


def test_run_cell_distributed_keeps_the_cluster_and_clears_the_edited_mark(
    lab: tuple[LabServer, Any],
) -> None:
    _, page = lab
    _run(page, 2, "Control+Shift+Enter")
    output = _cell(page, 2).locator(".jp-OutputArea")
    output.get_by_text("[rank 1] 1 2 10").wait_for(timeout=60_000)
    assert "restarted" not in output.inner_text()
    editor = _cell(page, 2).locator(".jp-InputArea-editor")
    editor.click()
    page.keyboard.press("End")
    page.keyboard.type("  # edited")
    page.keyboard.press("Escape")
    page.wait_for_function(
        "() => document.querySelectorAll('.jp-Cell')[2].classList.contains('jp-mod-dirty')",
        timeout=10_000,
    )
    page.keyboard.press("Control+Shift+Enter")
    page.wait_for_function(
        "() => !document.querySelectorAll('.jp-Cell')[2].classList.contains('jp-mod-dirty')",
        timeout=60_000,
    )


def test_the_form_follows_typing_and_names_fields_as_labelled(lab: tuple[LabServer, Any]) -> None:
    _, page = lab
    _run(page, 3)
    form = _cell(page, 3).locator(".jp-OutputArea")
    nodes = _row(page, form, "Nodes").locator("input").first
    nodes.wait_for(timeout=60_000)
    launcher_row = _row(page, form, "Launcher")
    before = launcher_row.bounding_box()
    nodes.fill("3")  # no blur: the line follows the typing
    form.locator("code", has_text="--nodes 3").wait_for(timeout=10_000)
    nodes.fill("0")
    form.get_by_text("Nodes must be a positive integer up to 1024, got 0.").wait_for(timeout=10_000)
    assert form.locator("button.dtrain-copy").count() == 0  # no stale line to copy
    assert form.get_by_text("Correct the marked fields").count() == 1
    assert launcher_row.bounding_box() == before  # the error did not move the form
    nodes.fill("2")
    form.locator("button.dtrain-copy").wait_for(timeout=10_000)


def test_the_sidebar_names_runs_and_colours_them_by_status(lab: tuple[LabServer, Any]) -> None:
    _, page = lab
    _run(page, 4)
    _cell(page, 4).locator(".dtrain-record[data-status='failed']").wait_for(timeout=180_000)
    page.locator("[data-id='dtrain-magics-sidebar']").click()
    sidebar = page.locator(".dtrain-Sidebar")
    run = sidebar.locator(".dtrain-Run[data-status='failed']").first
    run.wait_for(timeout=30_000)
    assert run.get_by_role("button", name="Stop").count() == 0  # finished: nothing to stop
    assert "1 rank ·" in run.inner_text() and "1 ranks" not in run.inner_text()
    name = run.locator(".dtrain-Row-name")
    assert name.get_attribute("title") == "runs.ipynb"
    where = run.locator(".dtrain-Run-where").inner_text()
    assert where.startswith("cell [") and "started " in where
    colour = run.locator(".dtrain-Run-progress").evaluate(
        "bar => getComputedStyle(bar).accentColor"
    )
    error = page.evaluate(
        "getComputedStyle(document.body).getPropertyValue('--jp-error-color1').trim()"
    )
    assert colour and colour != "auto", colour
    assert _same_colour(page, colour, error)
    elapsed = _cell(page, 4).locator(".dtrain-record .dtrain-status").locator("..").inner_text()
    shown = run.locator(".dtrain-Row-detail").inner_text()
    seconds = elapsed.split(" · ")[4]  # the record's elapsed time, as the dashboard shows it
    assert seconds in shown, (elapsed, shown)
    page.locator(".dtrain-StatusItem").filter(has_text="dtrain: 1 rank · idle").wait_for(
        timeout=5_000
    )
    screenshot(page, "sidebar-failed.png")


def _row(page: Any, form: Any, label: str) -> Any:
    """The form's row of the field labelled ``label``."""
    exact = page.locator(".widget-label").filter(has_text=re.compile(f"^{re.escape(label)}$"))
    return form.locator(".widget-hbox").filter(has=exact).last


def _same_colour(page: Any, a: str, b: str) -> bool:
    """Whether two CSS colours are the same colour (as the browser resolves them)."""
    resolve = (
        "c => { const d = document.createElement('div'); d.style.color = c;"
        " document.body.appendChild(d); const v = getComputedStyle(d).color;"
        " d.remove(); return v; }"
    )
    return bool(page.evaluate(resolve, a) == page.evaluate(resolve, b))
