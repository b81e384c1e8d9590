"""Experiment tracking: finished runs sent to MLflow by the notebook's kernel, never by ranks.

MLflow is an optional extra (``pip install 'dtrain-magics[mlflow]'``); ``available()`` says
whether it is installed without importing it.
"""

from __future__ import annotations

import importlib.util
import sys

from .worker import Export, worker

INSTALL_HINT = (
    "--mlflow needs MLflow, which this kernel's environment lacks: run "
    "pip install 'dtrain-magics[mlflow]' (or pip install mlflow) in it."
)

__all__ = ["INSTALL_HINT", "Export", "available", "worker"]


def available() -> bool:
    """Whether ``import mlflow`` would find MLflow (a ``None`` in ``sys.modules`` hides it)."""
    if "mlflow" in sys.modules:
        return sys.modules["mlflow"] is not None
    try:
        return importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):
        return False
