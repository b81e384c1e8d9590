"""Ctrl-C during a run started from sync code cancels the run's task (pure asyncio, no
cluster): what lets the runner stop the ranks on Python 3.10 as on 3.11."""

from __future__ import annotations

import _thread
import asyncio
import signal
import threading
import time
from collections.abc import Callable

import pytest

from dtrain_magics.run.aio import run_cancelling_on_sigint


async def _sleep_until_cancelled() -> str:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        await asyncio.sleep(0.05)  # the runner's handler stops the ranks here
        return "handled"
    return "slept"


def _sigint() -> None:
    """SIGINT to the main thread, as a terminal's Ctrl-C usually lands."""
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


@pytest.mark.parametrize(
    "ctrl_c", [_thread.interrupt_main, _sigint], ids=["interrupt_main", "kill"]
)
def test_ctrl_c_cancels_the_run_which_may_handle_it(ctrl_c: Callable[[], None]) -> None:
    threading.Timer(0.2, ctrl_c).start()
    assert run_cancelling_on_sigint(_sleep_until_cancelled()) == "handled"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_not_handled_by_the_run_is_a_keyboard_interrupt() -> None:
    threading.Timer(0.2, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        run_cancelling_on_sigint(asyncio.sleep(30))


def test_a_second_ctrl_c_ends_a_call_that_blocks_the_loop() -> None:
    """As ``asyncio.Runner``: the first Ctrl-C cancels, a second one raises at once where the
    thread is, even inside a blocking call (the run's own, say a push to the ranks)."""

    async def block_when_cancelled() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            time.sleep(10)

    for delay in (0.2, 0.5):
        threading.Timer(delay, _sigint).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_cancelling_on_sigint(block_when_cancelled())
    assert time.monotonic() - started < 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_run_without_ctrl_c_returns_its_value_and_its_error() -> None:
    async def value() -> int:
        await asyncio.sleep(0)
        return 7

    async def error() -> None:
        raise ValueError("boom")

    assert run_cancelling_on_sigint(value()) == 7
    with pytest.raises(ValueError, match="boom"):
        run_cancelling_on_sigint(error())


class _Client:
    """What ``Wakeup`` needs of ipyparallel's client (pure: no cluster)."""

    def add_listener(self, listener: Callable[[], None]) -> None:
        pass

    def remove_listener(self, listener: Callable[[], None]) -> None:
        pass


def test_a_signal_reaching_another_thread_wakes_a_waiting_run_at_once() -> None:
    """The kernel's interrupt (Stop) waited for the run's next timer, up to a second, when the
    signal reached one of ipyparallel's threads: Python runs handlers in the main thread only."""
    from dtrain_magics.run.aio import Wakeup

    async def wait_for_signal() -> float:
        wake = Wakeup(_Client())
        previous = signal.signal(signal.SIGUSR1, lambda *_: wake.set())
        release = threading.Event()
        other = threading.Thread(target=release.wait, args=(30,))
        other.start()
        try:
            started = time.monotonic()
            threading.Timer(0.2, signal.pthread_kill, (other.ident or 0, signal.SIGUSR1)).start()
            await wake.wait(10)
            return time.monotonic() - started
        finally:
            signal.signal(signal.SIGUSR1, previous)
            wake.close()
            release.set()
            other.join()

    assert asyncio.run(wait_for_signal()) < 2
    assert signal.set_wakeup_fd(-1) == -1  # put back as it was
