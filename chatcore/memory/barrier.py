"""The per-user erase barrier: once a user's data is erased, nothing that began before the erase
writes about them again (a turn in another conversation, a fact stored in the background, a
summary being folded). One per app (``services.memories.barrier``); docs/memory.md, "Your data".

Each user has an erase generation. Work notes it when it begins (``begin``: a turn, and the
tasks it starts, through a context variable); each write about the user runs in a ``guarded``
section that first checks that no erase happened since, then counts as in flight. ``erasing``
bumps the generation, so later checks fail, and ``drain`` waits for the sections in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from chatcore.memory.base import UserKey

T = TypeVar("T")


class UserErasedError(Exception):
    """The user's data was erased after this work began: nothing of it was stored."""


class EraseBarrier:
    """Erase generations and writes in flight, per user, in one process."""

    def __init__(self) -> None:
        self._generations: dict[UserKey, int] = {}
        """Only users erased since the start: one small entry each."""
        self._in_flight: dict[UserKey, set[asyncio.Future[None]]] = {}
        self._erasing: dict[UserKey, asyncio.Event] = {}
        self._noted: ContextVar[tuple[UserKey, int] | None] = ContextVar(
            "chatcore_erase_generation", default=None
        )

    def generation(self, user: UserKey) -> int:
        """How many times ``user`` was erased since the app started."""
        return self._generations.get(user, 0)

    async def begin(self, user: UserKey) -> int:
        """Note the generation of ``user`` for the current task and the tasks it starts from
        now on: their writes about ``user`` are refused once the user is erased. Waits first
        for an erase of ``user`` in progress, so work that begins meanwhile starts afresh."""
        await self._settled(user)
        generation = self.generation(user)
        self._noted.set((user, generation))
        return generation

    @asynccontextmanager
    async def guarded(self, user: UserKey) -> AsyncIterator[None]:
        """A section that writes about ``user``: ``UserErasedError`` on entry when the user was
        erased since the generation noted by ``begin``; otherwise it runs, and an erase waits
        for it to end before deleting. Without a noted generation it waits for an erase in
        progress and notes the current one for its body (nested sections then check it)."""
        noted = self._noted.get()
        reset = None
        if noted is not None and noted[0] == user:
            if self.generation(user) != noted[1]:
                raise UserErasedError(f"{user} was erased after this work began")
        else:
            await self._settled(user)
            reset = self._noted.set((user, self.generation(user)))
        # No await from the check to here: an erase that bumps later finds this in flight.
        marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        in_flight = self._in_flight.setdefault(user, set())
        in_flight.add(marker)
        try:
            yield
        finally:
            marker.set_result(None)
            in_flight.discard(marker)
            if not in_flight and self._in_flight.get(user) is in_flight:
                del self._in_flight[user]
            if reset is not None:
                self._noted.reset(reset)

    async def write(self, user: UserKey, work: Callable[[], Awaitable[T]]) -> T:
        """``await work()`` in a ``guarded`` section. Once begun it is finished even when the
        caller is cancelled (the caller waits for it, then the cancellation goes on): a store
        operation that commits after its caller left would land after an erase."""
        async with self.guarded(user):
            task = asyncio.ensure_future(work())
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                await _finished(task)
                raise

    @asynccontextmanager
    async def erasing(self, user: UserKey) -> AsyncIterator[None]:
        """Around an erase of ``user``: from entry, writes of work that began earlier are
        refused, and new work (``begin``, unnoted sections) waits until the body ends. Call
        ``drain`` in the body before deleting. One erase of a user at a time."""
        await self._settled(user)
        done = self._erasing[user] = asyncio.Event()
        self._generations[user] = self.generation(user) + 1
        try:
            yield
        finally:
            del self._erasing[user]
            done.set()

    async def drain(self, user: UserKey) -> None:
        """Wait until no section about ``user`` is in flight (call it inside ``erasing``: then
        none can start, so the loop ends)."""
        while in_flight := list(self._in_flight.get(user, ())):
            await asyncio.wait(in_flight)

    async def _settled(self, user: UserKey) -> None:
        """Return once no erase of ``user`` is in progress."""
        while (erase := self._erasing.get(user)) is not None:
            await erase.wait()


async def _finished(task: asyncio.Future[Any]) -> None:
    """Wait for ``task`` to end, whatever cancels the waiter meanwhile (bounded by the task)."""
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            continue
