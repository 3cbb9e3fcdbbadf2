"""A conversation store in process memory, for tests: what it holds lasts as long as the process.

Bounded: each conversation keeps its newest ``limit`` messages, and at most
``max_conversations`` conversations are kept (the least recently used is forgotten first).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import OrderedDict, deque
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

from chatcore.events import ChatMessage, ConversationKey
from chatcore.memory.base import (
    ErasedCounts,
    Memory,
    Preference,
    PreferenceSource,
    Summary,
    UserKey,
    embedding_dim,
    utcnow,
)
from chatcore.memory.export import document, iso
from chatcore.memory.locks import ConversationLocks


class InMemoryConversationStore:
    """``ConversationStore`` backed by dicts and bounded deques. ``reset`` drops the
    conversation (there is nowhere durable to keep it)."""

    def __init__(self, limit: int = 200, max_conversations: int = 10_000) -> None:
        if limit < 1 or max_conversations < 1:
            raise ValueError("limit and max_conversations must be at least 1")
        self.limit = limit
        self.max_conversations = max_conversations
        self._conversations: OrderedDict[ConversationKey, deque[ChatMessage]] = OrderedDict()
        self._summaries: dict[ConversationKey, Summary] = {}
        self._names: dict[UserKey, str | None] = {}
        self._preferences: dict[UserKey, dict[str, Preference]] = {}
        self._memories: dict[UserKey, dict[int, Memory]] = {}
        self._ids = itertools.count(1)
        self._locks = ConversationLocks()

    async def history(self, key: ConversationKey) -> list[ChatMessage]:
        if key in self._conversations:
            self._conversations.move_to_end(key)
        return list(self._conversations.get(key, ()))

    async def append(
        self, key: ConversationKey, messages: Sequence[ChatMessage]
    ) -> list[ChatMessage]:
        now = utcnow()
        stored = [dataclasses.replace(m, id=str(next(self._ids)), created=now) for m in messages]
        conversation = self._conversations.setdefault(key, deque(maxlen=self.limit))
        conversation.extend(stored)
        self._conversations.move_to_end(key)
        while len(self._conversations) > self.max_conversations:
            dropped, _ = self._conversations.popitem(last=False)
            self._summaries.pop(dropped, None)
        return stored

    def __len__(self) -> int:
        """How many conversations are kept."""
        return len(self._conversations)

    async def reset(self, key: ConversationKey) -> int:
        self._summaries.pop(key, None)
        return len(self._conversations.pop(key, ()))

    async def set_tokens(self, key: ConversationKey, counts: Mapping[str, int]) -> None:
        conversation = self._conversations.get(key)
        if conversation is None:
            return
        for index, message in enumerate(conversation):
            if message.id is not None and message.id in counts:
                conversation[index] = dataclasses.replace(message, tokens=counts[message.id])

    async def get_summary(self, key: ConversationKey) -> Summary | None:
        return self._summaries.get(key)

    async def set_summary(self, key: ConversationKey, text: str, through: str | None) -> None:
        if key in self._conversations:
            self._summaries[key] = Summary(text, through)

    async def replace_summary(
        self,
        key: ConversationKey,
        text: str,
        through: str | None,
        *,
        previous: Summary | None,
        newest: str,
    ) -> bool:
        conversation = self._conversations.get(key)
        if (
            conversation is None
            or self._summaries.get(key) != previous
            or not any(m.id == newest for m in conversation)
        ):
            return False
        self._summaries[key] = Summary(text, through)
        return True

    async def set_display_name(self, user: UserKey, name: str | None) -> None:
        self._names[user] = name

    async def get_preferences(self, user: UserKey) -> dict[str, Preference]:
        return dict(sorted(self._preferences.get(user, {}).items()))

    async def set_preference(
        self, user: UserKey, key: str, value: str, source: PreferenceSource = "explicit"
    ) -> Preference:
        preference = Preference(key, value, source, utcnow())
        self._preferences.setdefault(user, {})[key] = preference
        return preference

    async def delete_preference(self, user: UserKey, key: str) -> bool:
        return self._preferences.get(user, {}).pop(key, None) is not None

    async def add_memory(
        self, user: UserKey, text: str, embedding: bytes, dim: int | None = None
    ) -> Memory:
        memory = Memory(next(self._ids), text, embedding, embedding_dim(embedding, dim), utcnow())
        self._memories.setdefault(user, {})[memory.id] = memory
        return memory

    async def list_memories(
        self, user: UserKey, ids: Collection[int] | None = None
    ) -> list[Memory]:
        memories = self._memories.get(user, {})
        if ids is None:
            return list(memories.values())
        return [memories[i] for i in sorted(set(ids)) if i in memories]

    async def delete_memory(self, user: UserKey, memory_id: int) -> bool:
        return self._memories.get(user, {}).pop(memory_id, None) is not None

    async def close(self) -> None:
        self._conversations.clear()

    # Privacy

    async def export_user(self, user: UserKey) -> dict[str, Any] | None:
        keys = [k for k in self._conversations if UserKey.of(k) == user]
        known = (self._names, self._preferences, self._memories)
        if not keys and not any(user in part for part in known):
            return None
        conversations = []
        for number, key in enumerate(keys, 1):
            summary = self._summaries.get(key)
            messages = list(self._conversations[key])
            conversations.append(
                {
                    "id": number,
                    "channel": key.channel,
                    "created": iso(messages[0].created) if messages else None,
                    "closed": None,
                    "summary": summary.text if summary else None,
                    "summary_through": _number(summary.through) if summary else None,
                    "messages": [_exported_message(m) for m in messages],
                }
            )
        user_part = {
            "platform": user.platform,
            "id": user.user,
            "display_name": self._names.get(user),
            "created": None,
        }
        preferences = [
            {"key": p.key, "value": p.value, "source": p.source, "updated": iso(p.updated)}
            for p in (await self.get_preferences(user)).values()
        ]
        memories = [
            {"id": m.id, "text": m.text, "created": iso(m.created)}
            for m in await self.list_memories(user)
        ]
        return document(user_part, preferences, memories, conversations)

    async def erase_user(self, user: UserKey) -> ErasedCounts:
        keys = [k for k in self._conversations if UserKey.of(k) == user]
        known = user in self._names or user in self._preferences or user in self._memories
        messages = 0
        for key in keys:
            messages += len(self._conversations.pop(key))
            self._summaries.pop(key, None)
        self._names.pop(user, None)
        return ErasedCounts(
            users=int(known or bool(keys)),
            conversations=len(keys),
            messages=messages,
            preferences=len(self._preferences.pop(user, {})),
            memories=len(self._memories.pop(user, {})),
        )

    async def prune_messages(self, before: datetime) -> int:
        pruned = 0
        for key in list(self._conversations):
            messages = self._conversations[key]
            kept = [m for m in messages if m.created is None or m.created >= before]
            pruned += len(messages) - len(kept)
            summary = self._summaries.get(key)
            gone = [m for m in messages if m.created is not None and m.created < before]
            if summary is not None and any(_covers(summary, m) for m in gone):
                del self._summaries[key]  # it holds the gist of what went
            if kept:
                self._conversations[key] = deque(kept, maxlen=self.limit)
            else:
                del self._conversations[key]
                self._summaries.pop(key, None)
        return pruned

    def conversation_lock(
        self, key: ConversationKey, wait: float, *, queued: bool = False
    ) -> AbstractAsyncContextManager[None]:
        """Within the process only: what this store holds lives in this process, so no other
        process can read or write the conversation."""
        return self._locks.hold(key, wait, queued=queued)


def _covers(summary: Summary, message: ChatMessage) -> bool:
    """Whether ``summary`` may hold the gist of ``message`` (one that does not say which
    messages it covers may hold any)."""
    through, mid = _number(summary.through), _number(message.id)
    if not isinstance(through, int) or not isinstance(mid, int):
        return True
    return mid <= through


def _number(message_id: str | None) -> int | str | None:
    """A message id as the SQL store exports it (a number)."""
    return int(message_id) if message_id is not None and message_id.isdigit() else message_id


def _exported_message(message: ChatMessage) -> dict[str, Any]:
    return {
        "id": _number(message.id),
        "role": message.role,
        "content": message.content,
        "tokens": message.tokens,
        "created": iso(message.created),
    }
