"""The run's report: one printed table, and JSON plus Markdown in ``benchmarks/results/``.

A ``Row`` is one figure of ours beside one peer's, with the ratio of the pairs measured side by
side and the target it is held to. ``<timestamp>-<host>-<device>.json`` keeps every raw
measurement besides the rows; ``latest.md`` (``latest-cuda.md`` for a GPU run) is the table the
README quotes, and is only replaced by a full run, not by ``--quick``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .machine import one_line
from .stats import RatioSummary, format_ratio, jsonable


@dataclass
class Row:
    """One comparison: our figure, the peer's, their ratio over pairs and the target."""

    suite: str
    measure: str
    ours: str
    peer: str = ""
    peer_value: str = ""
    ratio: RatioSummary | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Report:
    """Everything one run measured."""

    machine: dict[str, Any]
    options: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @property
    def device(self) -> str:
        return str(self.options.get("device", "cpu"))

    def table(self) -> list[list[str]]:
        header = ["suite", "measure", "dtrain-magics", "peer", "peer's", "ratio", "target", "met"]
        lines = [header]
        for r in self.rows:
            met = "" if r.met is None else ("yes" if r.met else "**no**")
            lines.append(
                [
                    r.suite,
                    r.measure,
                    r.ours,
                    r.peer,
                    r.peer_value,
                    format_ratio(r.ratio) if r.ratio else "",
                    r.target,
                    met,
                ]
            )
        return lines

    def text(self) -> str:
        """The table as aligned plain text."""
        lines = self.table()
        widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
        out = [
            "  ".join(cell.replace("**", "").ljust(w) for cell, w in zip(row, widths, strict=True))
            for row in lines
        ]
        out.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(line.rstrip() for line in out)

    def markdown(self) -> str:
        """Date, machine, the table and the notes, ready to paste into the README."""
        date = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(self.started))
        mode = "quick run" if self.options.get("quick") else f"{self.options.get('pairs')} pairs"
        start, end = self.machine.get("load_at_start"), self.machine.get("load_at_end")
        head = [
            f"Measured {date} on {one_line(self.machine)}, device `{self.device}`, {mode}, "
            f"load average {start[0] if start else '?'} at the start and "
            f"{end[0] if end else '?'} at the end (commit {self.machine.get('commit') or '?'}"
            f"{', with local changes' if self.machine.get('dirty') else ''}).",
            "",
            "Ratios are dtrain-magics over the peer, the median of pairs measured side by side, "
            "[quartiles] and the number of pairs; for times lower is better, for throughput "
            "and bandwidth higher is better.",
            "",
        ]
        lines = self.table()
        md = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
        md += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in lines[1:]]
        notes = [f"- {n}" for n in self.notes]
        failed = [f"- **{suite} failed**: {why}" for suite, why in self.failures.items()]
        tail = ["", *notes, *failed] if notes or failed else []
        return "\n".join(head + md + tail) + "\n"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        """The report a JSON file holds (to write its Markdown again)."""
        stamp = time.mktime(time.strptime(data["date"][:19], "%Y-%m-%dT%H:%M:%S"))
        rows = [Row(**row) for row in data["rows"]]
        for row in rows:
            if row.ratio is not None:
                row.ratio["ci90"] = tuple(row.ratio["ci90"])  # type: ignore[typeddict-item]
        return cls(
            data["machine"],
            data["options"],
            rows,
            data["raw"],
            data["notes"],
            data["failures"],
            stamp,
        )

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(
            {
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                "machine": self.machine,
                "options": self.options,
                "rows": [asdict(r) for r in self.rows],
                "notes": self.notes,
                "failures": self.failures,
                "raw": self.raw,
            }
        )
        return data

    def write(self, out_dir: Path) -> list[Path]:
        """Write the JSON and Markdown files; the ``latest`` ones too unless a quick run."""
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.started))
        kind = f"{self.device}-quick" if self.options.get("quick") else self.device
        base = out_dir / f"{stamp}-{self.machine['host']}-{kind}"
        json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
        json_path.write_text(json.dumps(self.as_json(), indent=1, default=str) + "\n")
        md_path.write_text(self.markdown())
        written = [json_path, md_path]
        if not self.options.get("quick") and not self.options.get("only"):
            latest = "latest" if self.device == "cpu" else f"latest-{self.device}"
            for src, suffix in ((json_path, ".json"), (md_path, ".md")):
                dst = out_dir / f"{latest}{suffix}"
                shutil.copyfile(src, dst)
                written.append(dst)
        return written
