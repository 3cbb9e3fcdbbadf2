"""Rolling summaries of old turns: folded in the background when turns fall out of the prompt,
kept in the prompt instead of the turns they cover, capped, and never in a reply's way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from chatcore.app import App
from chatcore.context import ContextBuilder, Sections
from chatcore.events import ChatMessage, ConversationKey, Message, Reply, ReplyEvent
from chatcore.generation.fake import FakeBackend, WordTokenizer
from chatcore.memory.base import ConversationStore, Summary
from chatcore.memory.inmemory import InMemoryConversationStore
from chatcore.memory.sql import SqlStore
from chatcore.memory.summary import HEADING, fold, gist, uncovered
from tests.conftest import AppFactory, make_settings

WINDOW = 300
"""With 20 tokens kept for the reply: a 280-token budget, a 42-token summary cap, and about 18
turns of "message number N" in the prompt."""


def msg(text: str) -> Message:
    return Message(text=text, user="alice", channel="c1", platform="test")


KEY = msg("").conversation


async def collect(events: AsyncIterator[ReplyEvent]) -> list[ReplyEvent]:
    return [event async for event in events]


def words(text: str) -> int:
    """Tokens of ``text`` for the fake tokenizer."""
    return len(text.split())


async def chat_app(
    home: Path, new_app: AppFactory, store: ConversationStore | None = None, **memory: object
) -> tuple[App, FakeBackend]:
    settings = make_settings(home, generation={"max_new_tokens": 20}, memory=memory)
    backend = FakeBackend(context_window=WINDOW)
    if store is None:
        store = InMemoryConversationStore(limit=settings.context.history_limit)
    app = await new_app(settings, backend=backend, store=store)
    await app.start()
    return app, backend


async def chat_until_a_summary_blocks(app: App) -> Blocking:
    """Chat until old turns are summarised by a summarizer that blocks until released
    (bounded: at most 40 turns)."""
    blocking = Blocking()
    app.engine.summaries.summarizer = blocking
    for turn in range(40):
        await collect(app.engine.handle(msg(f"message number {turn}")))
        if blocking.started.is_set():
            return blocking
    raise AssertionError("no summary began within 40 turns")


async def say(app: App, text: str) -> Reply:
    """Send ``text``, and return the reply once the summaries it started are stored."""
    events = await collect(app.engine.handle(msg(text)))
    await app.engine.summaries.wait()
    reply = events[-1]
    assert isinstance(reply, Reply), reply
    return reply


def covered(history: Sequence[ChatMessage], summary: Summary) -> list[str]:
    """The texts of the stored messages the summary covers."""
    position = [m.id for m in history].index(summary.through)
    return [m.content for m in history[: position + 1]]


class Blocking:
    """A summarizer that waits until released; records whether it was cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0
        self.cancelled = False

    async def __call__(self, previous: str, messages: Sequence[ChatMessage]) -> str:
        self.calls += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return f"folded {len(messages)}"


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ConversationStore:
    """The store the app runs on (the app closes it)."""
    if request.param == "memory":
        return InMemoryConversationStore()
    return SqlStore(f"sqlite:///{tmp_path / 'chat.db'}")


async def test_old_turns_are_summarised_and_the_summary_replaces_them_in_the_prompt(
    isolated_env: Path, new_app: AppFactory, store: ConversationStore
) -> None:
    app, backend = await chat_app(isolated_env, new_app, store)
    turn = 0
    while await store.get_summary(KEY) is None:
        assert turn < 40, "no summary after 40 turns"
        await say(app, f"message number {turn}")
        turn += 1
    assert backend.calls[-1].messages[1].content != "message number 0"  # turns fell out first
    summary = await store.get_summary(KEY)
    assert summary is not None and summary.text.startswith(HEADING)
    assert "- The user: message number 0" in summary.text
    assert summary.through is not None

    await say(app, "and now?")
    prompt = backend.calls[-1].messages
    assert summary.text in prompt[0].content
    assert prompt[0].content.startswith("You are a helpful AI assistant.")
    history = await store.history(KEY)
    shown = [m.content for m in prompt[1:-1]]
    assert not set(covered(history, summary)) & set(shown)  # what it covers is not repeated
    assert backend.tokenizer.count_tokens(prompt) <= WINDOW - 20


async def test_the_prompt_holds_the_summary_and_only_the_messages_after_it(
    isolated_env: Path, new_app: AppFactory, store: ConversationStore
) -> None:
    app, backend = await chat_app(isolated_env, new_app, store)
    for turn in range(3):
        await say(app, f"message number {turn}")
    history = await store.history(KEY)
    await store.set_summary(KEY, f"{HEADING}\n- The user: message number 0", history[1].id)
    await say(app, "next")
    prompt = backend.calls[-1].messages
    assert prompt[0].content.endswith(f"{HEADING}\n- The user: message number 0")
    assert prompt[1:] == [*history[2:], ChatMessage("user", "next")]


async def test_the_summary_rolls_forward_within_its_cap(
    isolated_env: Path, new_app: AppFactory, store: ConversationStore
) -> None:
    app, backend = await chat_app(isolated_env, new_app, store)
    cap = app.engine.context.summary_cap
    throughs: list[int] = []
    for turn in range(60):
        await say(app, f"message number {turn}")
        summary = await store.get_summary(KEY)
        if summary is not None:
            history = await store.history(KEY)
            throughs.append(len(covered(history, summary)))
            assert app.engine.context.text_cost(summary.text) <= cap
            first_shown = backend.calls[-1].messages[1].content
            assert first_shown not in covered(history, summary)[:-2]
    assert throughs == sorted(throughs) and throughs[-1] > throughs[0] + 40
    final = await store.get_summary(KEY)
    assert final is not None
    assert "message number 0" not in final.text  # rolled out, the oldest first
    newest = covered(await store.history(KEY), final)
    assert gist(newest[-2]) in final.text  # the newest user message it covers is kept


async def test_a_reply_never_waits_for_a_summary(isolated_env: Path, new_app: AppFactory) -> None:
    app, _ = await chat_app(isolated_env, new_app)
    blocking = await chat_until_a_summary_blocks(app)
    for more in range(3):  # replies go on while the summary is stuck
        # Bounded, so that a reply that waits for the summary fails instead of hanging.
        events = await asyncio.wait_for(collect(app.engine.handle(msg(f"more {more}"))), 30)
        assert isinstance(events[-1], Reply)
    assert blocking.calls == 1  # one fold at a time per conversation
    blocking.release.set()
    await app.engine.summaries.wait()
    summary = await app.engine.store.get_summary(KEY)
    assert summary is not None and summary.text.startswith("folded ")


async def test_stop_cancels_a_summary_in_flight(isolated_env: Path, new_app: AppFactory) -> None:
    app, _ = await chat_app(isolated_env, new_app)
    blocking = await chat_until_a_summary_blocks(app)
    await asyncio.wait_for(app.close(), 30)
    assert blocking.cancelled


async def test_a_failing_summary_is_logged_and_replies_go_on(
    isolated_env: Path, new_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = await chat_app(isolated_env, new_app)
    calls = 0

    async def failing(previous: str, messages: Sequence[ChatMessage]) -> str:
        nonlocal calls
        calls += 1
        raise RuntimeError("no summary today")

    app.engine.summaries.summarizer = failing
    for turn in range(30):
        await say(app, f"message number {turn}")
    assert calls > 1  # tried again after the failure
    assert "summarising old turns" in caplog.text and "no summary today" in caplog.text
    assert await app.engine.store.get_summary(KEY) is None


async def test_summaries_off_means_none(isolated_env: Path, new_app: AppFactory) -> None:
    app, backend = await chat_app(isolated_env, new_app, summaries=False)
    for turn in range(30):
        await say(app, f"message number {turn}")
    assert await app.engine.store.get_summary(KEY) is None
    assert all(HEADING not in call.messages[0].content for call in backend.calls)


async def test_reset_starts_without_a_summary(isolated_env: Path, new_app: AppFactory) -> None:
    app, backend = await chat_app(isolated_env, new_app)
    for turn in range(30):
        await say(app, f"message number {turn}")
    assert await app.engine.store.get_summary(KEY) is not None
    await collect(app.engine.handle(msg("/reset")))
    assert await app.engine.store.get_summary(KEY) is None
    await say(app, "hello again")
    assert HEADING not in backend.calls[-1].messages[0].content


async def test_a_summary_made_before_a_reset_is_not_kept(
    isolated_env: Path, new_app: AppFactory
) -> None:
    app, _ = await chat_app(isolated_env, new_app)
    blocking = await chat_until_a_summary_blocks(app)
    await collect(app.engine.handle(msg("/reset")))
    await collect(app.engine.handle(msg("a new start")))
    blocking.release.set()
    await app.engine.summaries.wait()
    assert await app.engine.store.get_summary(KEY) is None


class ResetBeforeWrite(SqlStore):
    """A SQLite store on which ``interleave`` runs once, just before a fold writes its summary:
    after whatever the fold checked beforehand, as if another task or process got in there."""

    interleave: Callable[[], Awaitable[None]] | None = None

    async def _before_write(self) -> None:
        interleave, self.interleave = self.interleave, None
        if interleave is not None:
            await interleave()

    async def set_summary(self, key: ConversationKey, text: str, through: str | None) -> None:
        await self._before_write()
        await super().set_summary(key, text, through)

    async def replace_summary(
        self,
        key: ConversationKey,
        text: str,
        through: str | None,
        *,
        previous: Summary | None,
        newest: str,
    ) -> bool:
        await self._before_write()
        return await super().replace_summary(key, text, through, previous=previous, newest=newest)


async def test_a_reset_just_before_the_summary_is_written_keeps_it_off_the_new_conversation(
    isolated_env: Path, new_app: AppFactory, tmp_path: Path
) -> None:
    store = ResetBeforeWrite(f"sqlite:///{tmp_path / 'chat.db'}")
    app, _ = await chat_app(isolated_env, new_app, store)
    interleaved: list[ReplyEvent] = []

    async def reset_and_start_again() -> None:
        interleaved.extend(await collect(app.engine.handle(msg("/reset"))))
        interleaved.extend(await collect(app.engine.handle(msg("a new start"))))

    store.interleave = reset_and_start_again
    for turn in range(40):
        await say(app, f"message number {turn}")
        if store.interleave is None:
            break
    assert store.interleave is None, "no summary was written in 40 turns"
    assert isinstance(interleaved[-1], Reply)
    history = await store.history(KEY)
    assert history[0].content == "a new start" and len(history) == 2
    assert await store.get_summary(KEY) is None


async def test_messages_past_the_history_limit_are_summarised_too(
    isolated_env: Path, new_app: AppFactory, store: ConversationStore
) -> None:
    settings = make_settings(isolated_env, context={"history_limit": 6})
    await store.close()  # replaced: the app closes only the store it runs on
    if isinstance(store, SqlStore):
        store = SqlStore(store.url.render_as_string(hide_password=False), history_limit=6)
    else:
        store = InMemoryConversationStore(limit=6)
    backend = FakeBackend()  # a wide window: no turn falls out of the prompt
    app = await new_app(settings, backend=backend, store=store)
    await app.start()
    for turn in range(5):
        await say(app, f"message number {turn}")
    summary = await store.get_summary(KEY)
    assert summary is not None and "- The user: message number 1" in summary.text
    await say(app, "next")
    system = backend.calls[-1].messages[0].content
    assert "message number 0" in system and "message number 1" in system


# -- the pieces ----------------------------------------------------------------------------------


def test_a_gist_is_the_first_sentence_cut_to_its_words() -> None:
    assert gist("How do I  bake\nbread? I have flour.") == "How do I bake bread?"
    assert gist("word " * 50, words=5) == "word word word word word …"
    assert gist("   ") == ""


def test_fold_drops_old_replies_first_then_old_lines_and_keeps_the_cap() -> None:
    said = [
        ChatMessage(role, f"{role} says {n} " + "and more " * 3)
        for n in range(6)
        for role in ("user", "assistant")
    ]
    text = fold("", said, cap=1000, cost=words)
    assert text.splitlines()[0] == HEADING and len(text.splitlines()) == 13

    # A user line is 12 words, a reply 11: the two oldest replies make room first.
    lines = fold("", said, cap=140, cost=words).splitlines()[1:]
    assert len(lines) == 10 and lines[0].startswith("- The user: user says 0")
    assert not any("assistant says 0" in line or "assistant says 1" in line for line in lines)
    assert lines[-1].startswith("- You: assistant says 5")

    small = fold("", said, cap=60, cost=words)  # only what the user asked, the newest
    assert words(small) <= 60
    lines = small.splitlines()[1:]
    assert [line.split()[5] for line in lines] == ["2", "3", "4", "5"]
    assert all(line.startswith("- The user:") for line in lines)

    rolled = fold(small, [ChatMessage("user", "a new question")], cap=60, cost=words)
    assert rolled.splitlines()[-1] == "- The user: a new question" and words(rolled) <= 60
    assert fold("", said, cap=3, cost=words) == ""  # not even one line fits


def test_uncovered_is_what_comes_after_the_covered_message() -> None:
    history = [ChatMessage("user", str(n), id=str(n)) for n in range(5)]
    assert uncovered(history, None) == history
    assert uncovered(history, Summary("s", "2")) == history[3:]
    assert uncovered(history, Summary("s", "99")) == history  # older than the history held


def test_an_oversized_summary_loses_its_oldest_lines_in_the_prompt() -> None:
    builder = ContextBuilder(WordTokenizer(400), reserve=100, summary_share=0.1)  # 30 tokens
    lines = [f"- The user: question {n} about something" for n in range(20)]
    summary = "\n".join([HEADING, *lines])
    prompt = builder.build(Sections("be nice", summary=summary), [], "hi")
    system = prompt.messages[0].content
    assert system.startswith(f"be nice\n\n{HEADING}\n")
    assert "question 19" in system and "question 0 " not in system
    assert words(system) - words("be nice") <= 30
    tight = ContextBuilder(WordTokenizer(40), reserve=10)  # no room beside the message
    kept = tight.build(Sections("be nice", summary=summary), [], "word " * 15)
    assert kept.messages[0].content == "be nice"
