"""Every hook a chatcore plugin can implement, grouped by phase; documented in docs/hooks.md.

Plugin authors mark implementations with ``chatcore.hookimpl``. Any hook may be a coroutine
function; chatcore awaits what needs awaiting. A hook that raises is logged with the plugin's
name and contained: it never takes the bot down. Wrapper implementations (``wrapper=True``) are
refused: every hook is called one implementation at a time, bounded, and none wraps a stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from chatcore.config import Settings
    from chatcore.events import Message, Reply
    from chatcore.memory.base import UserKey
    from chatcore.services import Services

PROJECT = "chatcore"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# The phases, in the order a message meets them. docs/hooks.md follows the same order.
PHASES: dict[str, tuple[str, ...]] = {
    "startup": (
        "register_backends",
        "register_adapters",
        "register_commands",
        "register_skills",
        "register_filters",
        "startup",
    ),
    "inbound": ("message_received",),
    "generation": ("extend_system_prompt",),
    "outbound": ("reply_finished",),
    "privacy": ("user_erased",),
    "shutdown": ("shutdown",),
}


# -- startup ---------------------------------------------------------------------------------


@hookspec
def register_backends(register: Callable[[str, Callable[[Settings], Any]], None]) -> None:
    """Register generation backends: ``register(name, factory)``, factory(settings) -> Backend."""


@hookspec
def register_adapters(register: Callable[..., None]) -> None:
    """Register platform adapters: ``register(name, factory, settings=Model)``."""


@hookspec
def register_commands(register: Callable[[Any], None]) -> None:
    """Register slash commands: ``register(Command(name, help, handler))``."""


@hookspec
def register_skills(register: Callable[[Any], None]) -> None:
    """Register skills: ``register(Skill(name, description, handler, options, examples))``
    (``chatcore.skills``); ``/name text`` runs one, streaming its reply like chat."""


@hookspec
def register_filters(register: Callable[[Any], None]) -> None:
    """Register reply pipeline steps: ``register(DetectorSpec(...))`` or
    ``register(RewriterSpec(...))`` (``chatcore.pipeline.steps``)."""


@hookspec
def startup(settings: Settings, services: Services) -> None:
    """Called once when the app has started, with the effective configuration and services."""


# -- inbound ---------------------------------------------------------------------------------


@hookspec
def message_received(message: Message, services: Services) -> None:
    """Called for every message before it is handled; observe only (return value ignored)."""


# -- generation ------------------------------------------------------------------------------


@hookspec
def extend_system_prompt(message: Message, services: Services) -> str | None:
    """Return text to append to the system prompt for this message, or None."""


# -- outbound --------------------------------------------------------------------------------


@hookspec
def reply_finished(message: Message, reply: Reply, services: Services) -> str | None:
    """Called after a reply was completed and stored (not for errors, commands or skills); text it
    returns is shown to the user as a ``Notice`` after the reply, None shows nothing."""


# -- privacy ---------------------------------------------------------------------------------


@hookspec
def user_erased(user: UserKey, services: Services) -> None:
    """Called after a user's data was erased from the store (``/forget-me``, ``chatcore memory
    forget``): erase what your plugin keeps about ``user`` too."""


# -- shutdown --------------------------------------------------------------------------------


@hookspec
def shutdown(services: Services) -> None:
    """Called once when the app stops; release what ``startup`` acquired."""
