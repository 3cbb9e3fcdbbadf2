"""Runs adapters around one app until they end or a signal stops them (``chatcore chat``,
``chatcore run``, ``chatcore serve``).

One adapter that cannot start stops the whole run (exit code 2, one line naming it); one that
crashes later is logged and the others keep serving. SIGINT, SIGTERM and SIGHUP stop everything
the same graceful way, bounded by ``lifecycle.shutdown_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from chatcore.adapter_api import AdapterStartError
from chatcore.app import App, create_app
from chatcore.config import ConfigError, Settings
from chatcore.generation.types import GenerationError
from chatcore.lifecycle import ShutdownSignals, exit_code
from chatcore.plugins import PluginError

log = logging.getLogger(__name__)


def enabled_adapters(app: App) -> list[str]:
    """The registered adapters whose section says ``enabled = true``."""
    return [name for name in app.plugins.adapters.names() if app.adapter_settings(name).enabled]


async def run_adapters(
    settings: Settings,
    names: Sequence[str] | None = None,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    signal_exit_codes: bool = False,
) -> int:
    """Build the app, run the named adapters (all enabled ones when ``names`` is None) until
    every one has ended or a signal stops them, then close the app.

    Returns 0 when every adapter ended with 0 (a clean shutdown after a signal included), else
    the first non-zero code (1 for a crash); 128 + the signal's number after a signal when
    ``signal_exit_codes``. Raises
    ``ConfigError`` or ``AdapterStartError`` (exit code 2 at the command line)."""
    app = await create_app(settings)
    grace = settings.lifecycle.shutdown_timeout
    signals = ShutdownSignals(app.request_stop, grace=grace)
    if signals.install():
        app.signals = signals
    try:
        chosen = list(names) if names else enabled_adapters(app)
        if not chosen:
            known = ", ".join(app.plugins.adapters.names()) or "none"
            raise ConfigError(
                [
                    "config error: no adapter is enabled; set enabled = true in its "
                    f"[adapters.NAME] section or name it (chatcore run NAME); adapters: {known}"
                ]
            )
        adapters = {name: app.adapter(name, **(options or {}).get(name, {})) for name in chosen}
        codes = await _supervise(app, adapters, grace)
    finally:
        try:
            await app.close()
        finally:
            signals.uninstall()
    failed = next((code for code in codes if code), 0)
    if signals.received is not None and signal_exit_codes:
        return exit_code(signals.received)
    return failed  # after a signal too: a crashed adapter is not a clean shutdown


async def _supervise(app: App, adapters: Mapping[str, Any], grace: float) -> list[int]:
    """Run the adapters until all have ended or the app stops; a crash is logged and the
    others go on; a failure to start ends them all."""
    tasks = {
        asyncio.create_task(adapter.run(), name=f"adapter {name}"): name
        for name, adapter in adapters.items()
    }
    stopping = asyncio.create_task(app.stopping.wait())
    codes: list[int] = []
    pending = set(tasks)
    try:
        while pending and not app.stopping.is_set():
            done, pending = await asyncio.wait(
                pending | {stopping}, return_when=asyncio.FIRST_COMPLETED
            )
            pending.discard(stopping)
            for task in done - {stopping}:
                codes.append(_outcome(task, tasks[task]))
        if pending:
            # Still loading: nothing to finish. Serving: let the adapters show how the replies
            # in flight ended, for at most half the grace period.
            if app.started:
                await asyncio.wait(pending, timeout=grace / 2)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=grace / 2)
            codes += [_outcome(task, tasks[task]) if task.done() else 1 for task in pending]
    finally:
        stopping.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=grace)
    return codes


def _outcome(task: asyncio.Task[int], name: str) -> int:
    """The exit code of a finished adapter task; a failure to start is raised, a crash logged."""
    if task.cancelled():
        return 1
    error = task.exception()
    if error is None:
        return task.result()
    if isinstance(error, AdapterStartError):
        raise AdapterStartError(f"adapter {name!r}: {error}") from error
    if isinstance(error, ConfigError | PluginError | GenerationError):
        raise error  # the app the adapter started cannot start: it says why
    log.error("adapter %r crashed: %s; the others keep serving", name, error, exc_info=error)
    return 1
