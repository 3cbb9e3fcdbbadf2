"""Assembles a running chatcore: plugins, the chosen backend, the store and the engine.

Adapters receive an ``AdapterContext``: the engine to talk to and their own settings, nothing
else, so they cannot reach storage, prompts or models.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from chatcore.config import ConfigError, Settings
from chatcore.engine import Engine
from chatcore.generation.types import Backend, GenerationError
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


class App:
    """The running pieces, built from settings by ``create_app``."""

    def __init__(self, settings: Settings, plugins: PluginHost, engine: Engine) -> None:
        self.settings = settings
        self.plugins = plugins
        self.engine = engine
        self._started = False

    async def start(self) -> None:
        """Load the model and tell plugins the app started; idempotent."""
        if not self._started:
            with _blame(self.plugins.backends, self.settings.model.backend, "failed to load"):
                await self.engine.start()
            await self.plugins.call("startup", settings=self.settings)
            self._started = True

    async def close(self) -> None:
        if self._started:
            await self.plugins.call("shutdown")
        await self.engine.close()

    def adapter(self, name: str, **options: Any) -> Adapter:
        """Create the adapter a plugin registered as ``name``."""
        factory = self.plugins.adapters.get(name)
        with _blame(self.plugins.adapters, name, "failed to start"):
            adapter = factory(AdapterContext(self.settings, self.engine, self.start), **options)
        if not isinstance(adapter, Adapter):
            owner = self.plugins.adapters.owner(name)
            raise PluginError(f"adapter {name!r} from plugin {owner!r} has no `async run()`")
        return adapter


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
    store = InMemoryConversationStore(limit=settings.context.history_limit)
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
