"""The database schema of the durable store: SQLAlchemy 2 ORM models, typed with ``Mapped[]``.

Alembic migrations (``chatcore/memory/migrations``) create exactly these tables; a test checks
that the two agree. ``docs/memory.md`` describes every table.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from chatcore.memory.base import utcnow

# Named constraints: Alembic's batch mode (SQLite) can only alter constraints that have names.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Id = BigInteger().with_variant(Integer(), "sqlite")
"""64-bit ids; on SQLite an INTEGER PRIMARY KEY, which is the rowid."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite keeps none)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UserRow(Base):
    """A person on one platform; everything else stored about them hangs off this row."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("platform", "platform_user_id", name="uq_users_identity"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    platform: Mapped[str] = mapped_column(String(64))
    platform_user_id: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str | None] = mapped_column(String(255))
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PreferenceRow(Base):
    """One preference of a user (``name``, ``language``, ``tone``, ...), set or learned."""

    __tablename__ = "preferences"
    __table_args__ = (
        UniqueConstraint("user_id", "key", name="uq_preferences_user_key"),
        CheckConstraint("source IN ('explicit', 'learned')", name="source"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    updated: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MemoryRow(Base):
    """A long-term fact about a user, with its sentence embedding (``dim`` float32 values)."""

    __tablename__ = "memories"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    dim: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConversationRow(Base):
    """A conversation of a user in a channel; at most one per (user, channel) is open
    (``closed`` is NULL). ``/reset`` closes it; the next message opens a new one."""

    __tablename__ = "conversations"
    __table_args__ = (
        Index(
            "uq_conversations_open",
            "user_id",
            "channel",
            unique=True,
            sqlite_where=text("closed IS NULL"),
            postgresql_where=text("closed IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(255))
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed: Mapped[datetime | None] = mapped_column(UTCDateTime)
    summary: Mapped[str | None] = mapped_column(Text)
    """The rolling summary of older turns."""
    summary_through: Mapped[int | None] = mapped_column(Id)
    """The id of the newest message the summary covers."""


class MessageRow(Base):
    """One message of a conversation; ids grow, so they give the order."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_conversation", "conversation_id", "id"),
        CheckConstraint("role IN ('system', 'user', 'assistant')", name="role"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    tokens: Mapped[int | None] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UsageRow(Base):
    """Tokens a user's model replies used on one UTC day, for ``limits.daily_tokens``; shared
    by every process on the database. ``subject`` is a SHA-256 of the user's ``PLATFORM:ID``,
    not a link to ``users``: an erase must not reset the day's count, and the row holds no
    name. Rows of days that are over are deleted (``chatcore.memory.usage``)."""

    __tablename__ = "usage"

    subject: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger)
