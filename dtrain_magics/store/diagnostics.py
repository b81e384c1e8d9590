"""The per-kernel diagnostics log: every swallowed exception is written here with its trace.

User-facing messages stay one sentence; this file keeps the details a bug report needs. It is
created on the first record, under the runs directory, one file per kernel.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .paths import logs_dir

LOGGER = "dtrain_magics"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def kernel_key() -> str:
    """This kernel's Jupyter id (from its connection file), or ``pid-<pid>`` outside Jupyter."""
    from .kernel_state import kernel_id

    return kernel_id() or f"pid-{os.getpid()}"


def log_path() -> Path:
    """The diagnostics log of this process."""
    return logs_dir() / f"kernel-{kernel_key()}.log"


def enable() -> Path:
    """Send the package's debug records to this kernel's log file (idempotent); its path."""
    path = log_path()
    logger = logging.getLogger(LOGGER)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path:
            return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handler = logging.FileHandler(path, delay=True, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # the notebook shows sentences, the file the traces
    return path


def library_log(name: str) -> logging.Logger:
    """A logger at INFO for the library ``name``, written to this log and not to the cell.

    ipyparallel, given it, keeps its warnings (a stopped engine set's whole log) out of the
    notebook; at DEBUG it would copy every process's output into the cell as it comes.
    """
    logger = logging.getLogger(f"{LOGGER}.{name}")
    logger.setLevel(logging.INFO)
    return logger
