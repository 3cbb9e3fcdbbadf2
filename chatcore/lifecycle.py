"""How a chatcore process stops: SIGINT, SIGTERM and SIGHUP all start the same graceful
shutdown; a second signal, or a shutdown past ``lifecycle.shutdown_timeout``, exits at once.

An adapter may take SIGINT for itself while it has a use for it (the terminal stops the reply in
progress with Ctrl-C); SIGTERM and SIGHUP always mean shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def exit_code(sig: signal.Signals) -> int:
    """The conventional exit status of a program stopped by ``sig`` (130 for SIGINT)."""
    return 128 + int(sig)


def _exit_now(code: int) -> None:
    """Leave at once: no thread, hook or write that is stuck can hold the process. Buffered
    output gets half a second to go out (a flush blocked on a full pipe is left behind)."""

    def flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()

    flusher = threading.Thread(target=flush, daemon=True)
    flusher.start()
    flusher.join(0.5)
    os._exit(code)


class ShutdownSignals:
    """Routes the shutdown signals of one event loop: the first calls ``on_shutdown`` and arms a
    watchdog that exits after ``grace`` seconds; the next one exits at once."""

    def __init__(
        self,
        on_shutdown: Callable[[signal.Signals], None],
        *,
        grace: float,
        exit_now: Callable[[int], None] = _exit_now,
    ) -> None:
        self.on_shutdown = on_shutdown
        self.grace = grace
        self.exit_now = exit_now
        self.received: signal.Signals | None = None
        """The signal that started the shutdown, if one did."""
        self._interrupt_takers: list[Callable[[], object]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._watchdog: threading.Timer | None = None

    def install(self) -> bool:
        """Handle the signals for the running loop; False where that is impossible (not the
        main thread), in which case Python's defaults stay.

        The handlers are plain ``signal.signal`` ones, not the loop's: they run even while the
        event loop is blocked (a write to a full pipe, a plugin that blocks), so the watchdog
        and a second signal always work; what needs the loop is handed to it thread-safely."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._loop = asyncio.get_running_loop()
        for sig in SHUTDOWN_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return True

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            with contextlib.suppress(Exception):
                signal.signal(sig, previous)
        self._previous.clear()
        self._loop = None
        if self._watchdog is not None:
            self._watchdog.cancel()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.handle(signal.Signals(signum))

    def _in_loop(self, callback: Callable[..., object], *args: object) -> None:
        """Run ``callback`` in the event loop (directly when no loop is attached: tests)."""
        if self._loop is None:
            callback(*args)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to tell
                self._loop.call_soon_threadsafe(callback, *args)

    @contextlib.contextmanager
    def interrupts_to(self, callback: Callable[[], object]) -> Iterator[None]:
        """While inside, SIGINT calls ``callback`` instead of shutting down (once a shutdown
        has begun, SIGINT exits at once as usual)."""
        self._interrupt_takers.append(callback)
        try:
            yield
        finally:
            self._interrupt_takers.remove(callback)

    def handle(self, sig: signal.Signals) -> None:
        """What a signal does (the loop's handler; tests call it directly)."""
        if self.received is not None:
            log.warning("second %s: exiting now", sig.name)
            self.exit_now(exit_code(sig))
            return
        if sig == signal.SIGINT and self._interrupt_takers:
            self._in_loop(self._interrupt_takers[-1])
            return
        self.received = sig
        # INFO: adapters show the shutdown where it matters (a stopped reply says so), and a
        # warning here would cut into a reply that is being printed.
        log.info(
            "%s received: shutting down (a second signal exits at once; at most %g s)",
            sig.name,
            self.grace,
        )
        self._watchdog = threading.Timer(self.grace, self._overdue, args=(sig,))
        self._watchdog.daemon = True
        self._watchdog.start()
        self._in_loop(self.on_shutdown, sig)

    def _overdue(self, sig: signal.Signals) -> None:
        log.error(
            "shutdown took longer than %g s (lifecycle.shutdown_timeout); exiting", self.grace
        )
        self.exit_now(exit_code(sig))
