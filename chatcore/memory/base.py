"""The conversation store interface: what the engine, commands and hooks need from memory.

Two implementations: ``SqlStore`` (SQLite or PostgreSQL, durable) and the in-memory store
(tests); both keep the same behaviour, checked by one shared test suite.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable

from chatcore.events import ChatMessage, ConversationKey

PreferenceSource = Literal["explicit", "learned"]
"""``explicit``: the user set it (``/prefs set``); ``learned``: taken from what they said."""

CLOSE_TIMEOUT = 10.0
"""Seconds a store (and its conversation locks) waits, when closing, for work in flight."""


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC: how every stored time is recorded."""
    return datetime.now(UTC)


class StoreError(Exception):
    """The database cannot be used; the message says which one and what to check."""


class ConversationBusyError(Exception):
    """A conversation's lock was not free within the time allowed: another message of it is
    being handled (in this process or another one sharing the database)."""


@dataclass(frozen=True, slots=True)
class UserKey:
    """Identifies a user: their id on a platform (``Message.user``, ``ConversationKey.user``)."""

    platform: str
    user: str

    @classmethod
    def of(cls, key: ConversationKey) -> UserKey:
        """The user of a conversation."""
        return cls(key.platform, key.user)

    @classmethod
    def parse(cls, text: str) -> UserKey:
        """``PLATFORM:ID`` (the id may contain ``:``); raise ``ValueError`` otherwise."""
        platform, sep, user = text.partition(":")
        if not sep or not platform or not user:
            raise ValueError(f"{text!r} is not PLATFORM:ID, e.g. discord:123456 or terminal:sam")
        return cls(platform, user)

    def __str__(self) -> str:
        return f"{self.platform}:{self.user}"


@dataclass(frozen=True, slots=True)
class Preference:
    """One stored preference of a user."""

    key: str
    value: str
    source: PreferenceSource
    updated: datetime


@dataclass(frozen=True, slots=True)
class Memory:
    """One long-term memory: a fact, its embedding (``dim`` float32 values, native byte
    order as numpy writes them) and when it was stored."""

    id: int
    text: str
    embedding: bytes
    dim: int
    created: datetime


@dataclass(frozen=True, slots=True)
class Summary:
    """The rolling summary of a conversation's older turns, and the newest message it covers."""

    text: str
    through: str | None


EXPORT_FORMAT = "chatcore-user-export"
EXPORT_VERSION = 1
"""The format and version ``export_user`` writes; the version grows when its shape changes."""


@dataclass(frozen=True, slots=True)
class ErasedCounts:
    """What ``erase_user`` removed (or, from ``counts_of``, what it would remove)."""

    users: int = 0
    conversations: int = 0
    messages: int = 0
    preferences: int = 0
    memories: int = 0
    clean: bool = True
    """False when a copy of erased text may remain in the database files for a while (SQLite
    could not rebuild its file: another process was using it; a warning says so)."""

    def describe(self) -> str:
        """E.g. ``12 messages in 2 conversations, 3 memories, 2 preferences``."""
        return (
            f"{_plural(self.messages, 'message')} in "
            f"{_plural(self.conversations, 'conversation')}, "
            f"{_plural(self.memories, 'memory', 'memories')}, "
            f"{_plural(self.preferences, 'preference')}"
        )


def counts_of(export: Mapping[str, object]) -> ErasedCounts:
    """What erasing the user of ``export`` (from ``export_user``) removes."""
    conversations = export.get("conversations") or []
    assert isinstance(conversations, list)
    return ErasedCounts(
        users=1,
        conversations=len(conversations),
        messages=sum(len(c["messages"]) for c in conversations),
        preferences=len(export.get("preferences") or []),  # type: ignore[arg-type]
        memories=len(export.get("memories") or []),  # type: ignore[arg-type]
    )


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else many or one + 's'}"


@runtime_checkable
class ConversationStore(Protocol):
    """Keeps users, their conversations (messages oldest first, a rolling summary), their
    preferences and their long-term memories. Methods that write return only once the write is
    stored (committed, for a database)."""

    # Conversations
    async def history(self, key: ConversationKey) -> list[ChatMessage]:
        """The current conversation's messages, oldest first, each with its ``id``,
        ``created`` and ``tokens`` (empty for a new conversation)."""
        ...

    async def append(
        self, key: ConversationKey, messages: Sequence[ChatMessage]
    ) -> list[ChatMessage]:
        """Add messages at the end of the current conversation (opening one if needed);
        return them as stored, with their ids."""
        ...

    async def reset(self, key: ConversationKey) -> int:
        """Close the current conversation, so the next message starts a new one; return how
        many messages it held. Whether the old one is kept depends on the store (the SQL store
        keeps it, until the user erases their data)."""
        ...

    async def set_tokens(self, key: ConversationKey, counts: Mapping[str, int]) -> None:
        """Record the token counts of stored messages, by message id (unknown ids ignored)."""
        ...

    async def get_summary(self, key: ConversationKey) -> Summary | None:
        """The current conversation's rolling summary, None when there is none."""
        ...

    async def set_summary(self, key: ConversationKey, text: str, through: str | None) -> None:
        """Replace the current conversation's summary; ``through`` is the id of the newest
        message it covers. Nothing happens when the conversation does not exist."""
        ...

    async def replace_summary(
        self,
        key: ConversationKey,
        text: str,
        through: str | None,
        *,
        previous: Summary | None,
        newest: str,
    ) -> bool:
        """``set_summary``, but only if the current conversation's summary is still
        ``previous`` and it holds the message ``newest``: one atomic check and write (a
        compare-and-set), so a summary made from an older state never lands on a conversation
        that moved on meanwhile (another fold, a ``/reset`` and a new message, another
        process). True when it was stored."""
        ...

    # Users
    async def set_display_name(self, user: UserKey, name: str | None) -> None:
        """Record the user's display name (creating the user if needed)."""
        ...

    # Preferences
    async def get_preferences(self, user: UserKey) -> dict[str, Preference]:
        """The user's preferences by key (empty for an unknown user)."""
        ...

    async def set_preference(
        self, user: UserKey, key: str, value: str, source: PreferenceSource = "explicit"
    ) -> Preference:
        """Set (or replace) one preference; return it as stored."""
        ...

    async def delete_preference(self, user: UserKey, key: str) -> bool:
        """Remove one preference; False when it was not set."""
        ...

    # Long-term memories
    async def add_memory(
        self, user: UserKey, text: str, embedding: bytes, dim: int | None = None
    ) -> Memory:
        """Store a memory; ``dim`` defaults to ``len(embedding) // 4`` (float32)."""
        ...

    async def list_memories(
        self, user: UserKey, ids: Collection[int] | None = None
    ) -> list[Memory]:
        """The user's memories, oldest first; only those among ``ids`` when given (ids the
        user has no memory by are left out)."""
        ...

    async def delete_memory(self, user: UserKey, memory_id: int) -> bool:
        """Remove one of the user's memories; False when the user has no memory by that id."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

    # Privacy: export, erase, retention (docs/memory.md, "Your data")
    async def export_user(self, user: UserKey) -> dict[str, Any] | None:
        """Everything stored about ``user`` as JSON-ready data (``EXPORT_FORMAT``, version
        ``EXPORT_VERSION``): the user, preferences, memories (text and time; embeddings are
        left out, they are derived from the text) and every conversation with its summary and
        messages, oldest first. None for a user the store does not know."""
        ...

    async def erase_user(self, user: UserKey) -> ErasedCounts:
        """Delete everything stored about ``user`` in one transaction, leaving no copy of the
        text in the database files where the database allows (SQLite); other users are
        untouched. Returns what went (all zero for an unknown user)."""
        ...

    async def prune_messages(self, before: datetime) -> int:
        """Delete every message stored before ``before``, and the conversations (with their
        summaries) left without messages, in one transaction; a summary that covers a deleted
        message (or does not say which it covers) goes too, since it holds its gist. Return how
        many messages went."""
        ...

    # Ordering
    def conversation_lock(
        self, key: ConversationKey, wait: float, *, queued: bool = False
    ) -> AbstractAsyncContextManager[None]:
        """Hold the conversation while one message of it is handled (history read, generation,
        append), against every holder that shares this store's data, other processes
        included. Entering waits at most ``wait`` seconds, then raises
        ``ConversationBusyError``; leaving gives the lock back, also when cancelled.
        ``queued``: the message waited behind another of the conversation in this process, so
        other processes get a turn first (a backlog here must not starve them)."""
        ...


def embedding_dim(embedding: bytes, dim: int | None) -> int:
    """Check an embedding's size: ``dim`` float32 values, or as many as the bytes hold."""
    if dim is None:
        if len(embedding) % 4:
            raise ValueError(f"an embedding of {len(embedding)} bytes is not float32 values")
        return len(embedding) // 4
    if dim < 1 or len(embedding) % dim:
        raise ValueError(f"an embedding of {len(embedding)} bytes cannot hold {dim} values")
    return dim
