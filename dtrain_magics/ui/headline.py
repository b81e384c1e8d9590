"""Words and numbers about a run, shared by the dashboard and the text view."""

from __future__ import annotations

import time
from collections.abc import Mapping
from html import escape
from typing import Any

from ..run.outcome import strip_ansi
from ..run.state import SAMPLE_COUNTS, RankState, RunState
from ..run.straggler import split_text
from .charts import svg_chart

STATUS_COLOURS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "interrupted": "#ef6c00",
    "timed out": "#c62828",
}
RUNNING_COLOUR = "#1565c0"


def duration(seconds: float) -> str:
    """``75`` → ``"1:15"``, ``9`` → ``"9 s"``."""
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def plural(n: int, noun: str) -> str:
    """``plural(1, "rank")`` → ``"1 rank"``, ``plural(2, "rank")`` → ``"2 ranks"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def headline(state: RunState) -> str:
    """One line: status, ranks, backend, device, script, elapsed, ETA, throughput, failure."""
    info = state.info
    parts = [
        state.status,
        ranks_text(state),
        info.get("backend", ""),
        info.get("device", ""),
        info.get("script", ""),
        duration(state.elapsed),
    ]
    if state.attempts and not state.finished:
        parts.append(f"attempt {len(state.attempts) + 1} of {state.max_restarts + 1}")
    elif len(state.attempts) > 1:
        parts.append(f"{len(state.attempts)} attempts")
    eta = state.eta()
    if eta is not None and not state.finished:
        parts.append(f"ETA {duration(eta)}")
    for name, value in state.throughput().items():
        parts.append(f"{value:,.1f} {name}")
    if state.dropped:
        parts.append(f"{state.dropped:,} logged points thinned out (over 2,048 a second)")
    if state.failing_rank is not None:
        parts.append(f"rank {state.failing_rank}: {state.failure}")
    elif state.message:
        parts.append(state.message)
    if state.straggler is not None:
        parts.append(state.straggler.sentence())
    return " · ".join(p for p in parts if p)


def ranks_text(state: RunState) -> str:
    """``2 ranks``, or for a cell on some of them (``--ranks``) ``ranks 0,2-3 of 4``."""
    some = state.info.get("ranks")
    if not some:
        return plural(len(state.ranks), "rank")
    return f"{'rank' if len(state.ranks) == 1 else 'ranks'} {some} of {state.info['size']}"


def header_html(state: RunState) -> str:
    """The headline as HTML, the status word coloured (``.dtrain-status``)."""
    colour = STATUS_COLOURS.get(state.status, RUNNING_COLOUR)
    rest = escape(headline(state).split(" · ", 1)[-1])
    return f'<b style="color:{colour}" class="dtrain-status">{escape(state.status)}</b> · {rest}'


def charts_html(state: RunState) -> str:
    """An SVG chart per logged metric (``samples`` and ``batch_size`` feed samples/s)."""
    return "".join(
        svg_chart(name, state.chart_series(name))
        for name in sorted(state.series)
        if name not in SAMPLE_COUNTS
    )


def bar_text(r: RankState, straggler: int | None = None) -> str:
    """A rank's progress as HTML text: ``epoch: 3/10 · 2.5 it/s · step 52 ms: 40 ms computing,
    12 ms waiting (23%)``, and a flag on the rank that holds the others back."""
    total = f"/{r.total}" if r.total else ""
    rate = f" · {r.rate:,.1f} it/s" if r.rate else ""
    desc = f"{r.desc}: " if r.desc else ""
    status = "" if r.status in ("running", "ok") else f" · {r.status}"
    split = f" · {split_text(r.split)}" if r.split is not None else ""
    flag = (
        ' · <b class="dtrain-straggler" style="color:#c62828">holds the others back</b>'
        if straggler == r.rank
        else ""
    )
    return f"{escape(desc)}{r.n}{total}{rate}{escape(split)}{status}{flag}"


def where_html(state: RunState) -> str:
    """The last "where are the ranks?" report (``.dtrain-where``), empty before one."""
    lines = state.where_lines()
    if not lines:
        return ""
    title, *rows = lines
    items = "".join(
        f'<div class="dtrain-where-rank" data-rank="{r["rank"]}">{escape(row)}</div>'
        for r, row in zip(state.where["ranks"] if state.where else [], rows, strict=False)
    )
    return (
        '<div class="dtrain-where" style="font-family:monospace;font-size:90%;'
        'background:#fff8e1;padding:4px;margin:2px 0">'
        f"<b>{escape(title)}</b>{items}</div>"
    )


def restart_lines(state: RunState) -> list[str]:
    """One line per restart (``--max-restarts``): when, after how long, and why."""
    lines = []
    restarts = state.attempts if not state.finished else state.attempts[:-1]
    for a in restarts:
        when = time.strftime("%H:%M:%S", time.localtime(a["ended"]))
        lines.append(
            f"restart {a['attempt']} of {state.max_restarts} at {when}: attempt {a['attempt']} "
            f"ended after {duration(a['ended'] - a['started'])}, {a['cause']}; the cell runs "
            "again on a restarted cluster"
        )
    return lines


def restarts_html(state: RunState) -> str:
    """The restarts so far (``.dtrain-restarts``), empty without one."""
    lines = restart_lines(state)
    if not lines:
        return ""
    items = "".join(f'<div class="dtrain-restart">{escape(line)}</div>' for line in lines)
    return (
        '<div class="dtrain-restarts" style="font-size:90%;background:#fff3e0;padding:4px;'
        f'margin:2px 0">{items}</div>'
    )


def html_line(stream: str, line: str) -> str:
    """One output line as HTML, stderr in red."""
    line = escape(strip_ansi(line))
    return f'<span style="color:#c62828">{line}</span>' if stream == "stderr" else line


def cluster_line(info: Mapping[str, Any]) -> str:
    """A cluster's status in one line (``%dtrain status`` and the form's status line)."""
    if info["state"] == "stopped":
        return (
            f"{info['launcher']} cluster: not running (it starts with the next %%distributed cell)."
        )
    text = (
        f"{info['launcher']} cluster: {info['state']}, {plural(info['ranks'], 'rank')} "
        f"({plural(info['nodes'], 'node')} × {plural(info['procs_per_node'], 'proc')})"
    )
    if info.get("engines_registered") is not None:
        text += f", {info['engines_registered']}/{info['ranks']} engines registered"
    if info.get("busy") is not None:
        text += f", {info['busy']} busy"
    return text
