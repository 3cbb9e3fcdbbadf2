"""The SQL of forgetting: erasing everything about one user, and pruning messages older than
the retention period (with the summaries that hold their gist). Used by ``SqlStore``, each in a
transaction of its own; docs/memory.md, "Your data", says what happens around them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatcore.memory.base import ErasedCounts
from chatcore.memory.schema import ConversationRow, MemoryRow, MessageRow, PreferenceRow, UserRow


async def erase_rows(session: AsyncSession, user_id: int) -> ErasedCounts:
    """Delete the user's messages, conversations, preferences, memories and the user row;
    count what went."""
    owned = select(ConversationRow.id).where(ConversationRow.user_id == user_id)
    messages = await deleted(session, MessageRow, MessageRow.conversation_id.in_(owned))
    return ErasedCounts(
        messages=messages,
        conversations=await deleted(session, ConversationRow, ConversationRow.user_id == user_id),
        preferences=await deleted(session, PreferenceRow, PreferenceRow.user_id == user_id),
        memories=await deleted(session, MemoryRow, MemoryRow.user_id == user_id),
        users=await deleted(session, UserRow, UserRow.id == user_id),
    )


async def prune_rows(session: AsyncSession, before: datetime) -> int:
    """Delete every message stored before ``before``, the summaries that cover any of them,
    and the conversations left without messages; how many messages went."""
    # A summary holds the gist of the messages it covers: it goes with any of them.
    covered = select(MessageRow.id).where(
        MessageRow.conversation_id == ConversationRow.id,
        MessageRow.created < before,
        or_(
            ConversationRow.summary_through.is_(None),
            MessageRow.id <= ConversationRow.summary_through,
        ),
    )
    await session.execute(
        update(ConversationRow)
        .where(ConversationRow.summary.is_not(None), covered.exists())
        .values(summary=None, summary_through=None)
    )
    pruned = await deleted(session, MessageRow, MessageRow.created < before)
    if pruned:
        has_messages = select(MessageRow.id).where(MessageRow.conversation_id == ConversationRow.id)
        await session.execute(
            delete(ConversationRow).where(ConversationRow.created < before, ~has_messages.exists())
        )
    return pruned


async def deleted(session: AsyncSession, table: type[Any], where: Any) -> int:
    """Delete the rows of ``table`` that match ``where``; how many went."""
    result = await session.execute(delete(table).where(where))
    return int(getattr(result, "rowcount", 0) or 0)
