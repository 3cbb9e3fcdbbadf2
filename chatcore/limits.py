"""Limits on what users ask of the model (``[limits]``, docs/pipeline.md): a message rate per
user, a daily token quota per user, a cap on generations at once with a bounded queue, and a
generation timeout (applied by the reply pipeline).

Clocks are injected, so tests need no sleeps: ``clock`` is monotonic seconds (the rate),
``now`` is the UTC wall time (the quota's day).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as day_time
from typing import TypeVar

from chatcore.config import LimitsSettings
from chatcore.events import ReplyError
from chatcore.memory.base import UserKey
from chatcore.memory.usage import MemoryUsage, UsageLedger

Clock = Callable[[], float]
WallClock = Callable[[], datetime]

T = TypeVar("T")

SWEEP_SECONDS = 60.0
"""How often the rate limiter forgets users whose bucket is full again."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RateLimiter:
    """A token bucket per user: ``burst`` messages at once, refilled at ``per_minute`` a minute.

    Bounded in memory: a user is forgotten once their bucket is full again (forgetting them
    changes nothing), checked at most once a minute, so only users active within the last
    ``burst / per_minute`` minutes are kept."""

    def __init__(self, per_minute: int, burst: int, clock: Clock = time.monotonic) -> None:
        self.per_second = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[UserKey, tuple[float, float]] = {}
        """Each user's level and when it was last computed."""
        self._swept = clock()

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def take(self, user: UserKey) -> float:
        """Count one message of ``user``: 0 when admitted, else the seconds until one would be."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        if now - self._swept >= SWEEP_SECONDS:
            self._sweep(now)
        level = self._level(user, now)
        if level >= 1.0:
            self._buckets[user] = (level - 1.0, now)
            return 0.0
        self._buckets[user] = (level, now)
        return (1.0 - level) / self.per_second

    def tracked(self) -> int:
        """Users currently remembered."""
        return len(self._buckets)

    def _level(self, user: UserKey, now: float) -> float:
        found = self._buckets.get(user)
        if found is None:
            return self.burst
        level, updated = found
        return min(self.burst, level + (now - updated) * self.per_second)

    def _sweep(self, now: float) -> None:
        self._swept = now
        full = [u for u in self._buckets if self._level(u, now) >= self.burst]
        for user in full:
            del self._buckets[user]


class GenerationSlots:
    """At most ``limit`` generations at once (0: no cap); up to ``queued`` more wait, first
    come first served; beyond them ``acquire`` refuses at once. A waiter that is cancelled
    leaves the queue, and a slot handed to it passes on to the next."""

    def __init__(self, limit: int, queued: int) -> None:
        self.limit = limit
        self.queued = queued
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def waiting(self) -> int:
        """Generations waiting for a slot."""
        return sum(not w.done() for w in self._waiters)

    async def acquire(self) -> bool:
        """Take a slot, waiting in line if needed; False (at once) when the line is full."""
        if self.limit <= 0:
            self.active += 1
            return True
        if self.active < self.limit and not self.waiting():
            self.active += 1
            return True
        if self.waiting() >= self.queued:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # it was handed a slot just as it left: pass it on
            elif waiter in self._waiters:  # else ``release`` already dropped it
                self._waiters.remove(waiter)
            raise
        return True

    def release(self) -> None:
        """Give a slot back: to the first waiter in line, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; ``active`` stays
                return
        self.active -= 1


@dataclass(frozen=True, slots=True)
class Spend:
    """What a chat turn may use of its user's quota: counted on the day it began."""

    user: UserKey
    day: date


class Limits:
    """The limits of one engine, from ``[limits]``."""

    def __init__(
        self,
        settings: LimitsSettings,
        usage: UsageLedger | None = None,
        *,
        clock: Clock = time.monotonic,
        now: WallClock = _utcnow,
    ) -> None:
        self.settings = settings
        self.rate = RateLimiter(settings.messages_per_minute, settings.burst, clock)
        self.slots = GenerationSlots(settings.max_generations, settings.max_queued)
        self.usage: UsageLedger = usage or MemoryUsage()
        self.now = now

    @property
    def timeout(self) -> float | None:
        """Seconds a generation may run; None: no limit."""
        return self.settings.generation_timeout or None

    def admit(self, user: UserKey, message_id: str) -> ReplyError | None:
        """Count one message against its user's rate; the refusal, saying when to retry."""
        wait = self.rate.take(user)
        if not wait:
            return None
        seconds = max(1, math.ceil(wait))
        text = f"You are sending messages too fast; wait {seconds} s and send it again."
        return ReplyError(message_id, "rate_limited", text)

    async def check_quota(self, user: UserKey, message_id: str) -> Spend | ReplyError:
        """Whether ``user`` may start a model reply today: what to count it against, or the
        refusal, saying when the quota resets. A reply that starts under the quota finishes."""
        now = self.now().astimezone(UTC)
        spend = Spend(user, now.date())
        quota = self.settings.daily_tokens
        if not quota or await self.usage.used(user, spend.day) < quota:
            return spend
        reset = datetime.combine(spend.day + timedelta(days=1), day_time(), UTC)
        text = (
            f"You have used today's {quota} tokens; the quota resets at 00:00 UTC "
            f"(in {_duration(reset - now)})."
        )
        return ReplyError(message_id, "quota_exceeded", text)

    async def spend(self, spend: Spend, tokens: int) -> None:
        """Count a reply's tokens (prompt plus completion) against its user's day."""
        if self.settings.daily_tokens and tokens > 0:
            await self.usage.add(spend.user, spend.day, tokens)


def _duration(span: timedelta) -> str:
    minutes = max(1, math.ceil(span.total_seconds() / 60))
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


BUSY = "The bot is busy with other replies; send your message again in a moment."


def timed_out(message_id: str, seconds: float) -> ReplyError:
    """The reply ran past ``limits.generation_timeout``."""
    text = f"The reply took longer than {seconds:g} s and was stopped; what was shown is kept."
    return ReplyError(message_id, "timed_out", text)


class DeadlinePassed(Exception):
    """``limits.generation_timeout`` ran out while the model was producing the next piece."""


async def next_before(pieces: AsyncIterator[T], deadline: float | None) -> T | None:
    """The next piece of a backend's stream, None at its end; ``DeadlinePassed`` when the loop
    time ``deadline`` (None: no limit) comes first. Only the wait for the model is timed, and
    a ``TimeoutError`` the backend itself raises passes through unchanged."""
    timer = asyncio.timeout_at(deadline)
    try:
        async with timer:
            return await anext(pieces)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        if timer.expired():
            raise DeadlinePassed from None
        raise
