"""The live run dashboard: core ipywidgets only, and a plain-text fallback.

Built from ``HTML``, ``FloatProgress``, ``Tab`` and ``Button`` so it renders in JupyterLab,
Notebook 7, VS Code and Colab without extra front-end code. Refreshed from the kernel's main
thread, throttled: progress a few times a second, charts at most twice a second.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from html import escape
from typing import Any

from .charts import svg_chart
from .run_state import RunState

PROGRESS_EVERY = 0.25
CHARTS_EVERY = 0.5
TEXT_EVERY = 5.0
TEXT_LINES_PER_RANK = 1000  # lines a rank may print into the notebook in text mode

_STATUS_COLOURS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "interrupted": "#ef6c00",
    "timed out": "#c62828",
}


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def headline(state: RunState) -> str:
    """One line: status, ranks, backend, device, elapsed, ETA, throughput, failure."""
    info = state.info
    parts = [
        state.status,
        f"{len(state.ranks)} ranks",
        info.get("backend", ""),
        info.get("device", ""),
        _duration(state.elapsed),
    ]
    eta = state.eta()
    if eta is not None and not state.finished:
        parts.append(f"ETA {_duration(eta)}")
    for name, value in state.throughput().items():
        parts.append(f"{value:,.1f} {name}")
    if state.failing_rank is not None:
        parts.append(f"rank {state.failing_rank}: {state.failure}")
    elif state.message:
        parts.append(state.message)
    return " · ".join(p for p in parts if p)


def _bar_text(r: Any) -> str:
    total = f"/{r.total}" if r.total else ""
    rate = f" · {r.rate:,.1f} it/s" if r.rate else ""
    desc = f"{r.desc}: " if r.desc else ""
    status = "" if r.status in ("running", "ok") else f" · {r.status}"
    return f"{escape(desc)}{r.n}{total}{rate}{status}"


class WidgetDashboard:
    """The dashboard as a ``VBox`` of core widgets."""

    def __init__(self, state: RunState, on_stop: Callable[[], None]) -> None:
        import ipywidgets as w

        self.state = state
        self.header = w.HTML()
        self.bars = [
            w.FloatProgress(
                value=0,
                min=0,
                max=1,
                description=f"rank {r.rank}",
                bar_style="info",
                layout=w.Layout(width="45%"),
            )
            for r in state.ranks
        ]
        self.bar_texts = [w.HTML() for _ in state.ranks]
        self.charts = w.HTML()
        self.settings = w.HTML()
        self.outputs = [w.HTML() for _ in state.ranks]
        self.tabs = w.Tab(children=self.outputs, titles=[f"rank {r.rank}" for r in state.ranks])
        self.logs = w.HTML()
        self.traceback = w.HTML()
        self.stop_button = w.Button(
            description="Stop", icon="stop", button_style="danger", tooltip="Interrupt every rank"
        )
        self.stop_button.on_click(lambda _: on_stop())
        rows = [w.HBox([bar, text]) for bar, text in zip(self.bars, self.bar_texts, strict=True)]
        self.widget = w.VBox(
            [
                w.HBox([self.header, self.stop_button]),
                self.settings,
                *rows,
                self.charts,
                self.tabs,
                self.logs,
                self.traceback,
            ],
            layout=w.Layout(border="1px solid #ddd", padding="6px"),
        )
        self.widget.add_class("dtrain-dashboard")
        self._progress_at = self._charts_at = 0.0
        self._seen = -1
        self.refresh(force=True)

    def show(self) -> None:
        from IPython.display import display

        display(self.widget)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (
            self.state.version == self._seen or now - self._progress_at < PROGRESS_EVERY
        ):
            return
        self._seen, self._progress_at = self.state.version, now
        state = self.state
        colour = _STATUS_COLOURS.get(state.status, "#1565c0")
        self.header.value = (
            f'<b style="color:{colour}" class="dtrain-status">'
            f"{escape(state.status)}</b> · {escape(headline(state).split(' · ', 1)[-1])}"
        )
        sources = state.info.get("sources")
        if sources:
            self.settings.value = "<small>settings: " + escape(sources) + "</small>"
        for bar, text, r in zip(self.bars, self.bar_texts, state.ranks, strict=True):
            bar.max = float(r.total or max(r.n, 1))
            bar.value = float(r.n)
            text.value = _bar_text(r)
            if r.status == "ok":
                bar.bar_style = "success"
                if not r.total:
                    bar.value = bar.max
            elif r.status in ("error", "died", "killed"):
                bar.bar_style = "danger"
            elif r.status == "interrupted":
                bar.bar_style = "warning"
        for out, r in zip(self.outputs, state.ranks, strict=True):
            hidden = r.line_count - len(r.lines)
            note = f"<i>… {hidden} earlier lines in the log file</i>\n" if hidden > 0 else ""
            out.value = (
                '<pre style="max-height:16em;overflow:auto;margin:0">'
                + note
                + "\n".join(_html_line(stream, line) for stream, line in r.lines)
                + "</pre>"
            )
        if force or now - self._charts_at >= CHARTS_EVERY:
            self._charts_at = now
            self.charts.value = "".join(
                svg_chart(name, state.chart_series(name))
                for name in sorted(state.series)
                if name not in ("samples", "batch_size")
            )
        if state.store is not None:
            self.logs.value = (
                f"<small>logs and metrics: <code>{escape(str(state.store.dir))}</code></small>"
            )
        if state.traceback:
            self.traceback.value = f"<pre>{escape(_strip_ansi(state.traceback))}</pre>"

    def close(self) -> None:
        self.refresh(force=True)
        self.stop_button.disabled = True


class TextDashboard:
    """Without a widget front end: labelled output, a summary every few seconds, a final one."""

    def __init__(self, state: RunState, on_stop: Callable[[], None]) -> None:
        self.state = state
        self._printed_at = time.monotonic()
        self._lines_shown = [0] * len(state.ranks)
        self._message = ""

    def show(self) -> None:
        pass

    def refresh(self, force: bool = False) -> None:
        state = self.state
        stall = state.status == "running" and state.stalled and state.message != self._message
        if stall:
            self._message = state.message
            print(f"[dtrain] {state.message}", flush=True)
        if state.status == "starting cluster" and state.message != self._message:
            self._message = state.message
            print(state.message, flush=True)
        for r in state.ranks:
            new = r.line_count - self._lines_shown[r.rank]
            if new > 0:
                self._print_lines(r, new)
        now = time.monotonic()
        if now - self._printed_at >= TEXT_EVERY:
            self._printed_at = now
            print(f"[dtrain] {headline(state)} · {self._progress()}", flush=True)

    def _print_lines(self, r: Any, new: int) -> None:
        """Print ``r``'s ``new`` lines, up to ``TEXT_LINES_PER_RANK`` per run and rank."""
        shown = self._lines_shown[r.rank]
        room = TEXT_LINES_PER_RANK - min(shown, TEXT_LINES_PER_RANK)
        lines = list(r.lines)[-new:] if new <= len(r.lines) else list(r.lines)
        for stream, line in lines[:room]:
            out = sys.stderr if stream == "stderr" else sys.stdout
            print(f"[rank {r.rank}] {line}", file=out)
        if shown <= TEXT_LINES_PER_RANK < shown + new:
            where = self.state.store.log_paths[r.rank] if self.state.store else "the run's log"
            print(
                f"[rank {r.rank}] … more than {TEXT_LINES_PER_RANK} lines: the rest is not "
                f"shown here; the full output is in {where}",
                flush=True,
            )
        self._lines_shown[r.rank] = r.line_count

    def _progress(self) -> str:
        return ", ".join(
            f"rank {r.rank} {r.n}/{r.total}" if r.total else f"rank {r.rank} {r.n}"
            for r in self.state.ranks
        )

    def close(self) -> None:
        self.refresh()
        state = self.state
        metrics = ", ".join(
            f"{name} {sum(v.values()) / len(v):.4g}"
            for name, v in sorted(state.latest.items())
            if v
        )
        print(f"[dtrain] {headline(state)}" + (f" · last {metrics}" if metrics else ""), flush=True)
        if state.stalled:
            ranks = ", ".join(map(str, state.stalled))
            print(f"[dtrain] Horovod reported stalls waiting for rank {ranks}", flush=True)
        if state.store is not None:
            print(f"[dtrain] logs and metrics: {state.store.dir}", flush=True)


Dashboard = WidgetDashboard | TextDashboard


def widgets_available() -> bool:
    """True inside a Jupyter kernel with ipywidgets installed."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def make_dashboard(state: RunState, on_stop: Callable[[], None], widget: bool) -> Dashboard:
    dashboard: Dashboard = (
        WidgetDashboard(state, on_stop)
        if widget and widgets_available()
        else TextDashboard(state, on_stop)
    )
    dashboard.show()
    return dashboard


def _html_line(stream: str, line: str) -> str:
    line = escape(_strip_ansi(line))
    return f'<span style="color:#c62828">{line}</span>' if stream == "stderr" else line


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)
