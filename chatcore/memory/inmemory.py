"""A conversation store in process memory: history lasts as long as the process.

Bounded: each conversation keeps its newest ``limit`` messages.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from chatcore.events import ConversationKey
from chatcore.generation.types import ChatMessage


class InMemoryConversationStore:
    """``ConversationStore`` backed by a dict of bounded deques."""

    def __init__(self, limit: int = 200) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._conversations: dict[ConversationKey, deque[ChatMessage]] = {}

    async def history(self, key: ConversationKey) -> list[ChatMessage]:
        return list(self._conversations.get(key, ()))

    async def append(self, key: ConversationKey, messages: Sequence[ChatMessage]) -> None:
        self._conversations.setdefault(key, deque(maxlen=self.limit)).extend(messages)

    async def reset(self, key: ConversationKey) -> int:
        return len(self._conversations.pop(key, ()))

    async def close(self) -> None:
        self._conversations.clear()
