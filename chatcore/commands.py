"""Slash commands: the value types a plugin registers, and parsing ``/name args``.

Commands are registered by plugins through ``register_commands``; the engine routes to them.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatcore.events import Message
    from chatcore.memory.base import ConversationStore
    from chatcore.services import Services
    from chatcore.skills import Skill

_COMMAND = re.compile(r"^/([A-Za-z][\w-]*)(?:\s+(.*))?$", re.DOTALL)
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What a command handler gets: the message, the text after the name, the app's services,
    the commands and the skills (for ``/help``)."""

    message: Message
    args: str
    services: Services
    commands: Mapping[str, Command]
    skills: Mapping[str, Skill] = field(default_factory=dict)

    @property
    def store(self) -> ConversationStore:
        """The conversation store (``services.store``)."""
        return self.services.store


CommandHandler = Callable[[CommandContext], "str | Awaitable[str]"]


@dataclass(frozen=True, slots=True)
class Command:
    """A slash command: ``/name args``. The handler returns the reply text."""

    name: str
    help: str
    handler: CommandHandler

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"command name {self.name!r} must be lower-case letters, digits, '-' or '_', "
                "starting with a letter, and without the leading '/'"
            )
        if not self.help.strip():
            raise ValueError(f"command /{self.name} needs a one-line help text")


def parse_command(text: str) -> tuple[str, str] | None:
    """Split ``/name args`` into ``(name, args)``; None when the text is not a command."""
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    return match.group(1).lower(), (match.group(2) or "").strip()
