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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from chatcore.memory.base import ConversationStore, ErasedCounts, UserKey
from chatcore.services import Services

if TYPE_CHECKING:
    from chatcore.config import Settings
    from chatcore.memory.service import Memories
    from chatcore.plugins import PluginFault, PluginHost

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 3600.0
"""Seconds between two retention passes while the app runs."""


@dataclass(frozen=True, slots=True)
class Erased:
    """What ``Privacy.erase`` did."""

    counts: ErasedCounts
    """What the store deleted."""
    failed_plugins: tuple[str, ...] = ()
    """Plugins whose ``user_erased`` raised or ran past its time limit (logged by name): what
    they keep about the user may still be there."""


class Privacy:
    """Export and erase one user's data, everywhere chatcore and its plugins keep it. Builds
    the app's ``Services`` (``self.services``), which hold it."""

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
        self.services = Services(settings, store, memories, self)
        """The one services object of the app: hooks get it, ``user_erased`` too."""
        self._erases: dict[asyncio.Task[Erased], UserKey] = {}

    async def export(self, user: UserKey) -> dict[str, Any] | None:
        """Everything the store keeps about ``user`` (``ConversationStore.export_user``);
        None when it knows nothing about them."""
        return await self.store.export_user(user)

    async def erase(self, user: UserKey) -> Erased:
        """``start_erase``, and wait for it: a caller that is cancelled leaves, the erase
        goes on to its end."""
        return await asyncio.shield(self.start_erase(user))

    def start_erase(self, user: UserKey) -> asyncio.Task[Erased]:
        """Erase ``user`` everywhere, in a task of its own that no caller can cancel (``close``
        waits for it), in this order:

        1. the erase barrier: work of ``user`` that began before now can no longer write about
           them; turns that begin from now on wait until step 4 is done;
        2. their memories being stored in the background are cancelled and awaited, and the
           writes about them in flight (a turn stored in another conversation) end;
        3. the store deletes it all in one transaction and scrubs the database files;
        4. the engine's caches about them are dropped;
        5. every plugin erases its own data (``user_erased``), also when the store knew nothing
           about the user; a plugin that fails is logged by name and named in the result."""
        task = asyncio.get_running_loop().create_task(self._erase(user))
        self._erases[task] = user
        task.add_done_callback(self._erased)
        return task

    async def close(self, seconds: float) -> None:
        """Wait, at most ``seconds``, for the erases in flight; a warning names the
        users of those left unfinished (to be erased again)."""
        running = list(self._erases)
        if running:
            _, left = await asyncio.wait(running, timeout=seconds)
            for task in left:
                log.warning(
                    "closing with the erase of %s unfinished; erase that user again "
                    "(`chatcore memory forget`)",
                    self._erases.get(task, "a user"),
                )

    async def _erase(self, user: UserKey) -> Erased:
        barrier = self.memories.barrier
        async with barrier.erasing(user):
            await self.memories.stop_tracked(user)
            await barrier.drain(user)
            counts = await self.store.erase_user(user)
            self.memories.erased(user)
        faults: list[PluginFault] = []
        await self.plugins.call("user_erased", user=user, services=self.services, faults=faults)
        failed = tuple(dict.fromkeys(fault.plugin for fault in faults))
        log.info("erased %s: %s", user, counts.describe())
        if failed:
            log.error("erasing %s: plugins %s could not erase their data", user, ", ".join(failed))
        return Erased(counts, failed)

    def _erased(self, task: asyncio.Task[Erased]) -> None:
        user = self._erases.pop(task, None)
        if not task.cancelled() and task.exception() is not None:  # its caller may be gone
            log.error("erasing %s failed: %r", user, task.exception())


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
