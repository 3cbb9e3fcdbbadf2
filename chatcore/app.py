"""Assembles a running chatcore: plugins, the chosen backend, the store and the engine, and
the adapters around them; stops it all gracefully.

Adapters receive an ``AdapterContext`` (``chatcore.adapter_api``): a narrow chat surface and
their own settings, nothing else, so they cannot reach storage, prompts or models.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from chatcore.adapter_api import Adapter, AdapterContext, CommandInfo, ReplyStream
from chatcore.config import ConfigError, Settings, section_settings, step_settings
from chatcore.engine import Engine
from chatcore.events import Message
from chatcore.files import secure_home
from chatcore.generation.capabilities import check_generation_settings
from chatcore.generation.types import Backend, GenerationError
from chatcore.lifecycle import ShutdownSignals
from chatcore.memory.base import ConversationStore
from chatcore.memory.sql import SqlStore
from chatcore.metrics import Metrics
from chatcore.plugins import PluginError, PluginHost, Registry
from chatcore.privacy import Retention

log = logging.getLogger(__name__)


class AppChat:
    """The ``ChatService`` adapters get: the engine's ``handle``, the command list and the
    app's start, nothing else."""

    def __init__(self, app: App) -> None:
        self._app = app

    def send(self, message: Message) -> ReplyStream:
        return self._app.engine.handle(message)

    def commands(self) -> list[CommandInfo]:
        plugins = self._app.plugins
        commands = [CommandInfo(name, cmd.help) for name, cmd in plugins.commands.items()]
        skills = [CommandInfo(name, skill.description) for name, skill in plugins.skills.items()]
        return sorted(commands + skills, key=lambda info: info.name)

    async def ready(self) -> None:
        await self._app.start()


class App:
    """The running pieces, built from settings by ``create_app``."""

    def __init__(self, settings: Settings, plugins: PluginHost, engine: Engine) -> None:
        self.settings = settings
        self.plugins = plugins
        self.engine = engine
        self.stopping = asyncio.Event()
        self.metrics: Metrics = engine.metrics
        """Shared by every adapter and the pipeline, so one scrape covers them all."""
        self.signals: ShutdownSignals | None = None
        self._started = False
        self._startup_began = False
        self._closed = False
        self._start_lock = asyncio.Lock()
        self._engine_stopped: asyncio.Future[Any] | None = None
        self.retention = Retention(engine.store, settings.memory.retention_days)
        """Prunes old messages in the background while the app runs (``memory.retention_days``)."""

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
                self._startup_began = True  # from here on, shutdown hooks have work to undo
                await self.plugins.call(
                    "startup", settings=self.settings, services=self.engine.services
                )
                self._started = True
                self.retention.start()

    def request_stop(self, *_: object) -> None:
        """Begin the graceful shutdown: adapters take no more messages, replies in flight end
        with a notice and their partial text is stored. ``close`` finishes it."""
        self.stopping.set()
        if self._engine_stopped is None:
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
        await self.retention.close()
        if self._startup_began:
            # All at once, each within half the shutdown's time: what is left closes the rest.
            grace = self.settings.lifecycle.shutdown_timeout / 2
            await self.plugins.call(
                "shutdown", seconds=grace, concurrently=True, services=self.engine.services
            )
        await self.engine.close()

    def adapter_settings(self, name: str) -> Any:
        """The validated ``[adapters.<name>]`` section of a registered adapter."""
        spec = self.plugins.adapters.get(name)
        return section_settings(self.settings, name, spec.settings)

    def adapter(self, name: str, **options: Any) -> Adapter:
        """Create the adapter a plugin registered as ``name``, with its validated settings."""
        spec = self.plugins.adapters.get(name)
        context = AdapterContext(
            name=name,
            settings=self.adapter_settings(name),
            chat=AppChat(self),
            home=self.settings.home_path,
            stopping=self.stopping,
            interrupts_to=self._interrupts_to,
            metrics=self.metrics,
        )
        with _blame(self.plugins.adapters, name, "failed to start"):
            adapter = spec.factory(context, **options)
        if not isinstance(adapter, Adapter):
            owner = self.plugins.adapters.owner(name)
            raise PluginError(f"adapter {name!r} from plugin {owner!r} has no `async run()`")
        return adapter

    def _interrupts_to(self, callback: Callable[[], object]) -> AbstractContextManager[None]:
        if self.signals is None:
            return nullcontext()
        return self.signals.interrupts_to(callback)


async def create_app(
    settings: Settings,
    *,
    plugins: PluginHost | None = None,
    backend: Backend | None = None,
    store: ConversationStore | None = None,
) -> App:
    """Load plugins (unless given), create the configured backend and store (unless given)
    and the engine. Raises ``PluginError`` when the configured backend does not exist, and
    ``ConfigError`` when it cannot honour a chosen generation setting."""
    if plugins is None:
        plugins = PluginHost()
        await plugins.load(settings)
    if backend is None:
        name = settings.model.backend
        factory = plugins.backends.get(name)
        with _blame(plugins.backends, name, "failed to start"):
            backend = factory(settings)
    # Settings the backend cannot honour stop the start here, one line each, before any work.
    check_generation_settings(backend, settings)
    try:
        for problem in secure_home(settings.home_path):
            log.warning("%s", problem)
    except OSError as error:  # what needs the directory says so when it needs it
        log.warning("the data directory %s is not usable: %s", settings.home_path, error)
    if store is None:
        sql = open_store(settings)
        try:
            await sql.open()  # migrations; a database that cannot be used stops the start here
        except BaseException:
            await sql.close()
            raise
        store = sql
    app = App(settings, plugins, Engine(settings, backend, store, plugins))
    _check_adapter_sections(app)
    _check_step_sections(app)
    return app


def _check_adapter_sections(app: App) -> None:
    """Validate every ``[adapters.*]`` section now, so a mistake is one line before anything
    starts; a section no adapter registered is a mistake only when it is enabled."""
    for name, raw in app.settings.adapters.items():
        if name in app.plugins.adapters:
            app.adapter_settings(name)
        elif raw.get("enabled") in (True, "true", "True", "1", 1):
            known = ", ".join(app.plugins.adapters.names()) or "none"
            raise ConfigError(
                [
                    f"config error: [adapters.{name}] is enabled but no plugin registers an "
                    f"adapter named {name!r}; adapters: {known} (see `chatcore plugins`)"
                ]
            )
        else:
            log.info("[adapters.%s]: no plugin registers an adapter by that name", name)


def _check_step_sections(app: App) -> None:
    """Validate every ``[pipeline.steps.*]`` section of a registered step now; a section no
    plugin registers is only reported (with a warning when it sets anything: its step will
    not run)."""
    steps = app.plugins.filters
    for name, raw in app.settings.pipeline.steps.items():
        if name in steps:
            step_settings(app.settings, name, steps.get(name).settings)
        elif raw:
            known = ", ".join(steps.names()) or "none"
            log.warning(
                "[pipeline.steps.%s] is set but no plugin registers a step named %r, so it does "
                "not run; steps: %s (see `chatcore plugins`)",
                name,
                name,
                known,
            )


def open_store(settings: Settings) -> SqlStore:
    """The durable store ``storage.url`` names (SQLite in the data directory by default). It
    opens (creates the file, applies migrations) on ``await store.open()`` or its first use;
    ``StoreError`` says what is wrong with an unusable URL or database."""
    return SqlStore(settings.storage_url, history_limit=settings.context.history_limit)


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
