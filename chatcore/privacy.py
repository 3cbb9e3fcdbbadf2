"""What users can do about their own data (``services.privacy``): export everything stored
about them, and erase it all: the store, the engine's caches, and what plugins keep (the
``user_erased`` hook). ``Retention`` prunes messages older than ``memory.retention_days``.

Used by ``/forget-me`` (plugins/memory.py) and ``chatcore memory export|forget``; docs/memory.md
("Your data") says what is kept where.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from chatcore.memory.base import ConversationStore, ErasedCounts, UserKey
from chatcore.services import Services

if TYPE_CHECKING:
    from chatcore.config import Settings
    from chatcore.memory.service import Memories
    from chatcore.plugins import PluginHost

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 3600.0
"""Seconds between two retention passes while the app runs."""


class Privacy:
    """Export and erase one user's data, everywhere chatcore and its plugins keep it."""

    def __init__(
        self,
        settings: Settings,
        store: ConversationStore,
        memories: Memories,
        plugins: PluginHost,
    ) -> None:
        self.settings = settings
        self.store = store
        self.memories = memories
        self.plugins = plugins

    async def export(self, user: UserKey) -> dict[str, Any] | None:
        """Everything the store keeps about ``user`` (``ConversationStore.export_user``);
        None when it knows nothing about them."""
        return await self.store.export_user(user)

    async def erase(self, user: UserKey) -> ErasedCounts:
        """Erase ``user`` from the store (one transaction, database files scrubbed), drop what
        the engine caches about them, then let every plugin erase its own data through the
        ``user_erased`` hook (a plugin that fails is logged by name; the others go on)."""
        counts = await self.store.erase_user(user)
        self.memories.erased(user)
        services = Services(self.settings, self.store, self.memories, self)
        await self.plugins.call("user_erased", user=user, services=services)
        log.info("erased %s: %s", user, counts.describe())
        return counts


class Retention:
    """Deletes messages older than ``days`` (and conversations left empty): once when
    started, then every ``interval`` seconds until closed. ``days`` 0 keeps everything."""

    def __init__(
        self,
        store: ConversationStore,
        days: float,
        *,
        interval: float = PRUNE_INTERVAL,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.days = days
        self.interval = interval
        self.clock = clock
        self.passes = 0
        """Passes finished, failed ones included."""
        self.passed = asyncio.Event()
        """Set after each pass (tests wait on it)."""
        self._task: asyncio.Task[None] | None = None

    async def prune(self) -> int:
        """One pass now: delete what is older than the retention period; how many messages
        went (0 when ``days`` is 0)."""
        if self.days <= 0:
            return 0
        cutoff = self.clock() - timedelta(days=self.days)
        pruned = await self.store.prune_messages(cutoff)
        if pruned:
            log.info("retention: deleted %d messages stored before %s", pruned, cutoff)
        return pruned

    def start(self) -> None:
        """Run the passes in the background; nothing when ``days`` is 0; idempotent."""
        if self.days > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="chatcore-retention")

    async def close(self) -> None:
        """Stop the passes (a pass in flight is cancelled: what it deleted is committed or
        not, never half)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def _run(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:
                log.exception("retention: pruning old messages failed; trying again later")
            self.passes += 1
            self.passed.set()
            await asyncio.sleep(self.interval)
