"""Assembles a running chatcore: plugins, the chosen backend, the store and the engine; runs an
adapter around them and stops it all gracefully.

Adapters receive an ``AdapterContext``: the engine to talk to and their own settings, nothing
else, so they cannot reach storage, prompts or models.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from chatcore.config import ConfigError, Settings
from chatcore.engine import Engine
from chatcore.files import secure_tree
from chatcore.generation.types import Backend, GenerationError
from chatcore.lifecycle import ShutdownSignals, exit_code
from chatcore.memory.inmemory import InMemoryConversationStore
from chatcore.plugins import PluginError, PluginHost, Registry

log = logging.getLogger(__name__)


@runtime_checkable
class Adapter(Protocol):
    """A platform connection: runs until the platform session ends; returns an exit code."""

    async def run(self) -> int: ...


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """What an adapter factory gets: ``register(name, factory)`` with
    ``factory(context, **options) -> Adapter``."""

    settings: Settings
    engine: Engine
    start: Callable[[], Awaitable[None]]
    """Start the app (loads the model; may take a while): adapters show progress around it."""
    stopping: asyncio.Event
    """Set when the app is shutting down: take no more messages, and return from ``run`` once
    the replies in flight have ended (the engine ends each with a ``cancelled`` notice)."""
    interrupts_to: Callable[[Callable[[], object]], AbstractContextManager[None]]
    """``with context.interrupts_to(callback):`` SIGINT calls ``callback`` instead of shutting
    down (the terminal stops a reply with Ctrl-C). Does nothing where signals are not handled."""


class App:
    """The running pieces, built from settings by ``create_app``."""

    def __init__(self, settings: Settings, plugins: PluginHost, engine: Engine) -> None:
        self.settings = settings
        self.plugins = plugins
        self.engine = engine
        self.stopping = asyncio.Event()
        self.signals: ShutdownSignals | None = None
        self._started = False
        self._closed = False
        self._start_lock = asyncio.Lock()
        self._engine_stopped: asyncio.Future[Any] | None = None

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> None:
        """Load the model and tell plugins the app started; idempotent, also when called by
        several adapters at once."""
        async with self._start_lock:
            if not self._started:
                with _blame(self.plugins.backends, self.settings.model.backend, "failed to load"):
                    await self.engine.start()
                await self.plugins.call("startup", settings=self.settings)
                self._started = True

    def request_stop(self, *_: object) -> None:
        """Begin the graceful shutdown: adapters take no more messages, replies in flight end
        with a notice and their partial text is stored. ``close`` finishes it."""
        if not self.stopping.is_set():
            self.stopping.set()
            self._engine_stopped = self.engine.stop()

    async def close(self) -> None:
        """Stop the engine (replies in flight end, their text stored), then run the
        ``shutdown`` hooks, then close the store and the backend; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.request_stop()
        if self._engine_stopped is not None:
            await self._engine_stopped
        if self._started:
            await self.plugins.call("shutdown")
        await self.engine.close()

    def adapter(self, name: str, **options: Any) -> Adapter:
        """Create the adapter a plugin registered as ``name``."""
        factory = self.plugins.adapters.get(name)
        context = AdapterContext(
            self.settings, self.engine, self.start, self.stopping, self._interrupts_to
        )
        with _blame(self.plugins.adapters, name, "failed to start"):
            adapter = factory(context, **options)
        if not isinstance(adapter, Adapter):
            owner = self.plugins.adapters.owner(name)
            raise PluginError(f"adapter {name!r} from plugin {owner!r} has no `async run()`")
        return adapter

    def _interrupts_to(self, callback: Callable[[], object]) -> AbstractContextManager[None]:
        if self.signals is None:
            return nullcontext()
        return self.signals.interrupts_to(callback)


async def run_adapter(
    settings: Settings, name: str, *, signal_exit_codes: bool = True, **options: Any
) -> int:
    """Run one adapter around a new app until it ends or a signal stops it, then close the app.

    SIGINT, SIGTERM and SIGHUP all stop it the same way: adapters take no more messages,
    replies in flight end with a notice (their text stored), ``shutdown`` hooks run, then the
    store and the backend close; all within ``lifecycle.shutdown_timeout`` seconds. Returns the
    adapter's exit code, or 128 + the signal's number after a signal when ``signal_exit_codes``.
    """
    app = await create_app(settings)
    grace = settings.lifecycle.shutdown_timeout
    signals = ShutdownSignals(app.request_stop, grace=grace)
    if signals.install():
        app.signals = signals
    try:
        runner = asyncio.create_task(app.adapter(name, **options).run())
        stopping = asyncio.create_task(app.stopping.wait())
        await asyncio.wait([runner, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not runner.done():
            # Still loading: nothing to finish. Serving: let the adapter show how the replies
            # in flight ended, for at most half the grace period.
            if app.started:
                await asyncio.wait([runner], timeout=grace / 2)
            runner.cancel()
            await asyncio.wait([runner])
        code = 1 if runner.cancelled() else runner.result()
    finally:
        try:
            await app.close()
        finally:
            signals.uninstall()
    if signals.received is not None:
        return exit_code(signals.received) if signal_exit_codes else 0
    return code


async def create_app(
    settings: Settings, *, plugins: PluginHost | None = None, backend: Backend | None = None
) -> App:
    """Load plugins (unless given), create the configured backend (unless given) and the
    engine. Raises ``PluginError`` when the configured backend does not exist."""
    if plugins is None:
        plugins = PluginHost()
        await plugins.load(settings)
    if backend is None:
        name = settings.model.backend
        factory = plugins.backends.get(name)
        with _blame(plugins.backends, name, "failed to start"):
            backend = factory(settings)
    try:
        for problem in secure_tree(settings.home_path):
            log.warning("%s", problem)
    except OSError as error:  # what needs the directory says so when it needs it
        log.warning("the data directory %s is not usable: %s", settings.home_path, error)
    store = InMemoryConversationStore(
        limit=settings.context.history_limit,
        max_conversations=settings.storage.max_conversations_in_memory,
    )
    return App(settings, plugins, Engine(settings, backend, store, plugins))


@contextmanager
def _blame(registry: Registry[Any], name: str, what: str) -> Iterator[None]:
    """Turn an unexpected error from plugin-supplied code into a ``PluginError`` that names the
    plugin; errors that already say what to do pass through."""
    try:
        yield
    except (ConfigError, GenerationError, PluginError):
        raise
    except Exception as error:
        owner = f" (plugin {registry.owner(name)!r})" if name in registry else ""
        raise PluginError(
            f"{registry.kind} {name!r}{owner} {what}: {type(error).__name__}: {error}"
        ) from error
