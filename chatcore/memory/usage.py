"""Where the daily token quota is counted: tokens per user and UTC day.

On a database store the count lives in the ``usage`` table, so every process sharing the
database counts together (one atomic upsert per reply); otherwise it lives in this process.
A user is a SHA-256 of ``PLATFORM:ID`` in the table: an erase does not reset the day's count,
and rows of days that are over are deleted.
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from typing import Protocol

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from chatcore.memory.base import ConversationStore, UserKey
from chatcore.memory.schema import UsageRow
from chatcore.memory.sql import SqlStore


class UsageLedger(Protocol):
    """Counts the tokens each user used per UTC day."""

    async def used(self, user: UserKey, day: date) -> int:
        """Tokens ``user`` used on ``day``."""
        ...

    async def add(self, user: UserKey, day: date, tokens: int) -> int:
        """Count ``tokens`` more for ``user`` on ``day``; return the day's total."""
        ...


def subject(user: UserKey) -> str:
    """How the ``usage`` table names a user: no name, only a hash of the identity."""
    return hashlib.sha256(str(user).encode()).hexdigest()


class MemoryUsage:
    """A ``UsageLedger`` in this process: only today's and yesterday's counts are kept."""

    def __init__(self) -> None:
        self._counts: dict[tuple[UserKey, date], int] = {}
        self._newest: date | None = None

    async def used(self, user: UserKey, day: date) -> int:
        return self._counts.get((user, day), 0)

    async def add(self, user: UserKey, day: date, tokens: int) -> int:
        if self._newest is None or day > self._newest:
            self._newest = day
            old = day - timedelta(days=1)
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= old}
        total = self._counts.get((user, day), 0) + tokens
        self._counts[(user, day)] = total
        return total


class SqlUsage:
    """A ``UsageLedger`` in the ``usage`` table of a ``SqlStore``."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self._pruned: date | None = None

    async def used(self, user: UserKey, day: date) -> int:
        async def work(session: AsyncSession) -> int:
            query = select(UsageRow.tokens).where(
                UsageRow.subject == subject(user), UsageRow.day == day
            )
            return int(await session.scalar(query) or 0)

        return await self.store.read(work)

    async def add(self, user: UserKey, day: date, tokens: int) -> int:
        prune = self._pruned != day
        dialect = postgresql if self.store.dialect == "postgresql" else sqlite

        async def work(session: AsyncSession) -> int:
            insert = dialect.insert(UsageRow).values(subject=subject(user), day=day, tokens=tokens)
            await session.execute(
                insert.on_conflict_do_update(
                    index_elements=["subject", "day"],
                    set_={"tokens": UsageRow.tokens + insert.excluded.tokens},
                )
            )
            if prune:  # once a day per process: the days that are over
                await session.execute(delete(UsageRow).where(UsageRow.day < day - timedelta(1)))
            query = select(UsageRow.tokens).where(
                UsageRow.subject == subject(user), UsageRow.day == day
            )
            return int(await session.scalar(query) or 0)

        total = await self.store.write(work)
        self._pruned = day
        return total


def usage_ledger(store: ConversationStore) -> UsageLedger:
    """The ledger for ``store``: its database when it has one, else this process."""
    return SqlUsage(store) if isinstance(store, SqlStore) else MemoryUsage()
