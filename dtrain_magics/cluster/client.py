"""ipyparallel's ``Client``, telling its listeners when a message arrives.

ipyparallel fills ``AsyncResult.metadata`` (output, published data) and resolves results on its
own I/O thread. A listener registered here is called on that thread after every reply and every
IOPub message, so a run waits on the sockets instead of polling the results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ipyparallel import Client

log = logging.getLogger(__name__)
Listener = Callable[[], None]


class NotifyingClient(Client):  # type: ignore[misc]  # ipyparallel has no type hints
    """A ``Client`` that calls each listener (from its I/O thread) after each incoming message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._listeners: list[Listener] = []  # before the I/O thread starts
        super().__init__(*args, **kwargs)

    def busy_engines(self) -> int | None:
        """How many engines have work queued or running (None if the controller did not say)."""
        if not self.outstanding:  # nothing of ours in flight: the controller's counts
            return 0  # may still lag behind a reply we already have
        try:
            queues = self.queue_status()
        except Exception:
            log.debug("queue_status failed", exc_info=True)
            return None
        return sum(
            1 for k, v in queues.items() if k != "unassigned" and (v.get("queue") or v.get("tasks"))
        )

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener must not break ipyparallel's I/O thread
                log.debug("client listener failed", exc_info=True)

    def execute_on(
        self, engine_ids: list[int], code: str, metadata: dict[str, Any] | None = None
    ) -> list[Any]:
        """Send ``code`` to each engine; one single-engine ``AsyncResult`` per engine.

        What a ``DirectView.execute`` per engine does, without building a view and updating
        its history each time (a warm cell's path).
        """
        from ipyparallel.client.asyncresult import AsyncResult

        idents, _ = self._build_targets(list(engine_ids))
        return [
            AsyncResult(
                self,
                # through the stream, as DirectView does: a send on the raw socket can eat the
                # read event the stream waits for, and a reply then sits unread
                self.send_execute_request(
                    self._mux_stream, code, silent=False, ident=ident, metadata=metadata or {}
                ),
                fname="execute",
                targets=eid,
                owner=True,
            )
            for ident, eid in zip(idents, engine_ids, strict=True)
        ]

    def _dispatch_iopub(self, msg: Any) -> None:
        super()._dispatch_iopub(msg)
        self._notify()

    def _dispatch_reply(self, msg: Any) -> None:
        super()._dispatch_reply(msg)
        self._notify()

    def _dispatch_single_reply(self, msg: Any) -> None:
        # control replies, such as the ranks' answers to ``%dtrain where``
        super()._dispatch_single_reply(msg)
        self._notify()


def connect(ipp_cluster: Any) -> NotifyingClient:
    """A ``NotifyingClient`` of a cluster started through ``ipyparallel.Cluster``."""
    # ipyparallel's own way to run its async API from sync code (a thread if a loop runs here)
    info = ipp_cluster._synchronize(ipp_cluster.controller.get_connection_info)
    return NotifyingClient(
        info["client"],
        cluster=ipp_cluster,
        profile_dir=ipp_cluster.profile_dir,
        cluster_id=ipp_cluster.cluster_id,
    )
