"""Limits (``[limits]``): the per-user message rate, the daily token quota, the cap on
generations at once with its bounded queue, and the generation timeout. On the fake backend,
with injected clocks: no test sleeps to wait for a refill or a new day."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from chatcore.config import GenerationSettings, LimitsSettings, Settings
from chatcore.engine import Engine
from chatcore.events import Message, Reply, ReplyChunk, ReplyError, ReplyEvent
from chatcore.generation.fake import FakeBackend
from chatcore.generation.types import ChatMessage, Chunk
from chatcore.limits import GenerationSlots, Limits, RateLimiter
from chatcore.memory.base import UserKey
from chatcore.memory.inmemory import InMemoryConversationStore
from chatcore.memory.sql import SqlStore
from chatcore.memory.usage import MemoryUsage, SqlUsage, usage_ledger
from tests.conftest import make_settings


class Clock:
    """Monotonic seconds that move only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class WallClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def msg(text: str, user: str = "alice", channel: str = "c1") -> Message:
    return Message(text=text, user=user, channel=channel, platform="test")


async def collect(events: AsyncIterator[ReplyEvent]) -> list[ReplyEvent]:
    async with asyncio.timeout(10):  # bounded: a hang fails instead of waiting forever
        return [event async for event in events]


def final(events: Sequence[ReplyEvent]) -> Reply | ReplyError:
    ends = [e for e in events if isinstance(e, Reply | ReplyError)]
    assert len(ends) == 1
    return ends[0]


async def started(
    home: Path,
    backend: FakeBackend,
    clock: Clock | None = None,
    now: WallClock | None = None,
    store: InMemoryConversationStore | SqlStore | None = None,
    **limits: object,
) -> Engine:
    settings = make_settings(home, limits=limits)
    store = store or InMemoryConversationStore()
    ledger = usage_ledger(store)
    made = Limits(
        settings.limits,
        ledger,
        clock=clock or Clock(),
        now=now or WallClock(datetime(2024, 5, 1, 12, tzinfo=UTC)),
    )
    engine = Engine(settings, backend, store, limits=made)
    await engine.start()
    return engine


# -- the message rate ---------------------------------------------------------------------------


async def test_a_burst_of_100_messages_admits_exactly_the_budget_and_another_user_is_unaffected(
    isolated_env: Path,
) -> None:
    backend, clock = FakeBackend(), Clock()
    engine = await started(isolated_env, backend, clock, messages_per_minute=6, burst=5)
    try:
        streams = [engine.handle(msg(f"m{i}")) for i in range(100)]
        ends = [final(await collect(s)) for s in streams]
        assert sum(isinstance(e, Reply) for e in ends) == 5
        refused = [e for e in ends if isinstance(e, ReplyError)]
        assert len(refused) == 95 and {e.code for e in refused} == {"rate_limited"}
        assert all(isinstance(e, Reply) for e in ends[:5])  # the first five, in order
        assert "wait 10 s" in refused[0].text  # 6 a minute: one more every 10 s
        assert len(backend.calls) == 5
        history = await engine.store.history(msg("x").conversation)
        assert [m.content for m in history if m.role == "user"] == [f"m{i}" for i in range(5)]

        other = final(await collect(engine.handle(msg("hello", user="bob"))))
        assert isinstance(other, Reply) and other.text == "You said: hello"

        clock.now += 9.9
        assert final(await collect(engine.handle(msg("early")))).code == "rate_limited"  # type: ignore[union-attr]
        clock.now += 0.2  # 10.1 s since the burst: one message more, not two
        assert isinstance(final(await collect(engine.handle(msg("one more")))), Reply)
        again = final(await collect(engine.handle(msg("too soon"))))
        assert isinstance(again, ReplyError) and again.code == "rate_limited"

        clock.now += 3600  # refilled, but never past the burst
        ends = [final(await collect(engine.handle(msg(f"later {i}")))) for i in range(7)]
        assert [isinstance(e, Reply) for e in ends] == [True] * 5 + [False] * 2
    finally:
        await engine.close()


async def test_the_rate_counts_commands_too_and_off_means_off(isolated_env: Path) -> None:
    backend = FakeBackend()
    engine = await started(isolated_env, backend, messages_per_minute=1, burst=1)
    try:
        first = final(await collect(engine.handle(msg("/nothing-here"))))
        assert isinstance(first, ReplyError) and first.code == "unknown_command"
        second = final(await collect(engine.handle(msg("hi"))))
        assert isinstance(second, ReplyError) and second.code == "rate_limited"
        assert "wait 60 s" in second.text and backend.calls == []
    finally:
        await engine.close()
    engine = await started(isolated_env, FakeBackend(), messages_per_minute=0, burst=1)
    try:
        ends = [final(await collect(engine.handle(msg(f"m{i}")))) for i in range(30)]
        assert all(isinstance(e, Reply) for e in ends)
    finally:
        await engine.close()


def test_the_rate_limiter_forgets_idle_users() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=3, clock=clock)
    for n in range(1000):
        assert limiter.take(UserKey("test", f"user{n}")) == 0.0
    assert limiter.tracked() == 1000
    clock.now += 61  # every bucket is full again, and a sweep is due
    assert limiter.take(UserKey("test", "late")) == 0.0
    assert limiter.tracked() == 1


# -- the daily quota ----------------------------------------------------------------------------


async def test_the_quota_counts_replies_and_refuses_until_the_utc_day_ends(
    isolated_env: Path,
) -> None:
    backend = FakeBackend()
    wall = WallClock(datetime(2024, 5, 1, 21, 30, tzinfo=UTC))
    engine = await started(isolated_env, backend, now=wall, daily_tokens=40)
    user = UserKey("test", "alice")
    try:
        replies: list[Reply] = []
        while True:  # bounded: every reply costs at least a few tokens
            assert len(replies) < 20
            end = final(await collect(engine.handle(msg(f"question {len(replies)}"))))
            if isinstance(end, ReplyError):
                break
            assert isinstance(end, Reply)
            replies.append(end)
        assert end.code == "quota_exceeded"
        assert "40 tokens" in end.text and "00:00 UTC (in 2 h 30 min)" in end.text
        assert len(backend.calls) == len(replies)  # the refusal made no model call
        counted = sum(r.usage.prompt_tokens + r.usage.completion_tokens for r in replies)
        assert await engine.limits.usage.used(user, date(2024, 5, 1)) == counted >= 40

        bob = final(await collect(engine.handle(msg("hi", user="bob"))))
        assert isinstance(bob, Reply)  # his own quota

        wall.now += timedelta(hours=2, minutes=31)  # a new UTC day
        assert isinstance(final(await collect(engine.handle(msg("again")))), Reply)
    finally:
        await engine.close()


async def test_a_cancelled_reply_counts_what_it_used(isolated_env: Path) -> None:
    backend = FakeBackend(delay=0.01)
    backend.enqueue([f" w{i}" for i in range(500)])
    engine = await started(isolated_env, backend, daily_tokens=10_000)
    try:
        events = engine.handle(msg("long one"))
        first = await anext(events)
        assert isinstance(first, ReplyChunk)
        await events.aclose()
        for _ in range(500):  # bounded: 5 s
            used = await engine.limits.usage.used(UserKey("test", "alice"), date(2024, 5, 1))
            if used:
                break
            await asyncio.sleep(0.01)
        assert used > backend.tokenizer.count_tokens([ChatMessage("user", "long one")])
    finally:
        await engine.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'chatcore.db'}"


async def test_the_database_ledger_is_shared_between_stores_and_drops_old_days(
    database: str,
) -> None:
    url = database
    one, two = SqlStore(url), SqlStore(url)
    alice, bob = UserKey("test", "alice"), UserKey("test", "bob")
    day = date(2024, 5, 1)
    try:
        first, second = SqlUsage(one), SqlUsage(two)
        await first.add(alice, day - timedelta(days=3), 7)
        assert await asyncio.gather(first.add(alice, day, 10), second.add(alice, day, 5)) in (
            [10, 15],
            [15, 5],
        )
        assert await second.used(alice, day) == await first.used(alice, day) == 15
        assert await first.used(bob, day) == 0
        assert await first.used(alice, day - timedelta(days=3)) == 0  # over: deleted

        raw = await one.read(_all_usage_text)
        assert "alice" not in raw  # the table names no one
    finally:
        await one.close()
        await two.close()


async def _all_usage_text(session: object) -> str:
    from sqlalchemy import select

    from chatcore.memory.schema import UsageRow

    rows = await session.execute(select(UsageRow))  # type: ignore[attr-defined]
    return repr(list(rows))


async def test_the_memory_ledger_keeps_two_days() -> None:
    ledger = MemoryUsage()
    alice = UserKey("test", "alice")
    day = date(2024, 5, 1)
    assert await ledger.add(alice, day, 3) == 3
    assert await ledger.add(alice, day + timedelta(days=1), 4) == 4
    await ledger.add(alice, day + timedelta(days=2), 1)
    assert await ledger.used(alice, day) == 0
    assert await ledger.used(alice, day + timedelta(days=1)) == 4


async def test_an_engine_on_a_database_counts_in_the_database(isolated_env: Path) -> None:
    store = SqlStore(f"sqlite:///{isolated_env / 'chatcore.db'}")
    engine = await started(isolated_env, FakeBackend(), store=store, daily_tokens=1000)
    try:
        assert isinstance(engine.limits.usage, SqlUsage)
        end = final(await collect(engine.handle(msg("hello"))))
        assert isinstance(end, Reply)
        used = await engine.limits.usage.used(UserKey("test", "alice"), date(2024, 5, 1))
        assert used == end.usage.prompt_tokens + end.usage.completion_tokens > 0
    finally:
        await engine.close()


# -- generations at once ------------------------------------------------------------------------


class GatedBackend(FakeBackend):
    """Holds every generation before its first chunk until ``gate`` opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered: list[str] = []
        """The last user message of each generation, in the order they began."""

    async def stream(  # type: ignore[override]
        self, messages: Sequence[ChatMessage], options: GenerationSettings
    ) -> AsyncIterator[Chunk]:
        self.entered.append(messages[-1].content)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.gate.wait()
        finally:
            self.active -= 1
        async for chunk in super().stream(messages, options):
            yield chunk


async def test_the_cap_runs_n_queues_m_refuses_the_rest_and_serves_the_queue_in_order(
    isolated_env: Path,
) -> None:
    backend = GatedBackend()
    engine = await started(isolated_env, backend, max_generations=2, max_queued=2)
    try:
        streams = []
        for i in range(4):  # one at a time, so the order they reach the slots is known
            streams.append(engine.handle(msg(f"m{i}", user=f"u{i}")))
            for _ in range(500):  # bounded: 5 s
                if backend.active + engine.limits.slots.waiting() == i + 1:
                    break
                await asyncio.sleep(0.01)
        assert backend.active == 2 and engine.limits.slots.waiting() == 2
        streams += [engine.handle(msg(f"m{i}", user=f"u{i}")) for i in (4, 5)]
        refused = [final(await collect(s)) for s in streams[4:]]  # at once: the gate is shut
        assert [e.code for e in refused if isinstance(e, ReplyError)] == ["busy", "busy"]
        assert "send your message again" in refused[0].text
        backend.gate.set()
        ends = [final(await collect(s)) for s in streams[:4]]
        assert [e.text for e in ends] == [f"You said: m{i}" for i in range(4)]
        assert backend.entered == ["m0", "m1", "m2", "m3"]  # the queue, first come first served
        assert backend.max_active == 2
        assert engine.limits.slots.active == 0 and engine.limits.slots.waiting() == 0
        history = await engine.store.history(msg("x", user="u4").conversation)
        assert history == []  # a refused message is not stored: send it again
    finally:
        await engine.close()


async def test_a_waiter_that_leaves_gives_its_place_to_the_next() -> None:
    slots = GenerationSlots(limit=1, queued=2)
    assert await slots.acquire()
    second = asyncio.ensure_future(slots.acquire())
    third = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    assert slots.waiting() == 2 and not await slots.acquire()  # the line is full
    second.cancel()
    await asyncio.sleep(0)
    slots.release()
    assert await asyncio.wait_for(third, 5)
    assert slots.active == 1 and slots.waiting() == 0
    slots.release()
    assert slots.active == 0


async def test_a_slot_handed_to_a_leaving_waiter_passes_on() -> None:
    slots = GenerationSlots(limit=1, queued=2)
    assert await slots.acquire()
    second = asyncio.ensure_future(slots.acquire())
    third = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    slots.release()  # handed to the second ...
    second.cancel()  # ... which leaves before it runs
    assert await asyncio.wait_for(third, 5)
    with pytest.raises(asyncio.CancelledError):
        await second
    assert slots.active == 1


# -- the generation timeout ---------------------------------------------------------------------


async def test_the_timeout_ends_a_slow_reply_keeping_what_was_shown(isolated_env: Path) -> None:
    backend = FakeBackend(delay=0.02)
    backend.enqueue([f" w{i}" for i in range(1000)])  # 20 s: far past the timeout
    engine = await started(isolated_env, backend, generation_timeout=0.3, daily_tokens=100_000)
    try:
        events = await collect(engine.handle(msg("tell me everything")))
        end = final(events)
        assert isinstance(end, ReplyError) and end.code == "timed_out"
        assert "0.3 s" in end.text and "what was shown is kept" in end.text
        shown = "".join(e.text for e in events if isinstance(e, ReplyChunk))
        assert 0 < len(shown.split()) < 1000
        history = await engine.store.history(msg("x").conversation)
        assert [m.content for m in history] == ["tell me everything", shown]
        assert backend.active == 0  # the backend stream was closed
        used = await engine.limits.usage.used(UserKey("test", "alice"), date(2024, 5, 1))
        assert used >= len(shown.split())
        backend.delay = 0.0  # the next reply is not held up by the last one
        assert isinstance(final(await collect(engine.handle(msg("short")))), Reply)
    finally:
        await engine.close()


def test_the_limits_section_loads(isolated_env: Path) -> None:
    settings = make_settings(isolated_env, limits={"messages_per_minute": 12, "daily_tokens": 5})
    assert settings.limits == LimitsSettings(messages_per_minute=12, daily_tokens=5)
    assert Settings().limits.generation_timeout == 300.0
