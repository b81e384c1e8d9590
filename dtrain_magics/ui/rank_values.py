"""Each rank's value of the cell's last expression, and what it displayed, as ``%%px`` shows them.

The ranks' IPython formats them, so a DataFrame comes as HTML and a matplotlib figure as PNG, as
in a plain cell. Ranks whose outputs are the same are shown once, labelled with all of them:
``Out[rank 0-1]: 2``; different ones each under their own label, in rank order. They are shown
as ordinary display outputs after the run's record, so a saved notebook keeps them.
"""

from __future__ import annotations

from typing import Any

from ..config.options import format_ranks
from ..run.state import RunState

Bundle = tuple[dict[str, Any], dict[str, Any]]  # (data, metadata) of one display output


def value_bundles(state: RunState) -> list[Bundle]:
    """The display outputs that show the ranks' outputs, in order."""
    bundles: list[Bundle] = []
    for ranks, outputs in state.output_groups():
        which = format_ranks(ranks)
        displays = [o for o in outputs if o["output_type"] == "display_data"]
        if displays:
            bundles.append(({"text/plain": f"[output:rank {which}]"}, {}))
            bundles += [(o["data"], o["metadata"]) for o in displays]
        for value in (o for o in outputs if o["output_type"] == "execute_result"):
            label = f"Out[rank {which}]:"
            data = value["data"]
            if set(data) == {"text/plain"}:
                text = data["text/plain"]
                joined = f"{label}\n{text}" if "\n" in text else f"{label} {text}"
                bundles.append(({"text/plain": joined}, {}))
            else:
                bundles += [({"text/plain": label}, {}), (data, value["metadata"])]
    return bundles


def show_values(state: RunState) -> None:
    """Display the ranks' outputs in the notebook (printed as text outside a kernel)."""
    from IPython.display import display

    for data, metadata in value_bundles(state):
        display(data, metadata=metadata, raw=True)
