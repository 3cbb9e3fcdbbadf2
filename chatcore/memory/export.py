"""The export document of one user (``chatcore memory export``): everything stored about them,
as JSON-ready data in one shape for every store, described in docs/memory.md ("Your data").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from chatcore.memory.base import EXPORT_FORMAT, EXPORT_VERSION
from chatcore.memory.schema import ConversationRow, MemoryRow, MessageRow, PreferenceRow, UserRow


def iso(moment: datetime | None) -> str | None:
    """A timestamp as ISO 8601 text (UTC), None kept."""
    return None if moment is None else moment.isoformat()


def document(
    user: dict[str, Any],
    preferences: list[dict[str, Any]],
    memories: list[dict[str, Any]],
    conversations: list[dict[str, Any]],
) -> dict[str, Any]:
    """The export document around its parts, with its format and version first."""
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "user": user,
        "preferences": preferences,
        "memories": memories,
        "conversations": conversations,
    }


async def export_rows(session: AsyncSession, user: UserRow) -> dict[str, Any]:
    """The export document of ``user`` from the SQL store's tables, read in ``session``."""
    preferences = await session.scalars(
        select(PreferenceRow).where(PreferenceRow.user_id == user.id).order_by(PreferenceRow.key)
    )
    memories = await session.scalars(
        select(MemoryRow).where(MemoryRow.user_id == user.id).order_by(MemoryRow.id)
    )
    conversations = (
        await session.scalars(
            select(ConversationRow)
            .where(ConversationRow.user_id == user.id)
            .order_by(ConversationRow.id)
        )
    ).all()
    messages: dict[int, list[dict[str, Any]]] = {c.id: [] for c in conversations}
    rows = await session.scalars(
        select(MessageRow)
        .where(MessageRow.conversation_id.in_(list(messages)))
        .order_by(MessageRow.id)
    )
    for row in rows:
        messages[row.conversation_id].append(
            {
                "id": row.id,
                "role": row.role,
                "content": row.content,
                "tokens": row.tokens,
                "created": iso(row.created),
            }
        )
    return document(
        {
            "platform": user.platform,
            "id": user.platform_user_id,
            "display_name": user.display_name,
            "created": iso(user.created),
        },
        [
            {"key": p.key, "value": p.value, "source": p.source, "updated": iso(p.updated)}
            for p in preferences
        ],
        [{"id": m.id, "text": m.text, "created": iso(m.created)} for m in memories],
        [
            {
                "id": c.id,
                "channel": c.channel,
                "created": iso(c.created),
                "closed": iso(c.closed),
                "summary": c.summary,
                "summary_through": c.summary_through,
                "messages": messages[c.id],
            }
            for c in conversations
        ],
    )
