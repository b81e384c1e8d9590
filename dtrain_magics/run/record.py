"""The one place a run's record is written: ``run.json`` while it runs, the session record at
its end."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import RunInterrupted
from ..store import records
from ..store.records import RunRecord
from .outcome import RunResult, exit_reason, strip_ansi
from .state import RunState

log = logging.getLogger(__name__)


class RunRecorder:
    """Writes one run's summary to its ``RunStore`` and adds its ``RunRecord`` to the session."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def save(self) -> None:
        """Rewrite ``run.json`` (never raises: a full disk must not break the run)."""
        store = self.state.store
        if store is None:
            return
        try:
            store.write_summary(self.state.summary())
        except OSError:
            log.debug("could not write run.json", exc_info=True)

    def finish(
        self, result: RunResult | None, timeout: float | None, error: BaseException | None = None
    ) -> RunRecord:
        """Close the run, whatever happened: its final state, files and session record;
        ``result`` is None when the cluster did not start (``error`` says why)."""
        state = self.state
        if result is None:
            stopped = isinstance(error, RunInterrupted)
            begun = (
                "the run's restart did not finish" if state.attempts else "the run did not start"
            )
            why = str(error).splitlines()[0] if str(error or "") else "see the error below"
            reason = f"{begun}: {why}"
            state.finish("interrupted" if stopped else "failed", failure=reason, reason=reason)
        else:
            reason = exit_reason(result, timeout)
            failing = result.failing
            state.finish(
                result.status,
                result.failing_rank,
                failing.error if failing else "",
                failing.traceback if failing else "",
                reason,
            )
        self.save()
        store = state.store
        if store is not None:
            for o in result.ranks if result is not None else []:
                if o.failed:  # what the cell showed of the rank's error: in its log too
                    text = strip_ansi(o.traceback or o.error)
                    store.append_log(o.rank, text.rstrip("\n") + "\n")
            store.close()
        record = RunRecord(
            id=state.id,
            status=state.status,
            exit_reason=reason,
            wall_time=state.elapsed,
            ranks=state.summary()["ranks"],
            options=dict(state.info),
            dir=store.dir if store else Path(),
            failing_rank=state.failing_rank,
            log_paths=dict(store.log_paths) if store else {},
            values=state.values(),
            attempts=list(state.attempts),
            dropped_points=state.dropped,
        )
        records.add(record)
        return record
