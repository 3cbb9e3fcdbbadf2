"""Running plugin code with a time limit: sync code in the plugin's own few daemon threads, async
code in a task of its own, abandoned at the limit even if it ignores cancellation.

Whatever the code raises, ``SystemExit`` and ``KeyboardInterrupt`` included, comes back as
``Raised``; running out of time as ``TimedOut``. Neither can end the event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial
from typing import Any


class Raised(Exception):
    """Plugin code raised ``error`` (any ``BaseException``)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class TimedOut(Exception):
    """Plugin code did not return within ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"did not return within {seconds:g} s")
        self.seconds = seconds


async def resolve(value: Any) -> Any:
    """Await ``value`` if it is awaitable: the one place sync and async hooks meet."""
    while inspect.isawaitable(value):
        value = await value
    return value


_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], dict[str, Any]]


class Worker:
    """A few daemon threads that run one plugin's sync code: blocking code never stalls the
    event loop, one slow call does not hold up the plugin's other calls, a plugin whose calls
    all hang holds at most ``size`` threads (its later calls wait, time out, and count towards
    disabling it), and no call can keep the process from exiting."""

    def __init__(self, name: str, size: int = 8) -> None:
        self.name = name
        self.size = size
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, function: Callable[..., Any], kwargs: dict[str, Any]) -> asyncio.Future[Any]:
        """Queue ``function(**kwargs)``; the returned future gets its result or ``Raised``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._calls.put((loop, future, function, kwargs))
        with self._lock:
            start = self._idle == 0 and self._threads < self.size
            if start:
                self._threads += 1
        if start:
            name = f"{self.name}-{self._threads}"
            threading.Thread(target=self._serve, name=name, daemon=True).start()
        return future

    def stop(self) -> None:
        """Let the threads end once the calls queued before are done."""
        for _ in range(self._threads):
            self._calls.put(None)

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            call = self._calls.get()
            with self._lock:
                self._idle -= 1
            if call is None:
                return
            loop, future, function, kwargs = call
            if future.done():  # given up on (timed out or cancelled) before it started
                continue
            try:
                value = function(**kwargs)
            except BaseException as error:
                _settle(loop, future, partial(future.set_exception, Raised(error)))
            else:
                _settle(loop, future, partial(future.set_result, value))


def _settle(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], outcome: Callable[[], None]
) -> None:
    with suppress(RuntimeError):  # the event loop is gone
        loop.call_soon_threadsafe(lambda: None if future.done() else outcome())


async def run_bounded(
    function: Callable[..., Any], kwargs: dict[str, Any], seconds: float, worker: Worker
) -> Any:
    """``function(**kwargs)`` with anything it returns awaited, within ``seconds``: a
    coroutine function in a task of its own, anything else on ``worker``. Raises ``Raised`` or
    ``TimedOut``; a cancellation of the caller cancels the call and propagates."""
    started: Awaitable[Any]
    if inspect.iscoroutinefunction(function):
        started = function(**kwargs)
    else:
        started = worker.submit(function, kwargs)
    task = asyncio.ensure_future(_guarded(started))
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()  # and abandon it: code that ignores the cancellation cannot hold us
        raise TimedOut(seconds)
    if task.cancelled():  # the plugin code cancelled itself
        raise Raised(asyncio.CancelledError())
    return task.result()


async def _guarded(awaitable: Awaitable[Any]) -> Any:
    """Await plugin code, turning whatever it raises into ``Raised``: a ``SystemExit`` or
    ``KeyboardInterrupt`` escaping a task would stop the event loop itself."""
    try:
        return await resolve(awaitable)
    except (asyncio.CancelledError, Raised):
        raise
    except BaseException as error:
        raise Raised(error) from error
