"""Database plumbing for the SQL store: URLs, engines with their per-connection settings,
retries of transient errors, and the Alembic migrations shipped in ``memory/migrations``.

SQLite connections get WAL, a busy timeout, foreign keys, secure delete and full sync; write
transactions start with ``BEGIN IMMEDIATE`` so that two writers queue instead of deadlocking.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from chatcore.memory.base import StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"
WRITE = "chatcore_write"
"""Execution option: this connection's transaction writes (SQLite: ``BEGIN IMMEDIATE``)."""
BUSY_TIMEOUT_MS = 5000
RETRIES = 8
_MIGRATION_LOCK = 0x63686174  # "chat": PostgreSQL advisory lock held while migrating
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    "PRAGMA foreign_keys=ON",
    "PRAGMA secure_delete=ON",
    "PRAGMA synchronous=FULL",
)
_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}


def database_url(url: str) -> URL:
    """The async driver's URL for ``url`` (``sqlite:///...`` or ``postgresql+psycopg://...``);
    ``StoreError`` for any other database or driver."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"storage.url {url!r} is not a database URL") from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise StoreError(
            f"storage.url uses {parsed.drivername!r}; chatcore supports sqlite:///PATH and "
            "postgresql+psycopg://USER@HOST/DB"
        )
    return parsed.set(drivername=driver)


def sqlite_path(url: URL) -> Path | None:
    """The database file of a SQLite URL; None for PostgreSQL or an in-memory database."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).expanduser()


def create_engine(url: URL) -> AsyncEngine:
    """An async engine with chatcore's per-connection settings."""
    if url.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True)
    options: dict[str, Any] = {}
    if sqlite_path(url) is None:
        options["poolclass"] = StaticPool
    engine = create_async_engine(url, **options)

    @event.listens_for(engine.sync_engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        try:
            for pragma in SQLITE_PRAGMAS:
                cursor.execute(pragma)
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Connection) -> None:
        writes = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

    return engine


def is_transient(error: BaseException) -> bool:
    """A lock or serialization conflict that succeeds when tried again."""
    if not isinstance(error, DBAPIError):
        return False
    if getattr(error.orig, "sqlstate", None) in ("40001", "40P01"):
        return True  # PostgreSQL: serialization failure, deadlock detected
    message = str(error.orig).lower()
    return "database is locked" in message or "database is busy" in message


async def retrying(
    operation: Callable[[], Awaitable[T]],
    what: str = "database",
    *,
    attempts: int = RETRIES,
    pause: float = 0.02,
) -> T:
    """Run ``operation``, trying again after a transient error, at most ``attempts`` times in
    all, pausing ``pause`` seconds, doubled each time (at most 1 s), with jitter. Each try must
    be a whole transaction of its own."""
    for attempt in range(attempts):
        try:
            return await operation()
        except DBAPIError as error:
            if not is_transient(error) or attempt == attempts - 1:
                raise
            wait = min(pause * 2**attempt, 1.0) * (0.5 + random.random())
            log.info("%s: %s; trying again in %.2f s", what, error.orig, wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the shipped migrations, run on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # New revision files: v0002_what_changed.py (a module name mypy accepts).
    config.set_main_option("file_template", "v%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    """The newest revision the shipped migrations know."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(connection: Connection) -> None:
    """Apply the migrations not yet applied, inside the connection's transaction; one process
    at a time (SQLite: the write lock; PostgreSQL: an advisory lock)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    command.upgrade(alembic_config(connection), "head")


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at; None for an empty database."""
    return MigrationContext.configure(connection).get_current_revision()
