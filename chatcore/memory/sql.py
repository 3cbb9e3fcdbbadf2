"""The durable conversation store: SQLAlchemy 2 (async) on SQLite or PostgreSQL.

One session per operation, each a transaction that is committed before the call returns, and
tried again on a transient lock or serialization error. Migrations are applied when it opens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from chatcore.config import mask_url
from chatcore.events import ChatMessage, ConversationKey, Role
from chatcore.files import private_file
from chatcore.memory.base import (
    CLOSE_TIMEOUT,
    ErasedCounts,
    Memory,
    Preference,
    PreferenceSource,
    StoreError,
    Summary,
    UserKey,
    embedding_dim,
    utcnow,
)
from chatcore.memory.database import (
    WRITE,
    create_engine,
    current_revision,
    database_url,
    head_revision,
    retrying,
    sqlite_path,
    upgrade,
)
from chatcore.memory.erase import erase_rows, prune_rows
from chatcore.memory.export import export_rows
from chatcore.memory.locks import AdvisoryLocks, ConversationLocks, CrossProcessLocks, FileLocks
from chatcore.memory.schema import ConversationRow, MemoryRow, MessageRow, PreferenceRow, UserRow

log = logging.getLogger(__name__)
T = TypeVar("T")


class SqlStore:
    """``ConversationStore`` on a database. ``history`` returns the newest ``history_limit``
    messages of the current conversation; older ones stay stored."""

    def __init__(self, url: str, *, history_limit: int = 200) -> None:
        self.url = database_url(url)
        self.history_limit = history_limit
        self.engine: AsyncEngine = create_engine(self.url)
        """For other parts of chatcore that need SQL of their own (export, erase)."""
        self._read = async_sessionmaker(self.engine, expire_on_commit=False)
        writer = self.engine.execution_options(**{WRITE: True})
        self._write = async_sessionmaker(writer, expire_on_commit=False)
        self._opening: asyncio.Future[None] | None = None
        self._closed = False
        self._operations: set[asyncio.Future[Any]] = set()
        self._locks = ConversationLocks(_cross_process_locks(self.url))

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.url.get_backend_name()

    def describe(self) -> str:
        """The database, for messages: a SQLite database's file, else the URL with its
        password masked."""
        path = sqlite_path(self.url)
        if path is not None:
            return str(path)
        return mask_url(self.url.render_as_string(hide_password=False))

    async def open(self) -> None:
        """Create the SQLite file (private) if needed and apply the migrations not yet applied;
        idempotent (also when called concurrently), and a cancelled caller does not interrupt
        a migration. Raises ``StoreError`` saying what to check when the database is unusable;
        a later call tries again."""
        failed = (
            self._opening is not None
            and self._opening.done()
            and (self._opening.cancelled() or self._opening.exception() is not None)
        )
        if self._opening is None or failed:
            self._opening = asyncio.ensure_future(self._open_now())
            self._opening.add_done_callback(self._finished)
        await asyncio.shield(self._opening)

    async def _open_now(self) -> None:
        path = sqlite_path(self.url)
        try:
            if path is not None:
                private_file(path)
            await retrying(self._migrate, "migrating the database")
        except (OSError, SQLAlchemyError) as error:
            raise self._unusable(error) from error

    def _unusable(self, error: BaseException) -> StoreError:
        return StoreError(
            f"cannot open the database {self.describe()}: {_reason(error)}; check "
            "storage.url (CHATCORE_STORAGE__URL) and that the database is reachable"
        )

    async def _migrate(self) -> None:
        async with self.engine.execution_options(**{WRITE: True}).begin() as connection:
            await connection.run_sync(upgrade)

    async def revision(self) -> tuple[str | None, str | None]:
        """(the database's migration revision, the newest shipped one), without migrating;
        the first is None for a database not created yet."""
        path = sqlite_path(self.url)
        if path is not None and not path.exists():
            return None, head_revision()
        try:
            async with self.engine.connect() as connection:
                current = await connection.run_sync(current_revision)
        except (OSError, SQLAlchemyError) as error:
            raise self._unusable(error) from error
        return current, head_revision()

    async def read(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run ``work`` in a read transaction of its own, retried on transient errors."""
        return await self._run(self._read, work)

    async def write(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run ``work`` in a write transaction of its own, committed before this returns and
        retried (from the start) on transient errors."""
        return await self._run(self._write, work)

    async def _run(
        self,
        sessions: async_sessionmaker[AsyncSession],
        work: Callable[[AsyncSession], Awaitable[T]],
    ) -> T:
        """Run ``work`` as a task of its own, shielded: a caller that is cancelled leaves at
        once, and the operation still finishes (cancelled half way, the database driver would
        drop the connection and can leave a close behind that never ends)."""
        if self._closed:
            raise StoreError(f"the store on {self.describe()} is closed")

        async def attempt() -> T:
            async with sessions() as session, session.begin():
                return await work(session)

        async def operation() -> T:
            await self.open()
            return await retrying(attempt)

        task = asyncio.ensure_future(operation())
        self._operations.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self._operations.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that left is not there to see it

    # Conversations

    async def history(self, key: ConversationKey) -> list[ChatMessage]:
        async def work(session: AsyncSession) -> list[ChatMessage]:
            query = (
                select(MessageRow)
                .join(ConversationRow, MessageRow.conversation_id == ConversationRow.id)
                .where(ConversationRow.id == _open_conversation(key).scalar_subquery())
                .order_by(MessageRow.id.desc())
                .limit(self.history_limit)
            )
            rows = (await session.scalars(query)).all()
            return [_chat_message(row) for row in reversed(rows)]

        return await self.read(work)

    async def append(
        self, key: ConversationKey, messages: Sequence[ChatMessage]
    ) -> list[ChatMessage]:
        if not messages:
            return []

        async def work(session: AsyncSession) -> list[ChatMessage]:
            conversation = await self._conversation_id(session, key)
            now = utcnow()
            rows = [
                MessageRow(
                    conversation_id=conversation,
                    role=message.role,
                    content=message.content,
                    tokens=message.tokens,
                    created=now,
                )
                for message in messages
            ]
            session.add_all(rows)
            await session.flush()
            return [_chat_message(row) for row in rows]

        return await self.write(work)

    async def reset(self, key: ConversationKey) -> int:
        async def work(session: AsyncSession) -> int:
            conversation = await session.scalar(_open_conversation(key))
            if conversation is None:
                return 0
            count = await session.scalar(
                select(func.count()).where(MessageRow.conversation_id == conversation)
            )
            await session.execute(
                update(ConversationRow)
                .where(ConversationRow.id == conversation)
                .values(closed=utcnow())
            )
            return count or 0

        return await self.write(work)

    async def set_tokens(self, key: ConversationKey, counts: Mapping[str, int]) -> None:
        pairs = [{"mid": int(i), "count": n} for i, n in counts.items() if i.isdigit()]
        if not pairs:
            return

        async def work(session: AsyncSession) -> None:
            conversation = await session.scalar(_open_conversation(key))
            if conversation is None:
                return
            statement = (
                update(MessageRow)
                .where(MessageRow.id == bindparam("mid"))
                .where(MessageRow.conversation_id == conversation)
                .values(tokens=bindparam("count"))
            )
            connection = await session.connection()
            await connection.execute(statement, pairs)

        await self.write(work)

    async def get_summary(self, key: ConversationKey) -> Summary | None:
        async def work(session: AsyncSession) -> Summary | None:
            query = select(ConversationRow.summary, ConversationRow.summary_through).where(
                ConversationRow.id == _open_conversation(key).scalar_subquery()
            )
            row = (await session.execute(query)).first()
            if row is None or row.summary is None:
                return None
            through = None if row.summary_through is None else str(row.summary_through)
            return Summary(row.summary, through)

        return await self.read(work)

    async def set_summary(self, key: ConversationKey, text: str, through: str | None) -> None:
        async def work(session: AsyncSession) -> None:
            await session.execute(
                update(ConversationRow)
                .where(ConversationRow.id == _open_conversation(key).scalar_subquery())
                .values(summary=text, summary_through=_id(through))
            )

        await self.write(work)

    async def replace_summary(
        self,
        key: ConversationKey,
        text: str,
        through: str | None,
        *,
        previous: Summary | None,
        newest: str,
    ) -> bool:
        was_text, was_through = (previous.text, previous.through) if previous else (None, None)

        async def work(session: AsyncSession) -> bool:
            conversation = await session.scalar(_open_conversation(key))
            holds = select(MessageRow.id).where(
                MessageRow.conversation_id == conversation, MessageRow.id == _id(newest)
            )
            # One statement, its conditions checked on the row it writes (PostgreSQL checks
            # them again on a row another transaction changed meanwhile).
            result = await session.execute(
                update(ConversationRow)
                .where(
                    ConversationRow.id == conversation,
                    ConversationRow.closed.is_(None),
                    ConversationRow.summary.is_not_distinct_from(was_text),
                    ConversationRow.summary_through.is_not_distinct_from(_id(was_through)),
                    holds.exists(),
                )
                .values(summary=text, summary_through=_id(through))
            )
            return bool(getattr(result, "rowcount", 0))

        return await self.write(work)

    # Users

    async def set_display_name(self, user: UserKey, name: str | None) -> None:
        async def work(session: AsyncSession) -> None:
            user_id = await self._user_id(session, user)
            await session.execute(
                update(UserRow).where(UserRow.id == user_id).values(display_name=name)
            )

        await self.write(work)

    # Preferences

    async def get_preferences(self, user: UserKey) -> dict[str, Preference]:
        async def work(session: AsyncSession) -> dict[str, Preference]:
            query = (
                select(PreferenceRow)
                .where(PreferenceRow.user_id == _user_query(user).scalar_subquery())
                .order_by(PreferenceRow.key)
            )
            rows = (await session.scalars(query)).all()
            return {row.key: _preference(row) for row in rows}

        return await self.read(work)

    async def set_preference(
        self, user: UserKey, key: str, value: str, source: PreferenceSource = "explicit"
    ) -> Preference:
        if source not in ("explicit", "learned"):
            raise ValueError(f"a preference's source is 'explicit' or 'learned', not {source!r}")

        async def work(session: AsyncSession) -> Preference:
            user_id = await self._user_id(session, user)
            now = utcnow()
            values = {"user_id": user_id, "key": key, "value": value, "source": source}
            insert = self._insert(PreferenceRow).values(**values, updated=now)
            await session.execute(
                insert.on_conflict_do_update(
                    index_elements=["user_id", "key"],
                    set_={"value": value, "source": source, "updated": now},
                )
            )
            return Preference(key, value, source, now)

        return await self.write(work)

    async def delete_preference(self, user: UserKey, key: str) -> bool:
        async def work(session: AsyncSession) -> bool:
            result = await session.execute(
                delete(PreferenceRow).where(
                    PreferenceRow.user_id == _user_query(user).scalar_subquery(),
                    PreferenceRow.key == key,
                )
            )
            return bool(getattr(result, "rowcount", 0))

        return await self.write(work)

    # Long-term memories

    async def add_memory(
        self, user: UserKey, text: str, embedding: bytes, dim: int | None = None
    ) -> Memory:
        size = embedding_dim(embedding, dim)

        async def work(session: AsyncSession) -> Memory:
            row = MemoryRow(
                user_id=await self._user_id(session, user),
                text=text,
                embedding=embedding,
                dim=size,
                created=utcnow(),
            )
            session.add(row)
            await session.flush()
            return _memory(row)

        return await self.write(work)

    async def list_memories(
        self, user: UserKey, ids: Collection[int] | None = None
    ) -> list[Memory]:
        async def work(session: AsyncSession) -> list[Memory]:
            query = (
                select(MemoryRow)
                .where(MemoryRow.user_id == _user_query(user).scalar_subquery())
                .order_by(MemoryRow.id)
            )
            if ids is not None:
                query = query.where(MemoryRow.id.in_(list(ids)))
            return [_memory(row) for row in (await session.scalars(query)).all()]

        return await self.read(work)

    async def delete_memory(self, user: UserKey, memory_id: int) -> bool:
        async def work(session: AsyncSession) -> bool:
            result = await session.execute(
                delete(MemoryRow).where(
                    MemoryRow.id == memory_id,
                    MemoryRow.user_id == _user_query(user).scalar_subquery(),
                )
            )
            return bool(getattr(result, "rowcount", 0))

        return await self.write(work)

    async def close(self) -> None:
        """Let the operations in flight finish (a turn being stored at shutdown, say), for at
        most ``CLOSE_TIMEOUT`` seconds, then close every connection; idempotent."""
        self._closed = True
        if self._operations:
            _, running = await asyncio.wait(self._operations, timeout=CLOSE_TIMEOUT)
            if running:
                log.warning("closing the store with %d operations still running", len(running))
        try:
            await self._locks.close()
        finally:
            await self.engine.dispose()

    # Privacy

    async def export_user(self, user: UserKey) -> dict[str, Any] | None:
        async def work(session: AsyncSession) -> dict[str, Any] | None:
            if self.dialect == "postgresql":  # one snapshot for all the reads below
                await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            row = await session.scalar(
                select(UserRow).where(
                    UserRow.platform == user.platform, UserRow.platform_user_id == user.user
                )
            )
            if row is None:
                return None
            return await export_rows(session, row)

        return await self.read(work)

    async def erase_user(self, user: UserKey) -> ErasedCounts:
        async def work(session: AsyncSession) -> ErasedCounts:
            user_id = await session.scalar(_user_query(user))
            return ErasedCounts() if user_id is None else await erase_rows(session, user_id)

        counts = await self.write(work)
        if counts.users and not await self.scrub():
            return dataclasses.replace(counts, clean=False)
        return counts

    async def prune_messages(self, before: datetime) -> int:
        pruned = await self.write(lambda session: prune_rows(session, before))
        if pruned:
            await self.scrub(vacuum=False)
        return pruned

    async def scrub(self, *, vacuum: bool = True) -> bool:
        """SQLite: rebuild the file (``VACUUM``, when ``vacuum``: ``secure_delete`` zeroes
        deleted rows, but copies of them can stay in the unused space of pages that were split
        earlier), then copy the write-ahead log into the file and truncate it, so no older
        copy of deleted rows stays in ``-wal``. Nothing to do on PostgreSQL (docs/memory.md
        says what the server keeps). False, with a warning logged, when another connection
        kept it from finishing. Like every operation, it finishes even if its caller leaves."""
        if sqlite_path(self.url) is None:
            return True
        if self._closed:
            raise StoreError(f"the store on {self.describe()} is closed")
        task = asyncio.ensure_future(self._scrub(vacuum))
        self._operations.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    async def _scrub(self, vacuum: bool) -> bool:
        statements = ["VACUUM"] if vacuum else []
        statements.append("PRAGMA wal_checkpoint(TRUNCATE)")  # (busy, log frames, copied)
        row = None
        try:
            async with self.engine.connect() as connection:
                raw = await connection.get_raw_connection()
                driver: Any = raw.driver_connection  # aiosqlite, outside any transaction
                for statement in statements:
                    cursor = await driver.execute(statement)
                    row = await cursor.fetchone()
                    await cursor.close()
        except (OSError, sqlite3.Error, SQLAlchemyError) as error:
            log.warning("could not rebuild %s after deleting: %s", self.describe(), error)
            return False
        if row is None or row[0] != 0:
            log.warning(
                "could not truncate the log of %s (another process is using the database): "
                "copies of deleted rows may stay in it until the next checkpoint",
                self.describe(),
            )
            return False
        return True

    # Helpers

    def _insert(self, table: type[Any]) -> Any:
        """INSERT with ``ON CONFLICT`` support, in this database's dialect."""
        return postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)

    async def _user_id(self, session: AsyncSession, user: UserKey) -> int:
        """The user's row id, creating the row if needed (race-free across processes)."""
        found = await session.scalar(_user_query(user))
        if found is not None:
            return found
        await session.execute(
            self._insert(UserRow)
            .values(platform=user.platform, platform_user_id=user.user, created=utcnow())
            .on_conflict_do_nothing(index_elements=["platform", "platform_user_id"])
        )
        created = await session.scalar(_user_query(user))
        assert created is not None
        return created

    async def _conversation_id(self, session: AsyncSession, key: ConversationKey) -> int:
        """The open conversation's row id, opening one if needed (race-free)."""
        found = await session.scalar(_open_conversation(key))
        if found is not None:
            return found
        user_id = await self._user_id(session, UserKey.of(key))
        await session.execute(
            self._insert(ConversationRow)
            .values(user_id=user_id, channel=key.channel, created=utcnow())
            .on_conflict_do_nothing(
                index_elements=["user_id", "channel"],
                index_where=ConversationRow.closed.is_(None),
            )
        )
        opened = await session.scalar(_open_conversation(key))
        assert opened is not None
        return opened

    # Ordering

    def conversation_lock(
        self, key: ConversationKey, wait: float, *, queued: bool = False
    ) -> AbstractAsyncContextManager[None]:
        """Across processes: on SQLite, file locks in the private folder ``<database>-locks``
        beside the database file; on PostgreSQL, advisory locks on a connection of their own
        (docs/memory.md, "Several processes")."""
        return self._locks.hold(key, wait, queued=queued)


def _cross_process_locks(url: URL) -> CrossProcessLocks | None:
    """What orders a conversation across the processes that share the database at ``url``;
    None for an in-memory SQLite database, which only this process can open."""
    if url.get_backend_name() == "postgresql":
        return AdvisoryLocks(url)
    path = sqlite_path(url)
    return None if path is None else FileLocks(path.with_name(f"{path.name}-locks"))


def _user_query(user: UserKey) -> Select[int]:
    return select(UserRow.id).where(
        UserRow.platform == user.platform, UserRow.platform_user_id == user.user
    )


def _open_conversation(key: ConversationKey) -> Select[int]:
    return (
        select(ConversationRow.id)
        .join(UserRow, ConversationRow.user_id == UserRow.id)
        .where(
            UserRow.platform == key.platform,
            UserRow.platform_user_id == key.user,
            ConversationRow.channel == key.channel,
            ConversationRow.closed.is_(None),
        )
    )


def _id(message_id: str | None) -> int | None:
    """A message id as the database keeps it."""
    return None if message_id is None else int(message_id)


def _chat_message(row: MessageRow) -> ChatMessage:
    role: Role = row.role  # type: ignore[assignment]  # the CHECK constraint holds it to these
    return ChatMessage(role, row.content, id=str(row.id), created=row.created, tokens=row.tokens)


def _preference(row: PreferenceRow) -> Preference:
    source: PreferenceSource = row.source  # type: ignore[assignment]  # CHECK constraint
    return Preference(row.key, row.value, source, row.updated)


def _memory(row: MemoryRow) -> Memory:
    return Memory(row.id, row.text, row.embedding, row.dim, row.created)


def _reason(error: BaseException) -> str:
    """The first line of an error, without SQLAlchemy's background link."""
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__
