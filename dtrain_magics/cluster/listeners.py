"""Who hears about cluster state changes: callbacks held weakly, errors logged, never raised."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from ..store.schema import ClusterRecord

log = logging.getLogger(__name__)


class StateListeners:
    """Bound methods called with each new ``ClusterRecord`` (dropped once their object is gone)."""

    def __init__(self) -> None:
        self._refs: list[weakref.WeakMethod[Any]] = []

    def add(self, listener: Callable[[ClusterRecord], None]) -> None:
        """Call ``listener(record)`` on every state change (held weakly: a bound method)."""
        self._refs.append(weakref.WeakMethod(listener))

    def notify(self, record: ClusterRecord) -> None:
        """Call every live listener; one that fails is logged and the others still run."""
        for ref in list(self._refs):
            listener = ref()
            if listener is None:
                self._refs.remove(ref)
                continue
            try:
                listener(record)
            except Exception:
                log.debug("cluster listener failed", exc_info=True)
