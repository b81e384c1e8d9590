"""The status words and record shapes shared by the kernel, the server and the lab extension.

``labextension/src/tokens.ts`` declares the same unions; a test checks the two lists match.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict, get_args

RunStatus = Literal[
    "starting cluster",
    "running",
    "stopping",
    "succeeded",
    "failed",
    "interrupted",
    "timed out",
    "lost",
]
"""A run's status; ``lost`` is the server's word for a run whose kernel exited meanwhile."""

RankStatus = Literal["running", "ok", "error", "interrupted", "died", "killed"]
"""How one rank's part of a run stands or ended."""

ClusterState = Literal["starting", "idle", "busy", "stopped", "broken"]
"""A kernel's cluster as the sidebar and status bar show it."""

ACTIVE_RUN: tuple[RunStatus, ...] = ("starting cluster", "running", "stopping")
FINISHED_RUN: tuple[RunStatus, ...] = ("succeeded", "failed", "interrupted", "timed out")
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
RANK_STATUSES: tuple[str, ...] = get_args(RankStatus)
CLUSTER_STATES: tuple[str, ...] = get_args(ClusterState)


class RankSummary(TypedDict):
    """One rank in ``run.json``."""

    rank: int
    status: RankStatus
    n: int
    total: int | None
    desc: str
    rate: float
    error: str
    lines: int
    messages: int
    step_time: float | None  # mean seconds per step over the last 10 s (straggler view)
    wait_time: float | None  # of which waiting in collectives


class RankOutput(TypedDict):
    """A rank's ``display_data`` or ``execute_result``, as its IPython formatted it."""

    output_type: Literal["display_data", "execute_result"]
    data: dict[str, Any]  # mime type → content
    metadata: dict[str, Any]


class ValueSummary(TypedDict):
    """The value of a cell's last expression on some ranks, in ``run.json``."""

    ranks: list[int]
    text: str


class AttemptSummary(TypedDict):
    """One attempt of a run (``--max-restarts``): the cell run once on a started cluster."""

    attempt: int  # 1, 2, ...
    started: float
    ended: float
    status: RunStatus
    cause: str  # why it ended: "every rank finished", "rank 1 died (killed by signal 9)"
    failing_rank: int | None


class RunSummary(TypedDict):
    """``run.json``: a run's summary, rewritten while it runs and once at its end."""

    id: str
    status: RunStatus
    message: str
    started: float
    ended: float | None
    elapsed: float
    eta: float | None
    kernel_pid: int
    info: dict[str, Any]
    failing_rank: int | None
    failure: str
    latest_metrics: dict[str, float]
    throughput: dict[str, float]
    dropped_points: int
    stalled_ranks: list[int]
    where: dict[str, Any] | None  # the last "where are the ranks?" report
    straggler: dict[str, Any] | None  # {"rank", "share"}: the rank the others wait for
    notes: list[str]
    attempts: list[AttemptSummary]  # every attempt that ended, in order (one without restarts)
    values: list[ValueSummary]
    ranks: list[RankSummary]
    log_paths: dict[str, str]


class ClusterStatus(TypedDict, total=False):
    """What ``TrainingCluster.status()`` reports."""

    launcher: str
    state: Literal["running", "broken", "stopped"]
    cluster_id: str | None
    ranks: int
    nodes: int
    procs_per_node: int
    engines_registered: int
    busy: int | None


class ClusterRecord(TypedDict):
    """``_clusters/<kernel id>.json``: one kernel's cluster, as the server reads it."""

    launcher: str
    state: ClusterState
    cluster_id: str | None
    ranks: int
    nodes: int
    procs_per_node: int
    engines_registered: int | None
    run_id: str | None
    kernel_id: str | None
    kernel_pid: int
    updated: float


class MetricRow(TypedDict):
    """One line of ``metrics.jsonl``."""

    step: int
    rank: int
    name: str
    value: float
    time: float
