"""The input transformer that runs a ``%%distributed`` cell as an awaited coroutine.

In a kernel the cell then yields to the kernel's event loop while the ranks run, so widget
events (the dashboard's Stop button) are handled during the run. ``%%distributed?`` is left
alone, and so is any other magic whose name starts with ``distributed``.
"""

from __future__ import annotations

MAGIC = "%%distributed"
CALL = "await __import__('dtrain_magics')._magics.distributed_async"


def await_distributed_cells(lines: list[str]) -> list[str]:
    """Rewrite a ``%%distributed`` cell into ``await <magics>.distributed_async(line, cell)``."""
    if not lines or not lines[0].startswith(MAGIC) or lines[0].rstrip().endswith("?"):
        return lines
    line = lines[0][len(MAGIC) :].rstrip("\n")
    if line and not line[0].isspace():
        return lines  # another magic whose name starts with "distributed"
    cell = "".join(lines[1:])
    return [f"{CALL}({line!r}, {cell!r})\n"]
