"""Assembles a running chatcore: plugins, the chosen backend, the store and the engine.

Adapters receive an ``AdapterContext``: the engine to talk to and their own settings, nothing
else, so they cannot reach storage, prompts or models.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from chatcore.config import ConfigError, Settings
from chatcore.engine import Engine
from chatcore.generation.types import Backend, GenerationError
from chatcore.memory.inmemory import InMemoryConversationStore
from chatcore.plugins import PluginError, PluginHost

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
            try:
                await self.engine.start()
            except (ConfigError, GenerationError, PluginError):
                raise
            except Exception as error:
                name = self.settings.model.backend
                owner = ""
                if name in self.plugins.backends:
                    owner = f" (plugin {self.plugins.backends.owner(name)!r})"
                raise PluginError(
                    f"backend {name!r}{owner} failed to load: {type(error).__name__}: {error}"
                ) from error
            await self.plugins.call("startup", settings=self.settings)
            self._started = True

    async def close(self) -> None:
        if self._started:
            await self.plugins.call("shutdown")
        await self.engine.close()

    def adapter(self, name: str, **options: Any) -> Adapter:
        """Create the adapter a plugin registered as ``name``."""
        factory = self.plugins.adapters.get(name)
        owner = self.plugins.adapters.owner(name)
        try:
            adapter = factory(AdapterContext(self.settings, self.engine, self.start), **options)
        except Exception as error:
            raise PluginError(
                f"adapter {name!r} (plugin {owner!r}) failed to start: "
                f"{type(error).__name__}: {error}"
            ) from error
        if not isinstance(adapter, Adapter):
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
        try:
            backend = factory(settings)
        except (ConfigError, GenerationError, PluginError):
            raise
        except Exception as error:
            raise PluginError(
                f"backend {name!r} (plugin {plugins.backends.owner(name)!r}) failed to start: "
                f"{type(error).__name__}: {error}"
            ) from error
    store = InMemoryConversationStore(limit=settings.context.history_limit)
    return App(settings, plugins, Engine(settings, backend, store, plugins))
