"""Long-term memories as hooks and commands use them (``services.memories``): remember a fact
with its embedding, recall the closest few for a message, list and forget them. It keeps the
store and the recall index in step, so callers never touch either alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

from chatcore.config import MemorySettings
from chatcore.memory.barrier import EraseBarrier
from chatcore.memory.base import ConversationStore, Memory, UserKey
from chatcore.memory.embedder import Embedder, HashingEmbedder, MiniLMEmbedder
from chatcore.memory.recall import MemoryRecall, StoredEmbedding
from chatcore.text import clean_input

log = logging.getLogger(__name__)

MAX_MEMORY_CHARS = 500
"""The longest memory text kept; a longer one is refused with a message saying so."""


class MemoryTextError(ValueError):
    """A memory's text is empty or too long; ``str()`` says which."""


def make_embedder(settings: MemorySettings) -> Embedder:
    """The configured embedder (MiniLM loads its model at its first use, not here)."""
    if settings.embedder == "hashing":
        return HashingEmbedder()
    return MiniLMEmbedder()


class Memories:
    """One app's long-term memories over its store, and the app's erase barrier."""

    def __init__(
        self,
        store: ConversationStore,
        settings: MemorySettings,
        embedder: Embedder | None = None,
        barrier: EraseBarrier | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.barrier = barrier or EraseBarrier()
        """Keeps work that began before a user's erase from writing about them after it."""
        self._recall = MemoryRecall[UserKey](
            embedder or make_embedder(settings), self._rows, min_score=settings.min_score
        )
        self._tracked: dict[asyncio.Task[Any], UserKey | None] = {}

    @property
    def embedder(self) -> Embedder:
        return self._recall.embedder

    async def remember(self, user: UserKey, text: str) -> Memory:
        """Store ``text`` as a memory of ``user`` with its embedding; recallable at once.
        ``UserErasedError`` (nothing stored) when the user was erased after the turn or task
        doing this began (``barrier``)."""
        text = " ".join(clean_input(text).split())
        if not text:
            raise MemoryTextError("a memory needs some text")
        if len(text) > MAX_MEMORY_CHARS:
            raise MemoryTextError(
                f"a memory is at most {MAX_MEMORY_CHARS} characters; this one has {len(text)}"
            )
        embedding = await self._recall.embed_memory(text)
        dim = self.embedder.dim
        memory = await self.barrier.write(
            user, partial(self.store.add_memory, user, text, embedding, dim)
        )
        self._recall.added(user, memory.id, memory.embedding)
        return memory

    async def recall(self, user: UserKey, text: str, k: int | None = None) -> list[Memory]:
        """The memories of ``user`` closest to ``text``, best first (``memory.recall`` of them
        unless ``k`` is given); none under ``memory.min_score``."""
        k = self.settings.recall if k is None else k
        hits = await self._recall.recall(user, text, k)
        if not hits:
            return []
        found = {m.id: m for m in await self.store.list_memories(user, [h.id for h in hits])}
        return [found[h.id] for h in hits if h.id in found]

    async def list(self, user: UserKey) -> list[Memory]:
        """Every memory of ``user``, oldest first."""
        return await self.store.list_memories(user)

    async def forget(self, user: UserKey, memory_id: int) -> bool:
        """Remove one memory of ``user``; False when they have none by that id."""
        removed = await self.store.delete_memory(user, memory_id)
        if removed:
            self._recall.removed(user, memory_id)
        return removed

    def erased(self, user: UserKey) -> None:
        """Drop what is cached about ``user`` (call after their data was erased)."""
        self._recall.forget_user(user)

    async def close(self) -> None:
        """Cancel index builds and tracked work in flight and drop the cached indexes. Work
        still running is lost: a warning says how much (a fact already announced as "being
        stored" is among it)."""
        tracked = list(self._tracked)
        if tracked:
            log.warning(
                "memory: %d background memory stores still running at close were cancelled; "
                "what they had not stored yet is lost",
                len(tracked),
            )
        await _cancelled(tracked)
        await self._recall.close()

    async def _rows(self, user: UserKey) -> Sequence[StoredEmbedding]:
        return [
            StoredEmbedding(m.id, m.embedding, m.dim) for m in await self.store.list_memories(user)
        ]

    def track(self, task: asyncio.Task[Any], user: UserKey | None = None) -> None:
        """Hold ``task``, work on memories that may outlive the hook or command that began it
        (a first store waits for the embedder to load), until it ends; ``close`` cancels it,
        and so does an erase of ``user`` (``stop_tracked``)."""
        self._tracked[task] = user
        task.add_done_callback(self._untrack)

    async def stop_tracked(self, user: UserKey) -> None:
        """Cancel the tracked work of ``user`` and wait for it to end (a memory it was storing
        is stored or not, before this returns: ``remember`` finishes its write)."""
        await _cancelled([task for task, owner in self._tracked.items() if owner == user])

    def _untrack(self, task: asyncio.Task[Any]) -> None:
        self._tracked.pop(task, None)


async def _cancelled(tasks: Sequence[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
