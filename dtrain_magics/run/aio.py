"""Async plumbing of a run: waking on messages, and running the async run from sync code."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import threading
import weakref
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
        self._signals = _SignalWakeup(self._loop)
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
        try:
            self._signals.close()
        finally:
            self._client.remove_listener(self.notify)


class _SignalWakeup:
    """While a run waits, a signal wakes the loop at once (``signal.set_wakeup_fd``).

    Python runs a signal's handler (the kernel's interrupt: Stop) in the main thread, when that
    runs Python code; a signal that reaches another thread (ipyparallel's, zmq's) leaves the
    main thread asleep in the loop's ``select`` until its next timer, up to a second later. The
    byte Python's C handler writes to this socket ends that ``select``. Nothing is done where
    the loop is not in the main thread or a wakeup fd is already set (``asyncio``'s own signal
    handlers set one).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pair: tuple[socket.socket, socket.socket] | None = None
        if threading.current_thread() is not threading.main_thread():
            return
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        try:
            previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except ValueError:  # not the main interpreter
            previous = -2
        if previous != -1:
            if previous >= 0:
                signal.set_wakeup_fd(previous)
            reader.close()
            writer.close()
            return
        self._pair = (reader, writer)
        # if ``close`` is never reached: no later signal is written to a reused fd number
        self._finalizer = weakref.finalize(self, _forget_wakeup_fd, writer.fileno())
        loop.add_reader(reader.fileno(), self._drain)

    def _drain(self) -> None:
        if self._pair is not None:
            with contextlib.suppress(OSError):
                self._pair[0].recv(512)

    def close(self) -> None:
        if self._pair is None:
            return
        reader, writer = self._pair
        self._pair = None
        self._finalizer()
        try:
            self._loop.remove_reader(reader.fileno())
        finally:
            reader.close()
            writer.close()


def _forget_wakeup_fd(fd: int) -> None:
    """Unset the wakeup fd if it is still ``fd`` (someone else's is left as it is)."""
    with contextlib.suppress(ValueError):  # not the main thread (a late garbage collection)
        current = signal.set_wakeup_fd(-1)
        if current not in (-1, fd):
            signal.set_wakeup_fd(current)


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
        return run_cancelled_by_ctrl_c(coro)
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


def run_cancelled_by_ctrl_c(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, where Ctrl-C cancels ``coro``'s task (its handlers stop the ranks)
    rather than raising ``KeyboardInterrupt`` wherever the loop is: ``asyncio.run`` does so from
    Python 3.11; before, the same as its ``Runner`` does, for the main thread."""
    if sys.version_info >= (3, 11):
        return asyncio.run(coro)
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return asyncio.run(coro)
    return run_cancelling_on_sigint(coro)


def run_cancelling_on_sigint(coro: Coroutine[Any, Any, T]) -> T:
    """In the main thread: ``asyncio.Runner.run`` of Python 3.11, for Python 3.10. The first
    Ctrl-C cancels ``coro``'s task; a second one, or one after the task is done, raises
    ``KeyboardInterrupt`` where the thread is (a call that blocks the loop included). A Ctrl-C
    that reaches another thread wakes the loop too."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    task = loop.create_task(coro)
    interrupts = 0

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1 and not task.done():
            task.cancel()
            loop.call_soon_threadsafe(lambda: None)  # wake a select with a long timeout
            return
        raise KeyboardInterrupt()

    signal.signal(signal.SIGINT, on_sigint)
    waker = _SignalWakeup(loop)  # also for a signal that reaches another thread
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        if interrupts:
            raise KeyboardInterrupt() from None
        raise
    finally:
        waker.close()
        if signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            left = asyncio.all_tasks(loop)
            for other in left:
                other.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
