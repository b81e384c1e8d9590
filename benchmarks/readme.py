"""Paste the latest tables into README.md: ``python -m benchmarks.readme``.

Replaces what lies between ``<!-- benchmarks:latest -->`` and ``<!-- /benchmarks:latest -->``
with ``benchmarks/results/latest.md`` and, when there is one, ``latest-cuda.md`` after it.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- benchmarks:latest -->", "<!-- /benchmarks:latest -->"


def render(results: Path) -> str:
    """The block to paste: the CPU table, then the GPU one if measured."""
    parts = []
    for name, title in (("latest.md", "CPU"), ("latest-cuda.md", "GPU (`--device cuda`)")):
        path = results / name
        if path.exists():
            parts.append(f"**{title}.** {path.read_text().strip()}")
    if not parts:
        raise FileNotFoundError(f"no latest.md in {results}: run `make bench` first")
    return "\n\n".join(parts)


def paste(readme: Path, block: str) -> str:
    """``readme``'s text with ``block`` between the markers."""
    text = readme.read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} lacks the {START} … {END} markers")
    return text[: start + len(START)] + "\n" + block + "\n" + text[end:]


def main() -> int:
    readme = REPO / "README.md"
    readme.write_text(paste(readme, render(REPO / "benchmarks" / "results")))
    print(f"pasted the latest benchmark table into {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
