"""Conversation locks: one message of a conversation is handled at a time (history read,
generation, append), also when several processes share one database.

In the process, one ``asyncio.Lock`` per conversation; across processes, what the database
allows: OS file locks (``flock``) on a bounded set of private files beside a SQLite database,
or PostgreSQL session advisory locks on one connection of their own. Waiting is a loop of
non-blocking attempts with a short backoff: bounded in time, cancellable, no thread blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from chatcore.events import ConversationKey
from chatcore.files import PRIVATE_FILE, lock_or_close, private_dir
from chatcore.memory.base import CLOSE_TIMEOUT, ConversationBusyError

log = logging.getLogger(__name__)

BUCKETS = 1024
"""Lock files beside a SQLite database: conversations share them by hash, so two that share
one wait for each other (rarely: a pair shares one with chance 1/1024)."""
FIRST_PAUSE = 0.005
LONGEST_PAUSE = 0.05
"""Seconds between attempts: from the first, doubled each time up to the longest, jittered."""
HANDOFF = 0.075
"""A message that waited behind another of its conversation in this process, which released
the conversation less than this long ago, waits out the rest of it before its first attempt:
longer than ``LONGEST_PAUSE``, so that a process polling for the conversation gets its turn
instead of starving behind a queue of local messages."""


def conversation_hash(key: ConversationKey) -> int:
    """A signed 64-bit hash of a conversation, the same in every process and every version."""
    name = "\0".join((key.platform, key.channel, key.user)).encode()
    digest = hashlib.blake2b(name, digest_size=8, person=b"chatcore-conv").digest()
    return int.from_bytes(digest, "big", signed=True)


class CrossProcessLocks(Protocol):
    """Exclusive locks, by 64-bit id, that other processes on the same database respect and
    that end with the process that holds them."""

    async def try_lock(self, lock_id: int) -> int | None:
        """Take the lock if it is free now; a handle for ``unlock``, or None when it is held."""
        ...

    async def unlock(self, handle: int) -> None:
        """Give back a lock that ``try_lock`` took."""
        ...

    async def close(self) -> None:
        """Give back every lock and release what holds them."""
        ...


@dataclass(eq=False)
class _Local:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    """Holders and waiters; the entry goes when none are left."""


class ConversationLocks:
    """``hold(key, wait)``: an async context manager that holds a conversation's lock, within
    the process and (with ``across``) across processes. It raises ``ConversationBusyError``
    when the lock is not free within ``wait`` seconds, and gives the lock back on the way out,
    also when the holder is cancelled."""

    def __init__(self, across: CrossProcessLocks | None = None) -> None:
        self.across = across
        self._local: dict[ConversationKey, _Local] = {}
        self._released: dict[ConversationKey, float] = {}
        """When this process last gave back each conversation, in that order; pruned."""
        self._pending: set[asyncio.Future[None]] = set()
        """Locks being given back by tasks of their own."""

    @contextlib.asynccontextmanager
    async def hold(
        self, key: ConversationKey, wait: float, *, queued: bool = False
    ) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(wait, 0.0)
        local = self._local.setdefault(key, _Local())
        local.users += 1
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await local.lock.acquire()
            except TimeoutError:
                raise _busy(key, wait) from None
            try:
                handle = await self._take(key, wait, deadline, queued)
                try:
                    yield
                finally:
                    if handle is not None:
                        await self._give_back(key, handle)
            finally:
                local.lock.release()
        finally:
            local.users -= 1
            if not local.users:
                del self._local[key]

    async def close(self) -> None:
        """Let locks being given back go, for at most ``CLOSE_TIMEOUT`` seconds, then close
        what holds the cross-process locks (which gives back any still held)."""
        if self._pending:
            await asyncio.wait(self._pending, timeout=CLOSE_TIMEOUT)
        if self.across is not None:
            await self.across.close()

    async def _take(
        self, key: ConversationKey, wait: float, deadline: float, queued: bool
    ) -> int | None:
        if self.across is None:
            return None
        loop = asyncio.get_running_loop()
        lock_id = conversation_hash(key)
        released = self._released.pop(key, None)
        # Only a local backlog waits: a message sent after the last one ended takes it at once.
        if queued and released is not None and released + HANDOFF > loop.time():
            await asyncio.sleep(max(0.0, min(released + HANDOFF, deadline) - loop.time()))
        pause = FIRST_PAUSE
        while True:
            handle = await self._attempt(lock_id)
            if handle is not None:
                return handle
            left = deadline - loop.time()
            if left <= 0:
                raise _busy(key, wait)
            await asyncio.sleep(min(left, pause * random.uniform(0.5, 1.0)))
            pause = min(pause * 2, LONGEST_PAUSE)

    async def _attempt(self, lock_id: int) -> int | None:
        """One attempt, in a task of its own: a caller cancelled meanwhile leaves at once, and
        a lock the attempt took after all is given back, not left held by nobody."""
        assert self.across is not None
        attempt = asyncio.ensure_future(self.across.try_lock(lock_id))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            attempt.add_done_callback(self._undo)
            raise

    def _undo(self, attempt: asyncio.Future[int | None]) -> None:
        if attempt.cancelled() or attempt.exception() is not None:
            return
        handle = attempt.result()
        if handle is not None:
            self._unlock_soon(handle)

    async def _give_back(self, key: ConversationKey, handle: int) -> None:
        """Give the lock back in a task of its own, so that a second cancellation (a shutdown
        past its grace) cannot leave it held."""
        try:
            await asyncio.shield(self._unlock_soon(handle))
        finally:
            now = asyncio.get_running_loop().time()
            self._released.pop(key, None)
            self._released[key] = now  # last, so the oldest come first
            while (oldest := next(iter(self._released))) != key:
                if self._released[oldest] + HANDOFF > now:
                    break
                del self._released[oldest]

    def _unlock_soon(self, handle: int) -> asyncio.Future[None]:
        assert self.across is not None
        task = asyncio.ensure_future(self._unlock(self.across, handle))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    @staticmethod
    async def _unlock(across: CrossProcessLocks, handle: int) -> None:
        try:
            await across.unlock(handle)
        except Exception:  # the reply went out; a lock that cannot be given back is logged
            log.warning("could not give back a conversation lock", exc_info=True)


def _busy(key: ConversationKey, wait: float) -> ConversationBusyError:
    return ConversationBusyError(
        f"conversation {key} is busy: another message of it was still being handled "
        f"after {wait:g} s (storage.conversation_wait)"
    )


class FileLocks:
    """``flock`` on ``BUCKETS`` private files in ``folder``, chosen by hash: for SQLite, whose
    processes all run on the machine that holds the database file. Each lock is an open file
    of its own (so two holders in one process exclude each other too); the OS gives it back
    when the file is closed or the process dies. Python opens files non-inheritable, so a
    child process never carries a lock away."""

    def __init__(self, folder: Path, buckets: int = BUCKETS) -> None:
        self.folder = folder
        self.buckets = buckets
        self._made = False

    async def try_lock(self, lock_id: int) -> int | None:
        if not self._made:
            private_dir(self.folder)
            self._made = True
        path = self.folder / f"{lock_id % self.buckets:04d}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE)
        return fd if lock_or_close(fd) else None

    async def unlock(self, handle: int) -> None:
        os.close(handle)  # closing the only descriptor of the open file gives the lock back

    async def close(self) -> None:
        pass  # every lock is closed by its holder, and the holders have finished


class AdvisoryLocks:
    """PostgreSQL session advisory locks (``pg_try_advisory_lock`` on the 64-bit id), all on
    one connection of their own, outside the store's pool: holding any number of them takes
    one connection, and normal store operations never wait for it. The server gives them
    back when the connection ends, the process's death included. Lost, the connection is
    opened again for new locks; those it held are gone, which is logged."""

    def __init__(self, url: URL) -> None:
        self._engine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        self._connection: AsyncConnection | None = None
        self._mutex = asyncio.Lock()
        """One statement at a time on the connection."""

    async def try_lock(self, lock_id: int) -> int | None:
        try:
            taken = await self._ask("SELECT pg_try_advisory_lock(:id)", lock_id)
        except DBAPIError:  # a lost connection: once more on a new one
            taken = await self._ask("SELECT pg_try_advisory_lock(:id)", lock_id)
        return lock_id if taken else None

    async def unlock(self, handle: int) -> None:
        if self._connection is not None:  # without it, the server gave every lock back
            await self._ask("SELECT pg_advisory_unlock(:id)", handle, reconnect=False)

    async def close(self) -> None:
        async with self._mutex:
            connection, self._connection = self._connection, None
            try:
                if connection is not None:
                    await connection.close()
            finally:
                await self._engine.dispose()

    async def _ask(self, sql: str, lock_id: int, *, reconnect: bool = True) -> bool:
        async with self._mutex:
            if self._connection is None:
                if not reconnect:
                    return False
                self._connection = await self._engine.connect()
            connection = self._connection
            try:
                return bool(await connection.scalar(text(sql), {"id": lock_id}))
            except DBAPIError:
                self._connection = None
                log.warning(
                    "the connection that holds conversation locks failed; locks it held are "
                    "gone, and a new one is opened for new locks",
                    exc_info=True,
                )
                with contextlib.suppress(Exception):
                    await connection.invalidate()
                raise
