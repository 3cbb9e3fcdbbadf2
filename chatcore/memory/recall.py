"""Semantic recall of long-term memories: a per-user in-memory vector index (an exact,
vectorised cosine scan) and the service that builds it from stored rows at first use.

Why a scan and not an approximate vector index: see docs/recall.md (figures at 10k and 100k).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

import numpy as np
from numpy.typing import NDArray

from chatcore.memory.embedder import (
    STORED_DTYPE,
    Embedder,
    check_embedding_size,
    normalise_rows,
    vector_from_bytes,
    vector_to_bytes,
)

# all-MiniLM-L6-v2 cosine under which a memory is not recalled, chosen on tests/data/recall.jsonl
# (table in docs/recall.md): it keeps 42 of 49 relevant memories in the top 3 while 15 of 20
# messages about nothing stored recall nothing. Another embedder needs its own value.
DEFAULT_MIN_SCORE = 0.35
# A search over more memories than this runs in a worker thread (numpy releases the GIL), so a
# large user's recall never holds the event loop.
THREAD_SEARCH_ABOVE = 20_000
_INITIAL_CAPACITY = 16

UserT = TypeVar("UserT", bound=Hashable)


class Hit(NamedTuple):
    """One recalled memory: its id and its cosine similarity to the query (higher is closer)."""

    id: int
    score: float


class StoredEmbedding(NamedTuple):
    """What the index needs of one stored memory row."""

    id: int
    embedding: bytes
    dim: int


class MemoryIndex:
    """One user's memories as rows of a contiguous float32 matrix; `search` is one
    matrix-vector product and a partial sort. Thread-safe; vectors are L2-normalised here."""

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError("an index needs a dimension of at least 1")
        self.dim = dim
        self._matrix = np.zeros((_INITIAL_CAPACITY, dim), dtype=np.float32)
        self._ids = np.zeros(_INITIAL_CAPACITY, dtype=np.int64)
        self._rows: dict[int, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_rows(cls, dim: int, rows: Iterable[StoredEmbedding]) -> MemoryIndex:
        """An index over stored rows; a row of another dimension is an error that says so."""
        ids: list[int] = []
        blobs: list[bytes] = []
        for row in rows:
            if row.dim != dim:
                raise ValueError(
                    f"memory {row.id} was embedded with {row.dim} dimensions, the embedder gives "
                    f"{dim}: re-embed the stored memories with the configured embedder"
                )
            ids.append(row.id)
            blobs.append(row.embedding)
            check_embedding_size(row.embedding, dim)  # checks the length, says what to do
        index = cls(dim)
        if ids:
            matrix = np.frombuffer(b"".join(blobs), dtype=STORED_DTYPE).reshape(len(ids), dim)
            index.add_many(ids, matrix)
        return index

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, memory_id: object) -> bool:
        return memory_id in self._rows

    @property
    def nbytes(self) -> int:
        """Memory held by the vectors (capacity included)."""
        return self._matrix.nbytes + self._ids.nbytes

    def add(self, memory_id: int, vector: NDArray[np.floating]) -> None:
        """Add a memory, or replace the vector of one already there."""
        self.add_many([memory_id], np.asarray(vector).reshape(1, -1))

    def add_many(self, ids: Iterable[int], vectors: NDArray[np.floating]) -> None:
        """Add (or replace) several memories at once: row ``i`` of ``vectors`` is ``ids[i]``."""
        id_list = [int(i) for i in ids]
        block = self._checked(vectors, len(id_list))
        with self._lock:
            self._grow_to(len(self._rows) + len(id_list))
            if not self._rows and len(set(id_list)) == len(id_list):  # a build: one block
                self._rows = dict(zip(id_list, range(len(id_list)), strict=True))
                self._ids[: len(id_list)] = id_list
                self._matrix[: len(id_list)] = block
                return
            rows = np.empty(len(id_list), dtype=np.int64)
            for position, memory_id in enumerate(id_list):
                row = self._rows.get(memory_id)
                if row is None:
                    row = len(self._rows)
                    self._rows[memory_id] = row
                    self._ids[row] = memory_id
                rows[position] = row
            # One block copy; for an id given twice, the later vector wins (as numpy assigns).
            self._matrix[rows] = block

    def remove(self, memory_id: int) -> bool:
        """Drop a memory; False when it was not there. The last row moves into its place."""
        with self._lock:
            row = self._rows.pop(memory_id, None)
            if row is None:
                return False
            last = len(self._rows)
            if row != last:
                moved = int(self._ids[last])
                self._matrix[row] = self._matrix[last]
                self._ids[row] = moved
                self._rows[moved] = row
            self._matrix[last] = 0.0
            return True

    def search(self, query: NDArray[np.floating], k: int, *, min_score: float = -1.0) -> list[Hit]:
        """The ``k`` memories closest to ``query`` (cosine), best first, none under
        ``min_score``; equal scores in id order."""
        q = self._checked(np.asarray(query).reshape(1, -1), 1)[0]
        with self._lock:
            n = len(self._rows)
            if k <= 0 or n == 0:
                return []
            scores = self._matrix[:n] @ q
            top = np.argpartition(scores, n - k)[n - k :] if k < n else np.arange(n)
            top = top[scores[top] >= min_score]
            ids = self._ids[top]
            chosen = top[np.lexsort((ids, -scores[top]))]
            return [Hit(int(self._ids[i]), float(scores[i])) for i in chosen]

    def _grow_to(self, size: int) -> None:
        capacity = len(self._ids)
        if size <= capacity:
            return
        while capacity < size:
            capacity *= 2
        matrix = np.zeros((capacity, self.dim), dtype=np.float32)
        matrix[: len(self._ids)] = self._matrix
        ids = np.zeros(capacity, dtype=np.int64)
        ids[: len(self._ids)] = self._ids
        self._matrix, self._ids = matrix, ids

    def _checked(self, vectors: NDArray[np.floating], count: int) -> NDArray[np.float32]:
        block = np.asarray(vectors, dtype=np.float32)
        if block.ndim != 2 or block.shape != (count, self.dim):
            raise ValueError(
                f"expected {count} vector(s) of {self.dim} dimensions, got shape {block.shape}"
            )
        if not np.all(np.isfinite(block)):
            raise ValueError("a vector holds NaN or infinity; it cannot be indexed")
        return normalise_rows(block)


LoadRows = Callable[[UserT], Awaitable[Iterable[StoredEmbedding]]]


@dataclass(eq=False)
class _Build:
    task: asyncio.Task[MemoryIndex]
    pending: list[tuple[int, NDArray[np.float32] | None]] = field(default_factory=list)


class MemoryRecall(Generic[UserT]):
    """Embeds memories on write and recalls the closest few for a message, over per-user
    indexes built from the store on first use and kept (least recently used first out)."""

    def __init__(
        self,
        embedder: Embedder,
        load_rows: LoadRows[UserT],
        *,
        min_score: float = DEFAULT_MIN_SCORE,
        max_cached_vectors: int = 1_000_000,
    ) -> None:
        self.embedder = embedder
        self.min_score = min_score
        self._load_rows = load_rows
        self._max_cached_vectors = max_cached_vectors
        self._indexes: OrderedDict[UserT, MemoryIndex] = OrderedDict()
        self._builds: dict[UserT, _Build] = {}

    async def embed_memory(self, text: str) -> bytes:
        """The embedding of a memory's text as the bytes to store (``dim`` = ``embedder.dim``)."""
        vectors = await self.embedder.embed([text])
        return vector_to_bytes(vectors[0])

    async def recall(self, user: UserT, text: str, k: int = 3) -> list[Hit]:
        """The ids of the ``k`` memories of ``user`` closest to ``text``, best first, none under
        the minimum score (an empty list when nothing is relevant)."""
        if k <= 0:
            return []
        index = await self.index_for(user)
        if len(index) == 0:
            return []
        query = (await self.embedder.embed([text]))[0]
        if len(index) > THREAD_SEARCH_ABOVE:
            return await asyncio.to_thread(index.search, query, k, min_score=self.min_score)
        return index.search(query, k, min_score=self.min_score)

    def added(self, user: UserT, memory_id: int, embedding: bytes) -> None:
        """Tell the index that the store now holds memory ``memory_id`` (call after the commit)."""
        self._apply(user, memory_id, vector_from_bytes(embedding, self.embedder.dim))

    def removed(self, user: UserT, memory_id: int) -> None:
        """Tell the index that memory ``memory_id`` is gone from the store."""
        self._apply(user, memory_id, None)

    def forget_user(self, user: UserT) -> None:
        """Drop everything held for ``user`` (after an erase); the next recall reloads."""
        self._indexes.pop(user, None)
        self._builds.pop(user, None)

    def clear(self) -> None:
        """Drop every cached index."""
        self._indexes.clear()
        self._builds.clear()

    async def close(self) -> None:
        """Cancel index builds in flight and drop every index (on shutdown)."""
        tasks = [build.task for build in self._builds.values()]
        self.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def index_for(self, user: UserT) -> MemoryIndex:
        """``user``'s index, built from the stored rows if it is not cached."""
        index = self._indexes.get(user)
        if index is not None:
            self._indexes.move_to_end(user)
            return index
        build = self._builds.get(user)
        if build is None:
            build = _Build(asyncio.create_task(self._build(user)))
            self._builds[user] = build
            build.task.add_done_callback(lambda _t: self._finish(user, build))
        # Shielded: a caller that is cancelled does not cancel the build others wait on.
        return await asyncio.shield(build.task)

    async def _build(self, user: UserT) -> MemoryIndex:
        rows = list(await self._load_rows(user))
        return await asyncio.to_thread(MemoryIndex.from_rows, self.embedder.dim, rows)

    def _finish(self, user: UserT, build: _Build) -> None:
        if self._builds.get(user) is not build:
            return  # forgotten while it was being built
        del self._builds[user]
        if build.task.cancelled() or build.task.exception() is not None:
            return  # the next recall tries again; the awaiting callers saw the error
        index = build.task.result()
        for memory_id, vector in build.pending:
            if vector is None:
                index.remove(memory_id)
            else:
                index.add(memory_id, vector)
        self._indexes[user] = index
        self._evict(keep=user)

    def _apply(self, user: UserT, memory_id: int, vector: NDArray[np.float32] | None) -> None:
        index = self._indexes.get(user)
        if index is not None:
            if vector is None:
                index.remove(memory_id)
            else:
                index.add(memory_id, vector)
            return
        build = self._builds.get(user)
        if build is not None:  # the rows may have been read before this change: replay it
            build.pending.append((memory_id, vector))
        # Otherwise nothing is cached: the next recall reads the store, change included.

    def _evict(self, keep: UserT) -> None:
        total = sum(len(index) for index in self._indexes.values())
        for user in list(self._indexes):
            if total <= self._max_cached_vectors:
                break
            if user != keep:
                total -= len(self._indexes.pop(user))
