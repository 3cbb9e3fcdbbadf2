"""Value types that adapters and the engine exchange: one inbound message, the reply events.

A leaf module: it imports nothing of chatcore, so every other module may import it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """Identifies one conversation: a user in a channel on a platform."""

    platform: str
    channel: str
    user: str

    def __str__(self) -> str:
        return f"{self.platform}:{self.channel}:{self.user}"


@dataclass(frozen=True, slots=True)
class Message:
    """One message from a user, as an adapter hands it to the engine.

    ``user`` is the platform's own user id; ``channel`` is where the message was posted (for a
    terminal or a direct message, anything stable, such as ``"dm"``).
    """

    text: str
    user: str
    channel: str
    platform: str
    id: str = field(default_factory=_new_id)
    timestamp: datetime = field(default_factory=_now)
    user_name: str | None = None

    @property
    def conversation(self) -> ConversationKey:
        """The conversation this message belongs to."""
        return ConversationKey(self.platform, self.channel, self.user)


Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a conversation or a prompt. Stored messages also carry their ``id``, when
    they were ``created`` and their size in ``tokens`` (None where unknown); these do not take
    part in equality, so a stored message equals the same role and text built by hand."""

    role: Role
    content: str
    id: str | None = field(default=None, compare=False)
    created: datetime | None = field(default=None, compare=False)
    tokens: int | None = field(default=None, compare=False)


FinishReason = Literal["stop", "length", "cancelled"]
"""Why a reply ended: the model finished, the token limit was hit, or the consumer went away."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token accounting for one reply."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ReplyChunk:
    """A piece of a reply as it streams; ``index`` counts chunks from 0."""

    message_id: str
    text: str
    index: int


@dataclass(frozen=True, slots=True)
class Reply:
    """The whole reply to one message, sent after its last chunk (or alone, for a command)."""

    message_id: str
    text: str
    finish_reason: FinishReason = "stop"
    usage: Usage = field(default_factory=Usage)
    streamed: bool = False
    """True when the text already went out as ``ReplyChunk`` events."""


ErrorCode = Literal[
    "empty_message",
    "message_too_long",
    "unknown_command",
    "command_failed",
    "skill_failed",
    "bad_options",
    "backend_error",
    "internal_error",
    "cancelled",
    "conversation_busy",
    "blocked",
    "rate_limited",
    "quota_exceeded",
    "busy",
    "timed_out",
]


@dataclass(frozen=True, slots=True)
class ReplyError:
    """The message could not be answered; ``text`` says why and what the user can do."""

    message_id: str
    code: ErrorCode
    text: str


@dataclass(frozen=True, slots=True)
class Notice:
    """Something to tell the user besides the reply, after it: what was noted about them
    ("noted: you prefer replies in French; ..."). Adapters show it apart from the reply."""

    message_id: str
    text: str


ReplyEvent = ReplyChunk | Reply | ReplyError | Notice
"""What ``Engine.handle`` streams: zero or more chunks, then one ``Reply`` or ``ReplyError``,
then zero or more ``Notice``."""
