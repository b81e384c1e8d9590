"""The suites, in the order a full run runs them; each one is ``run(ctx, report)``."""

from __future__ import annotations

from collections.abc import Callable

from ..context import Context
from ..report import Report
from . import allreduce, cold, latency, replicas, scaling, soak, throughput

Suite = Callable[[Context, Report], None]

SUITES: dict[str, Suite] = {
    "latency": latency.run,
    "cold": cold.run,
    "throughput": throughput.run,
    "allreduce": allreduce.run,
    "scaling": scaling.run,
    "soak": soak.run,
    "replicas": replicas.run,
}
