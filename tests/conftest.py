"""Fixtures: one real 2-rank MPI cluster per session, and a real IPython shell driving it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Keep the suite's IPython profile and connection files away from the user's.
_IPYTHONDIR = os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "ipython")
)
os.makedirs(_IPYTHONDIR, exist_ok=True)
os.environ.setdefault("IPYTHONDIR", _IPYTHONDIR)


def pytest_collection_finish(session: pytest.Session) -> None:
    """A run that collects nothing is a broken run, not a pass."""
    if not session.items and not session.config.option.collectonly:
        raise pytest.UsageError("no tests were collected; check the test paths and -k/-m filters.")


@pytest.fixture(scope="session")
def ip() -> Any:
    """A real IPython shell with the extension loaded."""
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    shell.run_line_magic("load_ext", "dtrain_magics")
    return shell


@pytest.fixture(scope="session")
def cluster(ip: Any) -> Iterator[Any]:
    """The extension's cluster, started once with 2 ranks (2 simulated nodes)."""
    import dtrain_magics
    from dtrain_magics.cluster import Layout

    magics = dtrain_magics._magics

    magics.cluster.ensure(Layout(2, 1))
    yield magics.cluster
    magics.cluster.stop()


@pytest.fixture(autouse=True)
def _default_backend_after() -> Iterator[None]:
    """Each test starts from the default backend and device: a cell without ``--backend`` or
    ``--device`` keeps what the ranks last ran, so a test that left the session cluster on
    ``--backend torch`` (or ``--device cuda``) has it forgotten here, and the next test's first
    cell initialises the ranks again with the defaults (their backend differs)."""
    yield
    import dtrain_magics

    if dtrain_magics._magics is not None:
        dtrain_magics._magics._ranks_ran = None  # what a cell without those flags keeps
        dtrain_magics._magics._cluster_ran = None  # and the cluster it starts again, if lost


@pytest.fixture
def run(ip: Any, cluster: Any) -> Any:
    """``run(code, line="--nodes 2")`` runs a ``%%distributed`` cell in the shell."""

    def run_cell(code: str, line: str = "--nodes 2") -> Any:
        return ip.run_cell_magic("distributed", line, code)

    return run_cell


@pytest.fixture(scope="session")
def slurm_up() -> None:
    """A running Slurm of 2 nodes on this host, set up by scripts/slurm-local.sh; or a failure."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "slurm-local.sh"
    env = {**os.environ, "SLURM_NODES": os.environ.get("SLURM_NODES", "2")}
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=600, env=env)
    if done.returncode != 0:
        pytest.fail(f"scripts/slurm-local.sh failed: {done.stdout}{done.stderr}".strip())


@pytest.fixture
def magics(ip: Any, monkeypatch: Any, tmp_path: Path) -> Iterator[Any]:
    """Magics with their own cluster and an empty config dir (the session cluster is untouched)."""
    from dtrain_magics.cluster import TrainingCluster
    from dtrain_magics.ipython.magics import DistributedMagics

    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path))
    m = DistributedMagics(ip, cluster=TrainingCluster())
    yield m
    m.cluster.stop()


@pytest.fixture
def kernel() -> Iterator[Any]:
    """A real Jupyter kernel (this venv's python3), shut down afterwards."""
    from kernel_session import KernelSession

    session = KernelSession()
    yield session
    session.close()
