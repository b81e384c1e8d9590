"""The live run dashboard: core ipywidgets only.

Built from ``HTML``, ``FloatProgress`` and ``Button`` so it renders in JupyterLab,
Notebook 7, VS Code and Colab without extra front-end code. Refreshed from the kernel's main
thread, throttled: progress and the header once a second, charts every 2 seconds (a chart's SVG
is most of what the dashboard sends, and of the kernel's CPU while a run logs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from html import escape
from typing import Any

from ..run.state import RunState
from .headline import bar_text, charts_html, header_html, restarts_html, where_html

PROGRESS_EVERY = 1.0
CHARTS_EVERY = 2.0
ELAPSED_EVERY = 1.0  # the header's elapsed time ticks while nothing else changes


class WidgetDashboard:
    """The dashboard as a ``VBox`` of core widgets."""

    def __init__(self, state: RunState, on_stop: Callable[[], None]) -> None:
        import ipywidgets as w

        self.state = state
        # Widgets of a kind share one layout and one style model: each model is a comm the
        # front end opens, and private ones would nearly double the dashboard's first
        # message burst (44 comms instead of 24), which lands on the ranks' cores mid-run.
        self.header = w.HTML()

        def html() -> Any:
            return w.HTML(layout=self.header.layout, style=self.header.style)

        bar_layout = w.Layout(width="45%")
        self.bars: list[Any] = []
        for r in state.ranks:
            shared = {"style": self.bars[0].style} if self.bars else {}
            bar = w.FloatProgress(
                value=0,
                min=0,
                max=1,
                description=f"rank {r.rank}",
                bar_style="info",
                layout=bar_layout,
                **shared,
            )
            self.bars.append(bar)
        self.bar_texts = [html() for _ in state.ranks]
        self.charts = html()
        self.where = html()
        self.restarts = html()
        self.settings = html()
        self.logs = html()
        button_layout, button_style = w.Layout(width="auto"), w.ButtonStyle()
        self.stop_button = w.Button(
            description="Stop",
            icon="stop",
            button_style="danger",
            tooltip="Interrupt every rank",
            layout=button_layout,
            style=button_style,
        )
        self.stop_button.on_click(lambda _: on_stop())
        self.where_button = w.Button(
            description="Where are the ranks?",
            icon="search",
            tooltip="Show each rank's line of code and the collective it waits in",
            layout=button_layout,
            style=button_style,
        )
        self.where_button.on_click(lambda _: self._ask_where())
        row_layout = w.Layout()
        rows = [
            w.HBox([bar, text], layout=row_layout)
            for bar, text in zip(self.bars, self.bar_texts, strict=True)
        ]
        self.widget = w.VBox(
            [
                w.HBox([self.header, self.where_button, self.stop_button], layout=row_layout),
                self.where,
                self.restarts,
                self.settings,
                *rows,
                self.charts,
                self.logs,
            ],
            layout=w.Layout(border="1px solid #ddd", padding="6px"),
        )
        self.widget.add_class("dtrain-dashboard")
        self._progress_at = self._charts_at = 0.0
        self._seen = -1
        self.refresh(force=True)

    def _ask_where(self) -> None:
        if self.state.ask_where is not None:
            self.state.ask_where()

    def next_refresh(self, now: float) -> float | None:
        if self.state.finished:
            return None
        if self.state.version != self._seen:
            return self._progress_at + PROGRESS_EVERY
        return self._progress_at + ELAPSED_EVERY

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force:
            wanted = self.next_refresh(now)
            if wanted is None or now < wanted:
                return
        self._seen, self._progress_at = self.state.version, now
        state = self.state
        self.header.value = header_html(state)
        self.where.value = where_html(state)
        self.restarts.value = restarts_html(state)
        straggler = state.straggler_rank
        sources = state.info.get("sources")
        if sources:
            self.settings.value = "<small>settings: " + escape(sources) + "</small>"
        for bar, text, r in zip(self.bars, self.bar_texts, state.ranks, strict=True):
            bar.max = float(r.total or max(r.n, 1))
            bar.value = float(r.n)
            text.value = bar_text(r, straggler)
            if r.status == "ok":
                bar.bar_style = "success"
                if not r.total:
                    bar.value = bar.max
            elif r.status in ("error", "died", "killed"):
                bar.bar_style = "danger"
            elif r.status == "interrupted":
                bar.bar_style = "warning"
            else:  # running (again, after a restart)
                bar.bar_style = "info"
        if force or now - self._charts_at >= CHARTS_EVERY:
            self._charts_at = now
            self.charts.value = charts_html(state)
        if state.store is not None:
            self.logs.value = (
                f"<small>logs and metrics: <code>{escape(str(state.store.dir))}</code></small>"
            )

    def close(self) -> None:
        """Close every widget of the dashboard, and the layout and style models they share: the
        run's record takes its place, and a saved notebook keeps none of them."""
        stack, parts = [self.widget], {}
        while stack:
            widget = stack.pop()
            stack.extend(getattr(widget, "children", ()))
            for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
                if part is not None:
                    parts[part.model_id] = part
            widget.close()
        for part in parts.values():
            part.close()
