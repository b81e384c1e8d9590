"""A cell's syntax, checked in the notebook before anything is sent to the ranks.

The ranks run a cell as IPython does (``!command``, ``%magic``), so the check accepts what
IPython accepts: plain Python is compiled as it is, anything else after IPython's own input
transformations. Top-level ``await`` is refused: ipyparallel's engines run such a cell but
never answer it, so the cell would wait for ever. A cell found runnable is remembered: a kernel
checks each cell twice (its input transformer, then the runner), and warm cells repeat.
"""

from __future__ import annotations

import ast
import functools

CELL_FILENAME = "<distributed cell>"


def check_cell_syntax(code: str) -> None:
    """Raise ``SyntaxError`` if the ranks' IPython could not run ``code``; its line numbers
    count from the code's first line, as the ranks' tracebacks and ``%%px``'s do."""
    if not _runnable(code):
        _check(code)


@functools.lru_cache(maxsize=64)
def _runnable(code: str) -> bool:
    try:
        _check(code)
        return True
    except SyntaxError:
        return False


def _check(code: str) -> None:
    lines = code.splitlines(keepends=True)
    blank = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    code = "".join(lines[blank:])  # IPython drops them, and counts lines without them
    try:
        _compile(code)
        return
    except SyntaxError:
        pass  # perhaps IPython's syntax; checked below, outside this handler (no chained error)
    from IPython.core.inputtransformer2 import TransformerManager

    _compile(TransformerManager().transform_cell(code))


def _compile(source: str) -> None:
    try:
        compile(source, CELL_FILENAME, "exec", dont_inherit=True)
        return
    except SyntaxError as e:
        error = e
    msg = error.msg
    try:  # the same code awaited at the top level: then that is all that is wrong
        compile(source, CELL_FILENAME, "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        msg += (
            ": the ranks cannot await at the top level of a cell; put the awaits in an async "
            "function and run it with asyncio.run(main())"
        )
    except SyntaxError:
        pass
    lines = source.splitlines()  # the compiler's own errors come without the line
    lineno = error.lineno or 0
    text = error.text or (lines[lineno - 1] if 0 < lineno <= len(lines) else None)
    where = (error.filename, error.lineno, error.offset, text, error.end_lineno, error.end_offset)
    raise type(error)(msg, where) from None
