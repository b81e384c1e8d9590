"""A finished run as a static record: HTML and text that render without a kernel or widgets.

When a run ends, this record takes the place of its live dashboard in the notebook, so a saved,
reloaded, exported or shared notebook shows what happened.
"""

from __future__ import annotations

import re
from html import escape, unescape

from ..run.state import RankState, RunState
from .headline import (
    bar_text,
    charts_html,
    header_html,
    headline,
    html_line,
    restart_lines,
    restarts_html,
    where_html,
)

LAST_LINES = 10
_TAG = re.compile(r"<[^>]+>")

_BAR_COLOURS = {
    "ok": "#2e7d32",
    "error": "#c62828",
    "died": "#c62828",
    "killed": "#c62828",
    "interrupted": "#ef6c00",
}


def _rank_row(r: RankState, straggler: int | None) -> str:
    total = r.total or max(r.n, 1)
    value = total if r.status == "ok" and not r.total else r.n
    colour = _BAR_COLOURS.get(r.status, "#1565c0")
    width = 100.0 * min(value, total) / total
    bar = (
        f'<span style="display:inline-block;width:16em;height:0.8em;background:#e0e0e0;'
        f'vertical-align:middle"><span style="display:block;height:100%;width:{width:.1f}%;'
        f'background:{colour}"></span></span>'
    )
    return (
        f'<div class="dtrain-rank" data-rank="{r.rank}" data-status="{r.status}" '
        f'data-n="{r.n}" data-total="{r.total or ""}">rank {r.rank} {bar} '
        f"{bar_text(r, straggler)}</div>"
    )


def record_html(state: RunState) -> str:
    """The run's record as HTML: header, per-rank bars, charts, failure, where the logs are."""
    parts = [f"<div>{header_html(state)}</div>", where_html(state), restarts_html(state)]
    straggler = state.straggler_rank
    sources = state.info.get("sources")
    if sources:
        parts.append(f"<div><small>settings: {escape(str(sources))}</small></div>")
    if any(r.n or r.total or r.status != "ok" for r in state.ranks):
        parts += [_rank_row(r, straggler) for r in state.ranks]
    charts = charts_html(state)
    if charts:
        parts.append(f"<div>{charts}</div>")
    parts += [f'<div class="dtrain-note">{escape(note)}</div>' for note in state.notes]
    for r in state.ranks:
        if r.lines:
            last = "\n".join(
                html_line(stream, line) for stream, line in list(r.lines)[-LAST_LINES:]
            )
            parts.append(
                f'<details class="dtrain-lines" data-rank="{r.rank}"><summary>last lines of '
                f"rank {r.rank} ({r.line_count} in all)</summary><pre>{last}</pre></details>"
            )
    if state.store is not None:
        parts.append(
            f"<small>logs and metrics: <code>{escape(str(state.store.dir))}</code></small>"
        )
    return (
        f'<div class="dtrain-record" data-status="{escape(state.status)}" '
        f'style="border:1px solid #ddd;padding:6px">{"".join(parts)}</div>'
    )


def record_text(state: RunState) -> str:
    """The run's record as plain text (consoles, ``nbconvert --to script``, screen readers)."""
    lines = [f"[dtrain] {headline(state)}", *(f"[dtrain] {note}" for note in state.notes)]
    lines += [f"[dtrain] {line}" for line in state.where_lines()]
    lines += [f"[dtrain] {line}" for line in restart_lines(state)]
    straggler = state.straggler_rank
    for r in state.ranks:
        if r.n or r.total or r.status != "ok":
            text = _TAG.sub("", bar_text(r, straggler))
            lines.append(f"[dtrain] rank {r.rank}: {unescape(text)}")
    return "\n".join(lines)


def record_bundle(state: RunState) -> dict[str, str]:
    """The record as a display bundle (``text/html`` and ``text/plain``)."""
    return {"text/html": record_html(state), "text/plain": record_text(state)}
