"""The notebook's check of a cell's syntax before it is sent (pure logic)."""

from __future__ import annotations

import pytest

from dtrain_magics.ipython.transformer import await_distributed_cells
from dtrain_magics.run.cell_syntax import check_cell_syntax


@pytest.mark.parametrize(
    "code",
    ["x = rank\n", "!nvidia-smi\n%time y = 1\n", "%%time\nz = 1\n", "def f():\n    return 1\n"],
)
def test_what_the_ranks_ipython_runs_passes(code: str) -> None:
    check_cell_syntax(code)


def test_an_error_points_at_the_bodys_line_with_its_text() -> None:
    """Counted from the first line under ``%%distributed``, as a rank's traceback counts."""
    with pytest.raises(SyntaxError) as caught:
        check_cell_syntax("x = 1\ny = (1,\n")
    assert caught.value.lineno == 2 and caught.value.text is not None
    assert caught.value.text.strip() == "y = (1,"
    assert caught.value.__suppress_context__


def test_top_level_await_is_refused_with_the_way_out() -> None:
    with pytest.raises(SyntaxError, match=r"cannot await at the top level.*asyncio\.run"):
        check_cell_syntax("import asyncio\nawait asyncio.sleep(0)\n")


def test_await_in_a_plain_function_keeps_pythons_message() -> None:
    with pytest.raises(SyntaxError) as caught:
        check_cell_syntax("def f():\n    await g()\n")
    assert caught.value.msg == "'await' outside async function"
    assert caught.value.text == "    await g()"  # the compiler leaves it out; filled in


def test_blank_lines_at_the_start_are_not_counted_as_the_ranks_ipython_does_not() -> None:
    for body, line in (("\nx = (\n", 1), ("\n \n!echo hi\n\nx = (\n", 3)):
        with pytest.raises(SyntaxError) as caught:
            check_cell_syntax(body)
        assert caught.value.lineno == line, body


def test_the_transformer_checks_the_cell_and_consoles_wait_for_its_end() -> None:
    from IPython.core.inputtransformer2 import TransformerManager

    with pytest.raises(SyntaxError) as caught:
        await_distributed_cells(["%%distributed --nodes 2\n", "x = (\n"])
    assert caught.value.lineno == 1
    assert await_distributed_cells(["%%distributed\n", "\n"])  # empty: the magic's message
    manager = TransformerManager()
    manager.cleanup_transforms.append(await_distributed_cells)
    # as for any cell magic: more lines to come (the check would have said "invalid")
    status, _ = manager.check_complete("%%distributed --nodes 2\nfor i in range(3):\n")
    assert status == "incomplete"
