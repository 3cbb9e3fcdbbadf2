"""The conversation store interface: what the engine needs from memory, nothing more.

The in-memory store implements it today; the SQLAlchemy store will implement the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from chatcore.events import ChatMessage, ConversationKey


@runtime_checkable
class ConversationStore(Protocol):
    """Keeps each conversation's messages, oldest first."""

    async def history(self, key: ConversationKey) -> list[ChatMessage]:
        """The conversation's stored messages, oldest first (empty for a new conversation)."""
        ...

    async def append(self, key: ConversationKey, messages: Sequence[ChatMessage]) -> None:
        """Add messages at the end of the conversation."""
        ...

    async def reset(self, key: ConversationKey) -> int:
        """Forget the conversation; return how many messages were dropped."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
