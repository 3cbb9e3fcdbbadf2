"""A conversation store in process memory: history lasts as long as the process.

Bounded: each conversation keeps its newest ``limit`` messages, and at most
``max_conversations`` conversations are kept (the least recently used is forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence

from chatcore.events import ChatMessage, ConversationKey


class InMemoryConversationStore:
    """``ConversationStore`` backed by a dict of bounded deques."""

    def __init__(self, limit: int = 200, max_conversations: int = 10_000) -> None:
        if limit < 1 or max_conversations < 1:
            raise ValueError("limit and max_conversations must be at least 1")
        self.limit = limit
        self.max_conversations = max_conversations
        self._conversations: OrderedDict[ConversationKey, deque[ChatMessage]] = OrderedDict()

    async def history(self, key: ConversationKey) -> list[ChatMessage]:
        if key in self._conversations:
            self._conversations.move_to_end(key)
        return list(self._conversations.get(key, ()))

    async def append(self, key: ConversationKey, messages: Sequence[ChatMessage]) -> None:
        conversation = self._conversations.setdefault(key, deque(maxlen=self.limit))
        conversation.extend(messages)
        self._conversations.move_to_end(key)
        while len(self._conversations) > self.max_conversations:
            self._conversations.popitem(last=False)

    def __len__(self) -> int:
        """How many conversations are kept."""
        return len(self._conversations)

    async def reset(self, key: ConversationKey) -> int:
        return len(self._conversations.pop(key, ()))

    async def close(self) -> None:
        self._conversations.clear()
