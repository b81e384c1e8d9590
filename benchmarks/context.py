"""What every suite shares: the run's settings, its scratch directory, kernels and mpiexec.

Kernels and ``mpiexec`` jobs get one environment: this venv's ``bin`` first on ``PATH``, and a
scratch ``IPYTHONDIR``, ``DTRAIN_RUNS_DIR`` and ``JUPYTER_CONFIG_DIR`` so a benchmark neither
reads the user's saved settings nor leaves records among theirs. ``mpiexec`` jobs also get the
environment the project gives its own ranks (``rank_environment``: ``OMP_NUM_THREADS``, the
MPI transport and malloc on huge pages), the local launcher's options (``mpiexec_options``:
oversubscription allowed, in the syntax of the MPI found; no binding) and the
venv's ``mpiexec``, so that they compare like for like with the ranks under the magic.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtrain_magics.cluster.launchers import (
    Layout,
    cores_here,
    find_mpiexec,
    mpiexec_options,
    rank_environment,
)

from .kernels import BenchKernel, Cell

ENGINES = "dtrain_magics._magics.cluster.view()"  # the magic's own engines, in a bench kernel


@dataclass
class Context:
    """One benchmark run: its options and its scratch space."""

    repo: Path
    device: str = "cpu"
    ranks: int = 2
    quick: bool = False
    pairs: int = 5
    scratch: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dtrain-bench-")))
    notes: list[str] = field(default_factory=list)

    @property
    def cores(self) -> int:
        return cores_here()

    def env(self) -> dict[str, str]:
        """The environment of every kernel and job of this run."""
        bin_dir = str(Path(sys.executable).parent)
        env = dict(os.environ)
        env.update(
            PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            IPYTHONDIR=str(self.scratch / "ipython"),
            DTRAIN_RUNS_DIR=str(self.scratch / "runs"),
            JUPYTER_CONFIG_DIR=str(self.scratch / "jupyter-config"),
            PYTHONWARNINGS="ignore",
        )
        return env

    @contextmanager
    def kernel(self, timeout: float = 600.0) -> Iterator[BenchKernel]:
        """A fresh kernel whose cells may take ``timeout`` seconds each, shut down afterwards."""
        kernel = BenchKernel(self.env(), str(self.repo), timeout)
        try:
            yield kernel
        finally:
            kernel.close()

    def magic_line(self, *flags: str, ranks: int | None = None) -> str:
        """``%%distributed --nodes N --device D [flags]``; N is the run's ``ranks`` unless given."""
        nodes = self.ranks if ranks is None else ranks
        return " ".join(["%%distributed", f"--nodes {nodes}", f"--device {self.device}", *flags])

    def execute_direct(self, kernel: BenchKernel, line: str, code: str) -> Cell:
        """``code`` sent through ipyparallel (``view.execute``) to the magic's engines.

        A trivial cell under the magic ``line`` goes first: the ranks suspend Horovod seconds
        after a cell (``rank/idle.py``) and a magic cell, not ``view.execute``, resumes it.
        """
        kernel.run(f"{line}\npass")
        return kernel.run(f"_ = {ENGINES}.execute({code!r}, block=True)")

    # -- mpiexec -----------------------------------------------------------------------------

    def rank_env(self, ranks: int) -> dict[str, str]:
        """The environment the project gives its ranks, on top of this run's."""
        return {**self.env(), **rank_environment(Layout(ranks, 1)), "GLOO_SOCKET_IFNAME": "lo"}

    def mpiexec(self, ranks: int, *command: str) -> list[str]:
        """The venv's ``mpiexec`` running ``command`` on ``ranks`` ranks of this host."""
        return [find_mpiexec(), "-n", str(ranks), *mpiexec_options(), *command]

    def timed(self, argv: list[str], env: dict[str, str], timeout: float = 600) -> float:
        """Wall seconds ``argv`` took; raises with its output if it failed."""
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            tail = (done.stdout + done.stderr)[-2000:]
            raise RuntimeError(f"{' '.join(argv[:6])} … exited {done.returncode}:\n{tail}")
        return seconds

    def script(self, name: str, text: str) -> Path:
        """Write ``text`` to the scratch directory as ``name``."""
        path = self.scratch / name
        path.write_text(text)
        return path

    def run_ranks(
        self,
        ranks: int,
        source: str,
        call: str,
        kwargs: dict[str, Any],
        backend: str = "horovod",
        timeout: float = 600,
    ) -> list[dict[str, Any]]:
        """``mpiexec -n ranks python runner.py``: ``call(**kwargs)`` on every rank, by rank."""
        from .workloads import RUNNER

        out = Path(tempfile.mkdtemp(dir=self.scratch, prefix="ranks-"))
        spec = {
            "device": self.device,
            "backend": backend,
            "init_method": f"tcp://127.0.0.1:{free_port()}",
            "source": str(self.script(f"{call}.py", source)),
            "call": call,
            "kwargs": kwargs,
            "out": str(out),
        }
        runner = self.script("runner.py", RUNNER)
        argv = self.mpiexec(ranks, sys.executable, str(runner), json.dumps(spec))
        self.timed(argv, self.rank_env(ranks), timeout)
        return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(ranks)]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
