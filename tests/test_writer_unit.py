"""The state writer: the newest content of a file is what lands, whichever thread flushes."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dtrain_magics.store import writer as writer_module
from dtrain_magics.store.writer import StateWriter


def test_a_flush_under_way_does_not_land_its_older_content_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's exit flushes while the background thread may be flushing: both wrote one
    temporary file, and the slower, older write replaced the newer state."""

    def slow_for_old(path: Path, data: Any) -> None:
        if data == {"state": "old"}:
            time.sleep(0.3)  # the background thread, preempted before it writes
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    monkeypatch.setattr(writer_module, "write_json_atomic", slow_for_old)
    state = StateWriter(delay=60)  # its own thread stays asleep: the test flushes
    path = tmp_path / "pid-1.json"
    state.put(path, {"state": "old"})
    background = threading.Thread(target=state.flush)
    background.start()
    time.sleep(0.1)  # it has taken the old content
    state.put(path, {"state": "new"})
    state.flush()
    background.join()
    assert json.loads(path.read_text()) == {"state": "new"}
