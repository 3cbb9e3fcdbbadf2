"""What an adapter programs against: the narrow surface it gets from the app (send a message
and read its events, list the commands, wait until ready, notice a shutdown) and what it
registers (a factory and the model of its settings section).

A leaf module: it imports only value types, so adapters never import the app or the engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from chatcore.config import AdapterSettings
from chatcore.events import Message, ReplyEvent
from chatcore.metrics import Metrics


class AdapterStartError(Exception):
    """An adapter cannot start (a bad token, a port in use): ``str()`` is one line saying what
    to change. Raised from ``run``; the whole run stops with exit code 2."""


@dataclass(frozen=True, slots=True)
class CommandInfo:
    """A command as platforms list it (a slash-command menu, ``/help``)."""

    name: str
    help: str


class ReplyStream(Protocol):
    """The reply events of one message: ``async for`` them; ``aclose()`` stops the reply."""

    def __aiter__(self) -> AsyncIterator[ReplyEvent]: ...

    async def __anext__(self) -> ReplyEvent: ...

    async def aclose(self) -> None: ...


class StopFlag(Protocol):
    """Read-only view of the app's shutdown flag (an ``asyncio.Event`` adapters cannot set)."""

    def is_set(self) -> bool: ...

    async def wait(self) -> Literal[True]: ...


@runtime_checkable
class ChatService(Protocol):
    """The engine as an adapter sees it."""

    def send(self, message: Message) -> ReplyStream:
        """Handle ``message``: zero or more ``ReplyChunk``, then one ``Reply`` or
        ``ReplyError``. Closing the iterator early stops the reply (what was said is kept)."""
        ...

    def commands(self) -> list[CommandInfo]:
        """Every registered command, built-in and from plugins, by name."""
        ...

    async def ready(self) -> None:
        """Start the app if nobody has (loads the model: may take a while) and return once
        messages can be sent. Safe to call from several adapters at once."""
        ...


@runtime_checkable
class Adapter(Protocol):
    """A platform connection: ``run`` serves until the platform session ends or the app stops
    (``context.stopping``), and returns an exit code."""

    async def run(self) -> int: ...


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """What an adapter factory gets: ``factory(context, **options) -> Adapter``."""

    name: str
    settings: Any
    """The adapter's own ``[adapters.<name>]`` section, validated by the model it registered."""
    chat: ChatService
    home: Path
    """The private data directory, for the adapter's own files."""
    stopping: StopFlag
    """Set when the app shuts down: take no more messages, and return from ``run`` once the
    replies in flight have ended (each ends with a ``cancelled`` notice)."""
    interrupts_to: Callable[[Callable[[], object]], AbstractContextManager[None]]
    """``with context.interrupts_to(callback):`` SIGINT calls ``callback`` instead of shutting
    down (the terminal stops a reply with Ctrl-C). Does nothing where signals are not handled."""
    metrics: Metrics
    """The app's one set of Prometheus metrics, shared by every adapter (label: your name)."""


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """An adapter as registered: ``register(name, factory, settings=Model)``."""

    factory: Callable[..., object]
    settings: type[AdapterSettings] = AdapterSettings
