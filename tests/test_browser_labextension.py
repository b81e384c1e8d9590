"""In real JupyterLab and headless Chromium: the sidebar, the command and the status bar item."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import nbformat
import pytest
from lab_server import LabServer, chromium_page, lab_server, screenshot
from nbformat.v4 import new_code_cell, new_notebook

pytestmark = [pytest.mark.cluster, pytest.mark.browser]

SHORT = """import time
for i in dtrain.progress(range(50), desc="steps"):
    dtrain.log(loss=1.0 / (i + 1))
    time.sleep(0.1)
"""
LONG = """import time
for i in dtrain.progress(range(3000), desc="long"):
    dtrain.log(loss=1.0 / (i + 1))
    time.sleep(0.1)
"""
SIDEBAR_TAB = "[data-id='dtrain-magics-sidebar']"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabServer, Any]]:
    """JupyterLab with a notebook of two plain cells (no magic, no %load_ext) open in Chromium."""
    root = tmp_path_factory.mktemp("lab")
    nb = new_notebook(
        cells=[
            new_code_cell(SHORT),
            new_code_cell(LONG),
            new_code_cell("%load_ext dtrain_magics\n%dtrain config"),
            new_code_cell("\n%%distributed --ranks 0\nprint('only', rank)"),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)"}
    nbformat.write(nb, root / "train.ipynb")
    with lab_server(root) as server, chromium_page() as page:
        server.put_settings({"nodes": 2, "pollInterval": 500})
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base)
        page.goto(server.url("lab/tree/train.ipynb"))
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=90_000)
        news = page.get_by_text("Would you like to get notified")
        if news.count():  # JupyterLab's news prompt would cover part of the screenshots
            page.get_by_role("button", name="No", exact=True).click()
        yield server, page


def _cell(page: Any, index: int) -> Any:
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def _select(page: Any, index: int) -> None:
    _cell(page, index).locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")  # command mode


def test_extension_activates(lab: tuple[LabServer, Any]) -> None:
    _, page = lab
    page.locator(SIDEBAR_TAB).click()
    sidebar = page.locator(".dtrain-Sidebar")
    sidebar.get_by_text("Distributed training").wait_for(timeout=30_000)
    sidebar.get_by_text("No cluster").wait_for(timeout=30_000)
    assert page.locator(".dtrain-StatusItem").inner_text() == "dtrain: no cluster"
    # the command is in the palette, the notebook toolbar and the cell context menu
    toolbar = page.locator(".jp-NotebookPanel-toolbar")
    assert toolbar.locator("[data-command='dtrain-magics:run-cell-distributed']").count() == 1
    _cell(page, 0).locator(".jp-InputArea-editor").click(button="right")
    menu = page.locator(".lm-Menu")
    menu.get_by_text("Run Cell Distributed").wait_for(timeout=10_000)
    page.keyboard.press("Escape")
    page.keyboard.press("Control+Shift+C")
    palette = page.locator("#command-palette")
    palette.locator("input").fill("Run Cell Distributed")
    palette.locator(".lm-CommandPalette-item", has_text="Run Cell Distributed").wait_for(
        timeout=10_000
    )
    page.keyboard.press("Escape")


def test_shortcut_runs_the_cell_on_two_ranks(lab: tuple[LabServer, Any]) -> None:
    _, page = lab
    _select(page, 0)
    page.keyboard.press("Control+Shift+Enter")
    sidebar = page.locator(".dtrain-Sidebar")
    run = sidebar.locator(".dtrain-Run").first
    try:
        run.and_(page.locator("[data-status='running']")).wait_for(timeout=150_000)
        page.locator(".dtrain-StatusItem").filter(has_text="dtrain: 2 ranks · busy").wait_for(
            timeout=30_000
        )
        screenshot(page, "sidebar-running.png")
        run.and_(page.locator("[data-status='succeeded']")).wait_for(timeout=120_000)
    except Exception:
        screenshot(page, "sidebar-run-failed.png")
        raise
    assert run.locator(".dtrain-Run-progress").evaluate("bar => bar.value") == 1
    assert "loss" in run.locator(".dtrain-Run-metrics").inner_text()
    assert "2 ranks" in run.inner_text()
    # the cell ran under %%distributed but was left as the user wrote it
    record = _cell(page, 0).locator(".dtrain-record")
    record.locator(".dtrain-status").filter(has_text="succeeded").wait_for(timeout=30_000)
    assert "%%distributed" not in _cell(page, 0).locator(".jp-InputArea").inner_text()
    page.locator(".dtrain-StatusItem").filter(has_text="dtrain: 2 ranks · idle").wait_for(
        timeout=30_000
    )
    screenshot(page, "sidebar.png")


def test_sidebar_stop_interrupts_a_long_run(lab: tuple[LabServer, Any]) -> None:
    _, page = lab
    _select(page, 1)
    page.locator(
        ".jp-NotebookPanel-toolbar [data-command='dtrain-magics:run-cell-distributed']"
    ).click()
    run = page.locator(".dtrain-Run").first
    running = run.and_(page.locator("[data-status='running']"))
    running.wait_for(timeout=60_000)
    run.locator(".dtrain-Run-metrics").wait_for(timeout=30_000)  # training has started
    running.get_by_role("button", name="Stop").click()
    run.and_(page.locator("[data-status='interrupted']")).wait_for(timeout=60_000)
    _cell(page, 1).locator(".dtrain-status").filter(has_text="interrupted").wait_for(timeout=30_000)
    page.locator(".dtrain-StatusItem").filter(has_text="idle").wait_for(timeout=30_000)


def test_clicking_a_run_opens_its_cell(lab: tuple[LabServer, Any]) -> None:
    _, page = lab
    assert "long" in page.locator(".jp-Cell.jp-mod-active").inner_text()
    page.locator(".dtrain-Run[data-status='succeeded'] .dtrain-Row-name").first.click()
    page.locator(".jp-Cell.jp-mod-active").filter(has_text="steps").wait_for(timeout=15_000)


def test_cluster_restart_and_stop_from_the_sidebar(lab: tuple[LabServer, Any]) -> None:
    _, page = lab
    cluster = page.locator(".dtrain-Cluster").first
    before = cluster.get_attribute("data-cluster-id")
    assert before
    cluster.get_by_role("button", name="Restart").click()
    page.wait_for_function(
        """before => {
            const row = document.querySelector('.dtrain-Cluster');
            return row && row.dataset.state === 'idle' && row.dataset.clusterId !== before
                && row.dataset.clusterId !== '';
        }""",
        arg=before,
        timeout=120_000,
    )
    cluster.get_by_role("button", name="Stop").click()
    page.locator(".dtrain-Cluster[data-state='stopped']").wait_for(timeout=60_000)
    page.locator(".dtrain-StatusItem").filter(has_text="dtrain: stopped").wait_for(timeout=30_000)


def test_config_form_copies_its_magic_line(lab: tuple[LabServer, Any]) -> None:
    """The form of %dtrain config (core widgets) copies the equivalent line to the clipboard."""
    _, page = lab
    _select(page, 2)
    page.keyboard.press("Shift+Enter")
    copy = _cell(page, 2).locator("button.dtrain-copy")
    copy.wait_for(timeout=60_000)
    line = copy.get_attribute("data-line")
    assert line and line.startswith("%%distributed"), line
    copy.click()
    _cell(page, 2).get_by_role("button", name="Copied").wait_for(timeout=10_000)
    assert page.evaluate("navigator.clipboard.readText()") == line


def test_a_cell_with_its_own_line_after_a_blank_one_runs_as_written(
    lab: tuple[LabServer, Any],
) -> None:
    """Run Cell Distributed put a second %%distributed above it (IPython drops the blank
    line, so the ranks got the cell's own line as code: a UsageError on each)."""
    _, page = lab
    _select(page, 3)
    page.keyboard.press("Control+Shift+Enter")
    cell = _cell(page, 3)
    cell.locator(".dtrain-status").filter(has_text="succeeded").wait_for(timeout=120_000)
    output = cell.locator(".jp-OutputArea").inner_text()
    assert "[rank 0] only 0" in output and "rank 1" not in output.replace("1 rank", ""), output
    assert "UsageError" not in output


def test_insert_magic_setting_writes_the_line_into_the_cell(lab: tuple[LabServer, Any]) -> None:
    server, page = lab
    server.put_settings({"nodes": 2, "pollInterval": 500, "insertMagic": True})
    page.reload()  # JupyterLab reads settings changed outside the page when it loads
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=90_000)
    _select(page, 0)
    page.keyboard.press("Control+Shift+Enter")
    source = _cell(page, 0).locator(".jp-InputArea")
    source.filter(has_text="%%distributed --nodes 2").wait_for(timeout=15_000)
    status = _cell(page, 0).locator(".dtrain-status")
    status.filter(has_text="succeeded").wait_for(timeout=120_000)
