"""Async plumbing of a run: waking on messages, and running the async run from sync code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Wakeup:
    """Wakes a waiting coroutine when ipyparallel's I/O thread receives a message for us.

    ``NotifyingClient`` calls ``notify`` on its I/O thread; the waiter's loop is woken at most
    once per batch of messages. ``set`` wakes it from the loop's own thread (the Stop button).
    """

    def __init__(self, client: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._scheduled = False
        self._client = client
        client.add_listener(self.notify)

    def notify(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon_threadsafe(self.set)

    def set(self) -> None:
        self._scheduled = False
        self._event.set()

    async def wait(self, timeout: float | None) -> None:
        """Until a message arrives, ``set`` is called, or ``timeout`` seconds pass.

        A timer sets the event rather than ``asyncio.wait_for``, which can swallow a
        cancellation (the kernel's interrupt) that lands as the event is set.
        """
        timer = None if timeout is None else self._loop.call_later(max(timeout, 0), self.set)
        try:
            await self._event.wait()
        finally:
            if timer is not None:
                timer.cancel()
            self._event.clear()

    def close(self) -> None:
        self._client.remove_listener(self.notify)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code.

    With no event loop running in this thread, ``asyncio.run`` (Ctrl-C cancels the run, which
    stops the ranks); inside a running loop (a kernel cell without the input transformer), a
    private loop in a helper thread, as ipyparallel's ``AsyncFirst`` does.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop_running = False
    else:
        loop_running = True
    if not loop_running:  # outside the except block: the run's errors are not chained to it
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=main, name="dtrain-run", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
