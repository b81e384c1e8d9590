"""A real Jupyter kernel for tests: execute cells, collect output, interrupt, shut down."""

from __future__ import annotations

import queue
import re
import time
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.manager import start_new_kernel


@dataclass
class Reply:
    status: str
    text: str
    ename: str = ""
    evalue: str = ""
    outputs: list[dict[str, Any]] = field(default_factory=list)


class KernelSession:
    """Starts a python3 kernel (this venv) and runs cells in it."""

    def __init__(self, env: dict[str, str] | None = None, cwd: Any = None) -> None:
        extra: dict[str, Any] = {"env": env} if env is not None else {}
        if cwd is not None:
            extra["cwd"] = str(cwd)
        self.km, self.kc = start_new_kernel(kernel_name="python3", startup_timeout=60, **extra)

    def submit(self, code: str) -> str:
        return self.kc.execute(code)

    def collect(self, msg_id: str, timeout: float = 120.0, until: str | None = None) -> Reply:
        """Gather output of ``msg_id`` until its reply (or until ``until`` appears in stdout)."""
        deadline = time.monotonic() + timeout
        text, outputs = [], []
        status = ename = evalue = ""
        idle = False
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.5)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                text.append(content["text"])
                if until and until in "".join(text):
                    return Reply("running", "".join(text), outputs=outputs)
            elif kind in ("display_data", "execute_result", "update_display_data"):
                outputs.append(content)
                text.append(content.get("data", {}).get("text/plain", "") + "\n")
            elif kind == "error":
                ename, evalue = content["ename"], content["evalue"]
                text.append("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
                break
        if not idle:
            raise TimeoutError(
                f"cell did not finish within {timeout} s; output so far:\n{''.join(text)}"
            )
        status = "error" if ename else "ok"
        return Reply(status, "".join(text), ename, evalue, outputs)

    def run(self, code: str, timeout: float = 120.0) -> Reply:
        return self.collect(self.submit(code), timeout)

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def printed_pids(text: str) -> list[int]:
    """The pids a cell printed as ``PIDS [1, 2, ...]``."""
    match = re.search(r"PIDS \[([\d, ]*)\]", text)
    assert match, text
    return [int(p) for p in match.group(1).split(",") if p.strip()]
