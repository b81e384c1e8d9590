"""In real JupyterLab and headless Chromium: a %%distributed cell shows its live dashboard."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from lab_server import chromium_page, lab_server, screenshot
from nbformat.v4 import new_code_cell, new_notebook

pytestmark = [pytest.mark.cluster, pytest.mark.browser]


def wait_or_screenshot(page: Any, locator: Any, timeout: int, name: str) -> None:
    """Wait for ``locator``; if it never comes, keep a screenshot ``name`` of the page."""
    try:
        locator.wait_for(timeout=timeout)
    except Exception:
        screenshot(page, name)
        raise


@contextlib.contextmanager
def running_dashboard(tmp_path: Path, name: str, cell: str) -> Iterator[tuple[Any, Any]]:
    """JupyterLab on a notebook of ``%load_ext`` and ``cell``, both run: (page, dashboard) once
    the dashboard says running (a screenshot ``<name>-dashboard-missing.png`` if it never does)."""
    nb = new_notebook(cells=[new_code_cell("%load_ext dtrain_magics"), new_code_cell(cell)])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nbformat.write(nb, tmp_path / f"{name}.ipynb")
    with lab_server(tmp_path) as server, chromium_page() as page:
        page.goto(server.url(f"lab/tree/{name}.ipynb"))
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=90_000)
        page.locator(".jp-Cell").first.click()
        page.keyboard.press("Shift+Enter")
        page.keyboard.press("Shift+Enter")
        dashboard = page.locator(".dtrain-dashboard")
        running = dashboard.locator(".dtrain-status").filter(has_text="running")
        wait_or_screenshot(page, running, 120_000, f"{name}-dashboard-missing.png")
        yield page, dashboard


CELL = """%%distributed --nodes 2
import math, time
for i in dtrain.progress(range(60), desc="epoch"):
    dtrain.log(loss=math.exp(-i / 15) + 0.05 * rank, accuracy=1 - math.exp(-i / 12), samples=32)
    time.sleep(0.05)
print(f"rank {rank} done")
"""


def test_dashboard_shows_progress_to_completion(tmp_path: Path) -> None:
    with running_dashboard(tmp_path, "dashboard", CELL) as (page, dashboard):
        # both ranks have reported progress (their rates show)
        dashboard.get_by_text(" it/s").nth(1).wait_for(timeout=60_000)
        assert dashboard.locator(".widget-hprogress").count() == 2
        dashboard.scroll_into_view_if_needed()
        dashboard.screenshot(
            path=str(screenshot(page, "dashboard-page.png").with_name("dashboard.png"))
        )
        # once the run ends, a static record takes the dashboard's place
        record = page.locator(".dtrain-record")
        record.locator(".dtrain-status").filter(has_text="succeeded").wait_for(timeout=180_000)
        assert dashboard.count() == 0
        ranks = record.locator(".dtrain-rank[data-status='ok']")
        assert ranks.count() == 2
        assert record.get_by_text("epoch: 60/60").count() == 2
        assert record.locator("svg[data-metric='loss']").count() == 1
        assert record.locator("svg[data-metric='accuracy']").count() == 1
        record.scroll_into_view_if_needed()
        record.screenshot(path=str(screenshot(page, "record-page.png").with_name("record.png")))


WHERE_CELL = """%%distributed --nodes 2 --where-after none
import time, torch
if rank == 1:
    time.sleep(25)
total = hvd.allreduce(torch.ones(1), name="grad").item()
"""


def test_where_button_shows_each_rank_and_who_has_not_joined(tmp_path: Path) -> None:
    with running_dashboard(tmp_path, "where", WHERE_CELL) as (page, dashboard):
        dashboard.get_by_role("button", name="Where are the ranks?").click()
        where = dashboard.locator(".dtrain-where")
        wait_or_screenshot(
            page, where.get_by_text("rank 1 has not joined"), 30_000, "where-report-missing.png"
        )
        rank0 = where.locator(".dtrain-where-rank[data-rank='0']").inner_text()
        rank1 = where.locator(".dtrain-where-rank[data-rank='1']").inner_text()
        assert "cell line 4: total = hvd.allreduce(" in rank0
        assert "in Horovod allreduce 'allreduce.grad'" in rank0
        assert rank1 == "rank 1: cell line 3: time.sleep(25)"
        assert dashboard.locator(".dtrain-status").filter(has_text="running").count() == 1
        dashboard.scroll_into_view_if_needed()
        dashboard.screenshot(path=str(screenshot(page, "where-page.png").with_name("where.png")))
        # the run goes on to its end, and its record keeps the report
        record = page.locator(".dtrain-record")
        record.locator(".dtrain-status").filter(has_text="succeeded").wait_for(timeout=120_000)
        assert record.locator(".dtrain-where").get_by_text("rank 1 has not joined").count() == 1


RESTART_CELL = """%%distributed --nodes 2 --max-restarts 1
import os, signal, time
for i in dtrain.progress(range(40), desc="step"):
    if i == 10 and rank == 1 and not os.path.exists(MARKER):
        open(MARKER, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    dtrain.log(loss=1 / (i + 1))
    time.sleep(0.05)
"""


def test_dashboard_shows_each_restart_and_its_cause(tmp_path: Path) -> None:
    cell = RESTART_CELL.replace("MARKER", repr(str(tmp_path / "rank-1-lost-once")))
    with running_dashboard(tmp_path, "restart", cell) as (page, dashboard):
        restarts = dashboard.locator(".dtrain-restarts")
        first = restarts.get_by_text("restart 1 of 1")
        wait_or_screenshot(page, first, 60_000, "restart-missing.png")
        text = restarts.inner_text()
        assert "rank 1 died (killed by SIGKILL)" in text, text
        assert "the cell runs again on a restarted cluster" in text
        dashboard.locator(".dtrain-status").filter(has_text="running").wait_for(timeout=120_000)
        header = dashboard.locator(".dtrain-status").locator("..").inner_text()
        assert "attempt 2 of 2" in header, header
        # the bars the death turned red run again
        dashboard.locator(".progress-bar-danger").first.wait_for(state="detached", timeout=10_000)
        dashboard.scroll_into_view_if_needed()
        dashboard.screenshot(
            path=str(screenshot(page, "restart-page.png").with_name("restart.png"))
        )
        record = page.locator(".dtrain-record")
        record.locator(".dtrain-status").filter(has_text="succeeded").wait_for(timeout=120_000)
        assert "rank 1 died (killed by SIGKILL)" in record.locator(".dtrain-restarts").inner_text()
        assert "2 attempts" in record.inner_text()
