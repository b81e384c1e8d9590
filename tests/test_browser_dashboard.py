"""In real JupyterLab and headless Chromium: a %%distributed cell shows its live dashboard."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from lab_server import chromium_page, lab_server, screenshot
from nbformat.v4 import new_code_cell, new_notebook

pytestmark = [pytest.mark.cluster, pytest.mark.browser]

CELL = """%%distributed --nodes 2
import math, time
for i in dtrain.progress(range(60), desc="epoch"):
    dtrain.log(loss=math.exp(-i / 15) + 0.05 * rank, accuracy=1 - math.exp(-i / 12), samples=32)
    time.sleep(0.05)
print(f"rank {rank} done")
"""


def test_dashboard_shows_progress_to_completion(tmp_path: Path) -> None:
    nb = new_notebook(cells=[new_code_cell("%load_ext dtrain_magics"), new_code_cell(CELL)])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nbformat.write(nb, tmp_path / "dashboard.ipynb")
    with lab_server(tmp_path) as server, chromium_page() as page:
        page.goto(server.url("lab/tree/dashboard.ipynb"))
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=90_000)
        page.locator(".jp-Cell").first.click()
        page.keyboard.press("Shift+Enter")
        page.keyboard.press("Shift+Enter")
        dashboard = page.locator(".dtrain-dashboard")
        try:
            dashboard.locator(".dtrain-status").filter(has_text="running").wait_for(timeout=120_000)
        except Exception:
            screenshot(page, "dashboard-missing.png")
            raise
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
