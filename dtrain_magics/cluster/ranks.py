"""The ranks as the notebook sees them: which engine is which rank, and their backend.

Initialising the backend (Horovod or ``torch.distributed``) and resetting it after an aborted
collective happen here, on every engine at once, with a timeout; the rank-side work itself is
``dtrain_magics.rank.setup``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import BadOptions, ClusterStartError, RankError
from .launchers.base import is_local_host

log = logging.getLogger(__name__)
BackendKey = tuple[str, str, int]  # backend, device, procs per node


@dataclass(frozen=True)
class RankEngine:
    """Where a rank lives: its ipyparallel engine id and its process."""

    rank: int
    engine_id: int
    pid: int
    host: str
    node: str = ""  # Slurm's name for the host (MPI's reports use it there), else ``host``


def _describe_rank() -> dict[str, Any]:
    """Runs on an engine: its rank and process facts."""
    import os
    import socket

    from dtrain_magics.rank.world import place

    host = socket.gethostname()
    node = os.environ.get("SLURMD_NODENAME", host)
    return {"rank": place().rank, "pid": os.getpid(), "host": host, "node": node}


def describe(client: Any) -> list[RankEngine]:
    """Every registered engine as a rank, in rank order."""
    ids = list(client.ids)  # fixed first: engines may still be registering
    described = client[ids].apply_sync(_describe_rank)
    engines = sorted(
        (
            RankEngine(d["rank"], eid, d["pid"], d["host"], d.get("node", ""))
            for eid, d in zip(ids, described, strict=True)
        ),
        key=lambda e: e.rank,
    )
    ranks = [e.rank for e in engines]
    if ranks != list(range(len(engines))):
        raise ClusterStartError(
            f"the cluster's {len(engines)} engines are MPI ranks {ranks}, not one MPI job's: "
            f"start its engines under MPI (ipcluster start --engines=mpi -n {len(engines)})."
        )
    return engines


def local_pids(engines: Iterable[RankEngine]) -> set[int]:
    """The pids of the engines on this host: another host's pid names some process here."""
    return {e.pid for e in engines if is_local_host(e.host)}


def signal_engines(
    client: Any, engines: Iterable[RankEngine], sig: int, timeout: float = 5.0
) -> None:
    """Send ``sig`` to ``engines``: straight to those on this host (their launcher may start
    them without a nanny), through their nanny to the others, whose answers are awaited for
    ``timeout`` seconds at most (a lost node's never comes; its rank's heartbeat stops)."""
    remote = []
    for engine in engines:
        if not is_local_host(engine.host):
            remote.append(engine.engine_id)
            continue
        try:
            os.kill(engine.pid, sig)
        except ProcessLookupError:  # it died: the run notices
            log.debug("rank %d is gone", engine.rank, exc_info=True)
    if not remote:
        return
    try:
        replies = client.send_signal(sig, targets=remote, block=False).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        log.warning("engines %s did not confirm signal %d within %g s", remote, sig, timeout)
        return
    for reply in replies:
        if reply["content"]["status"] != "ok":
            log.warning("an engine's nanny could not send signal %d: %s", sig, reply["content"])


def first_remote_error(e: BaseException) -> str:
    """``ename: evalue`` of the first remote error inside ``e``."""
    inner = getattr(e, "elist", None)
    if inner:
        ename, evalue = inner[0][0], inner[0][1]
        return str(evalue) if ename == "RuntimeError" else f"{ename}: {evalue}"
    ename = getattr(e, "ename", None)
    if ename:
        evalue = getattr(e, "evalue", "")
        return str(evalue) if ename == "RuntimeError" else f"{ename}: {evalue}"
    return f"{type(e).__name__}: {e}"


class RankBackends:
    """The backend every rank of one cluster runs, initialised once and reset after aborts."""

    def __init__(self) -> None:
        self.key: BackendKey | None = None
        self.ran: BackendKey | None = None  # the last key initialised, kept when ranks go
        self.device: str | None = None
        self.kind: str | None = None  # cpu or cuda, for every rank
        self.versions: dict[str, Any] = {}  # rank 0's Python, torch and Horovod
        self.first_done: float | None = None  # when a rank first ended the last cell
        self.resume_next = False  # Horovod may be down whatever the time (a script, a subset)

    @property
    def name(self) -> str | None:
        """The backend the ranks run (``horovod`` or ``torch``), if they were initialised."""
        return self.key[0] if self.key else None

    def forget(self) -> None:
        """The ranks are gone or new: the next cell initialises again."""
        self.key = None
        self.device = None
        self.kind = None
        self.versions = {}
        self.first_done = None
        self.resume_next = False

    def cell_metadata(self, now: float, subset: str | None = None) -> dict[str, Any]:
        """Execute request metadata for a cell: on every rank, restart Horovod if the ranks may
        have suspended it since the last cell (``rank/idle.py``); on some of the ranks, which
        ones (``rank/subset.py``: their collectives fail at once)."""
        from ..rank.idle import RESUME
        from ..rank.subset import SUBSET

        if subset:
            return {SUBSET: subset}
        resume = self._may_be_suspended(now)
        self.resume_next = False
        return {RESUME: True} if resume else {}

    def hold(self, view: Any, now: float, timeout: float = 30.0) -> None:
        """Before a cell on some of the ranks: keep Horovod up on every rank of ``view`` through
        it, restarted first if it may be suspended (only every rank at once can restart it)."""
        from ..rank.idle import hold

        if self.name != "horovod":
            return
        try:
            view.apply_async(hold, self._may_be_suspended(now)).get(timeout=timeout)
        except Exception as e:
            message = first_remote_error(e)
            raise RankError(f"restarting Horovod on every rank failed: {message}") from None
        # a rank of the cell suspends it for all when it ends (on CPUs; on GPUs, where it stays
        # up, this costs the next cell one restart, which keeps the rule the same for both)
        self.resume_next = True

    def _may_be_suspended(self, now: float) -> bool:
        from ..rank.idle import RESUME_AFTER

        if self.name != "horovod":
            return False
        if self.kind == "cuda":  # ranks on GPUs keep Horovod up between cells (rank/idle.py)
            return self.resume_next
        idle = self.first_done is not None and now - self.first_done >= RESUME_AFTER
        return idle or self.resume_next

    def prepare(
        self,
        make_view: Callable[[], Any],
        key: BackendKey,
        simulate_nodes: bool,
        timeout: float,
        own_engines: bool = False,
    ) -> bool:
        """Initialise ``key``'s backend on every rank of ``make_view()`` unless done; True if it
        was.

        ``own_engines``: the engines were started here (``rank.setup.init_rank``).

        Raises ``BadOptions`` for a device the ranks lack, ``RankError`` otherwise; a timeout
        is reported as a ``TimeoutError`` for the cluster to act on.
        """
        if self.key == key:
            return False
        from ..rank.setup import init_rank

        backend, device, procs_per_node = key
        self.forget()
        ranks = make_view()
        try:
            kind, note = _choose_device(ranks, device, timeout)
            rendezvous = _rendezvous(ranks, timeout) if backend == "torch" else None
            ar = ranks.apply_async(
                init_rank, backend, kind, procs_per_node, simulate_nodes, rendezvous, own_engines
            )
            described = ar.get(timeout=timeout)
        except (TimeoutError, BadOptions):
            raise
        except Exception as e:
            message = first_remote_error(e)
            raise RankError(f"initialising {backend} failed: {message}") from None
        self.key = self.ran = key
        self.kind = kind
        self.device = ", ".join(sorted({d["device"] for d in described}))
        if note:
            self.device += f" ({note})"
        first: dict[str, Any] = min(described, key=lambda d: d["rank"], default={})
        self.versions = dict(first.get("versions") or {})
        return True

    @staticmethod
    def take_stuck(data: dict[str, Any]) -> dict[str, Any] | None:
        """A rank's notice, taken out of its published ``data``, that it waits in a collective
        of a cell on some of the ranks: ``error`` (what it did, after "rank N"), ``where`` (the
        cell's line) and ``ended`` (False: only the other ranks can end it, ``abandon``)."""
        from ..rank.subset import STUCK

        return data.pop(STUCK, None)  # type: ignore[no-any-return]

    @staticmethod
    def take_broadcasts(data: dict[str, Any]) -> int:
        """How many of rank 0's broadcasts (``dtrain.checkpoint``, ``load_checkpoint``) a rank
        took part in during its cell, taken out of its published ``data``."""
        from ..rank.checkpoint import BROADCASTS

        return int(data.pop(BROADCASTS, 0))

    @staticmethod
    def take_missed_broadcasts(view: Any, count: int, timeout: float = 10.0) -> None:
        """Have the rank of ``view`` take ``count`` broadcasts rank 0 made without it."""
        from ..rank.checkpoint import take_missed

        view.apply_async(take_missed, count).get(timeout=timeout)

    @staticmethod
    def abandon(view: Any) -> None:
        """Have the ranks of ``view`` drop their process group, without waiting: a rank of a
        cell on the others waits for them in a ``torch.distributed`` collective, and only that
        ends its wait (``reset`` makes a new group on every rank after the cell)."""
        from ..rank.setup import abandon_rank

        view.apply_async(abandon_rank)

    def reset(self, view: Any, timeout: float = 30.0) -> bool:
        """Reset the backend on every rank after an aborted cell; False if that failed."""
        from ..rank.setup import reset_rank

        try:
            torch = self.key is not None and self.key[0] == "torch"
            rendezvous = _rendezvous(view, timeout) if torch else None
            view.apply_async(reset_rank, rendezvous).get(timeout=timeout)
            return True
        except Exception:
            log.debug("resetting the backend failed", exc_info=True)
            return False


def _choose_device(view: Any, requested: str, timeout: float) -> tuple[str, str | None]:
    """``cpu`` or ``cuda`` for every rank of ``view`` (``cluster/devices.py``), and a note."""
    from ..rank.devices import survey
    from .devices import choose_device

    if requested == "cpu":
        return "cpu", None
    return choose_device(requested, view.apply_async(survey, requested).get(timeout=timeout))


def _rendezvous(view: Any, timeout: float) -> str:
    """A new address on rank 0 for ``torch.distributed``'s rendezvous: the ranks run no MPI
    to agree on one themselves (``rank/world.py``)."""
    from ..rank.backends import offer_rendezvous, rendezvous_address

    return rendezvous_address(view.apply_async(offer_rendezvous).get(timeout=timeout))
