"""The input transformer that runs ``%%distributed`` cells and ``%distributed`` lines awaited.

In a kernel the cell then yields to the kernel's event loop while the ranks run, so widget
events (the dashboard's Stop button) are handled during the run. ``%%distributed?`` and
``%distributed?`` are left alone, and so is any other magic whose name starts with
``distributed``.

A cell's syntax is checked here, as IPython checks any cell's, so a ``SyntaxError`` shows as
it does for a local cell (no frames of the magic) and the cell never runs. The check makes the
transformer one that IPython's ``check_complete`` skips: consoles then treat a
``%%distributed`` cell as any cell magic, complete at a blank line.
"""

from __future__ import annotations

from ..run.cell_syntax import check_cell_syntax

MAGIC = "%%distributed"
LINE_MAGIC = "%distributed"
CALL = "await __import__('dtrain_magics')._magics.distributed_async"
LINE_CALL = "await __import__('dtrain_magics')._magics.distributed_line_async"


def await_distributed_cells(lines: list[str]) -> list[str]:
    """Rewrite a ``%%distributed`` cell into ``await <magics>.distributed_async(line, cell)``,
    and each top-level ``%distributed`` line into ``await <magics>.distributed_line_async(line)``.
    """
    if not lines:
        return lines
    if lines[0].startswith(MAGIC):
        line = _arguments(lines[0], MAGIC)
        if line is None:
            return lines
        cell = "".join(lines[1:])
        if cell.strip():  # an empty cell gets the magic's own message
            check_cell_syntax(cell)
        return [f"{CALL}({line!r}, {cell!r})\n"]
    if not any(line.startswith(LINE_MAGIC) for line in lines):
        return lines
    out: list[str] = []
    i = 0
    while i < len(lines):
        text = lines[i]
        i += 1
        if not text.startswith(LINE_MAGIC):
            out.append(text)
            continue
        while text.endswith("\\\n") and i < len(lines):  # a continued line
            text = text[:-2] + " " + lines[i]
            i += 1
        line = _arguments(text, LINE_MAGIC)
        out.append(text if line is None else f"{LINE_CALL}({line!r})\n")
    return out


def _arguments(text: str, magic: str) -> str | None:
    """The magic's arguments in ``text``; None for help (``?``) or another magic."""
    line = text[len(magic) :].rstrip("\n")
    if line.rstrip().endswith("?") or (line and not line[0].isspace()):
        return None
    return line


await_distributed_cells.has_side_effects = True  # type: ignore[attr-defined]
