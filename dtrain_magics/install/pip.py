"""Installing into the target environment with its own pip, one sentence on failure."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .facts import InstallError


def pip_install(python: str, args: list[str], what: str) -> None:
    """Run ``python -m pip install args``; one sentence on failure."""
    done = subprocess.run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        raise InstallError(
            f"pip could not install {what} into {Path(python).parent.parent} "
            f"({lines[-1] if lines else f'exit status {done.returncode}'})."
        )
