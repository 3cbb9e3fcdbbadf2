"""Alembic's entry point for chatcore's migrations: runs them on the connection the store (or
``chatcore db upgrade``) passes in, or on ``sqlalchemy.url`` through the async engine."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection

from chatcore.memory.database import create_engine, database_url
from chatcore.memory.schema import Base, UTCDateTime


def render_item(kind: str, item: Any, autogen: AutogenContext) -> str | Literal[False]:
    """New revisions name plain SQLAlchemy types, never chatcore's own (migrations must not
    change when the models do)."""
    if kind == "type" and isinstance(item, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_on_url(url: str) -> None:
    engine = create_engine(database_url(url))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit("chatcore's migrations run online only (on a database connection)")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
    else:
        asyncio.run(run_on_url(context.config.get_main_option("sqlalchemy.url") or ""))


main()
