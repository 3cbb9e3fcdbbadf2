"""Erasing a user is final: nothing that began before the erase writes about them after it (a
fact stored in the background, a turn in another conversation, a summary being folded), a
``/forget-me`` cut off half way still finishes, plugins that fail to erase are named, and the
erase reaches plugins even when the store knew nothing. docs/memory.md, "Your data"."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from typer.testing import CliRunner

from chatcore import hookimpl
from chatcore.app import App
from chatcore.builtin.memory import ERASING_ON
from chatcore.cli import app as cli
from chatcore.config import GenerationSettings
from chatcore.events import ChatMessage, ConversationKey, Message, Notice, Reply
from chatcore.generation.fake import FakeBackend
from chatcore.generation.types import Chunk
from chatcore.memory.barrier import EraseBarrier, UserErasedError
from chatcore.memory.base import ErasedCounts, Memory, UserKey
from chatcore.memory.inmemory import InMemoryConversationStore
from chatcore.memory.summary import RollingSummaries
from tests.conftest import AppFactory, make_settings
from tests.plugin_fixtures import install_plugin

T = TypeVar("T")


class ShieldedStore(InMemoryConversationStore):
    """The in-memory store with the habit of ``SqlStore``: an operation finishes even when
    its caller is cancelled. ``hold(name)`` makes calls of that method wait for the gate it
    returns; ``reached[name]`` is set when one is waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: dict[str, asyncio.Event] = {}
        self.reached: dict[str, asyncio.Event] = {}

    def hold(self, name: str) -> asyncio.Event:
        self.reached[name] = asyncio.Event()
        gate = self.gates[name] = asyncio.Event()
        return gate

    async def _shielded(self, name: str, work: Awaitable[T]) -> T:
        async def held() -> T:
            if name in self.gates:
                self.reached[name].set()
                await self.gates[name].wait()
            return await work

        return await asyncio.shield(asyncio.ensure_future(held()))

    async def add_memory(
        self, user: UserKey, text: str, embedding: bytes, dim: int | None = None
    ) -> Memory:
        return await self._shielded("add_memory", super().add_memory(user, text, embedding, dim))

    async def erase_user(self, user: UserKey) -> ErasedCounts:
        return await self._shielded("erase_user", super().erase_user(user))


class HeldBackend(FakeBackend):
    """The fake backend; while ``gate`` is clear a reply waits before its first chunk, and
    ``streaming`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.streaming = asyncio.Event()

    async def stream(
        self, messages: Sequence[ChatMessage], options: GenerationSettings
    ) -> AsyncIterator[Chunk]:
        self.streaming.set()
        await self.gate.wait()
        async for chunk in super().stream(messages, options):
            yield chunk


class KeepsNotes:
    """A plugin that keeps something about users: ``user_erased`` records who it erased, or
    raises when ``fails``."""

    def __init__(self, fails: bool = False) -> None:
        self.fails = fails
        self.erased: list[UserKey] = []

    @hookimpl
    def user_erased(self, user: UserKey) -> None:
        if self.fails:
            raise OSError("the notes folder is read-only")
        self.erased.append(user)


async def _events(app: App, text: str, user: str = "sam", channel: str = "dm") -> list[Any]:
    message = Message(text=text, user=user, channel=channel, platform="discord")
    return [event async for event in app.engine.handle(message)]


async def _said(app: App, text: str, user: str = "sam", channel: str = "dm") -> str:
    final = (await _events(app, text, user, channel))[-1]
    assert isinstance(final, Reply), final
    return final.text


async def _confirmed(app: App, channel: str = "dm") -> str:
    """``/forget-me``, then ``/forget-me CODE``: the answer to the second."""
    code = (await _said(app, "/forget-me", channel=channel)).split("/forget-me ")[1].split()[0]
    return await _said(app, f"/forget-me {code}", channel=channel)


async def _until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until ``condition`` holds (at most 10 s)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


DISCORD_SAM = UserKey("discord", "sam")


async def test_a_fact_being_stored_in_the_background_is_not_written_back_after_the_erase(
    isolated_env: Path, new_app: AppFactory
) -> None:
    store = ShieldedStore()
    settings = make_settings(isolated_env, plugins={"hook_timeout": 0.4})
    app = await new_app(settings, backend=FakeBackend(), store=store)
    await app.start()
    gate = store.hold("add_memory")  # a slow write, that commits even when its caller leaves
    events = await _events(app, "My dog is called Rex.")
    assert [e.text for e in events if isinstance(e, Notice)] == [
        "noted: The user's dog is called Rex. — being stored; /memories will list it."
    ]
    await store.reached["add_memory"].wait()
    tracked = list(app.engine.memories._tracked)
    assert len(tracked) == 1

    confirmed = asyncio.ensure_future(_confirmed(app))
    # Before the fix the erase ran past the background store; now it cancels it and waits.
    await _until(lambda: confirmed.done() or tracked[0].cancelling() > 0)
    gate.set()
    assert (await confirmed).startswith("Erased everything stored about you: ")
    await asyncio.wait(tracked)
    assert await store.export_user(DISCORD_SAM) is None
    assert await app.engine.memories.list(DISCORD_SAM) == []


async def test_the_erase_cancels_the_users_background_stores(
    isolated_env: Path, new_app: AppFactory
) -> None:
    settings = make_settings(isolated_env, plugins={"hook_timeout": 0.4})
    app = await new_app(settings, backend=FakeBackend())
    await app.start()
    memories = app.engine.memories
    embedder, loaded = memories.embedder, asyncio.Event()

    class LoadingEmbedder:  # the first load of a real embedder: seconds
        dim = embedder.dim

        async def embed(self, texts: Sequence[str]) -> Any:
            await loaded.wait()
            return await embedder.embed(texts)

    memories._recall.embedder = LoadingEmbedder()
    await _events(app, "My dog is called Rex.")
    await _events(app, "My cat is called Tom.", user="ann")
    assert len(memories._tracked) == 2
    await _confirmed(app)
    assert len(memories._tracked) == 1  # sam's ended; ann's goes on
    loaded.set()
    await asyncio.wait(list(memories._tracked))
    assert await memories.list(DISCORD_SAM) == []
    assert [m.text for m in await memories.list(UserKey("discord", "ann"))] == [
        "The user's cat is called Tom."
    ]


async def test_an_erase_while_a_reply_finished_hook_waits_for_its_facts_is_no_plugin_fault(
    fake_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    memories = fake_app.engine.memories
    embedder, loaded = memories.embedder, asyncio.Event()

    class LoadingEmbedder:
        dim = embedder.dim

        async def embed(self, texts: Sequence[str]) -> Any:
            await loaded.wait()
            return await embedder.embed(texts)

    memories._recall.embedder = LoadingEmbedder()
    other = asyncio.ensure_future(_events(fake_app, "My dog is called Rex.", channel="guild-1"))
    await _until(lambda: len(memories._tracked) == 1)  # the hook waits for the fact's store
    with caplog.at_level(logging.ERROR):
        assert (await _confirmed(fake_app)).startswith("Erased everything stored about you")
        events = await other
    assert [type(e) for e in events][-1] is Reply  # no notice: nothing was stored
    assert caplog.records == []
    assert fake_app.plugins.infos["memory"].hook_errors == 0
    loaded.set()
    assert await fake_app.engine.store.export_user(DISCORD_SAM) is None


async def test_a_turn_in_another_conversation_stores_nothing_after_the_erase(
    isolated_env: Path, new_app: AppFactory
) -> None:
    backend = HeldBackend()
    app = await new_app(make_settings(isolated_env), backend=backend)
    await app.start()
    await _said(app, "hello", channel="dm")
    backend.gate.clear()
    backend.streaming.clear()
    other = asyncio.ensure_future(
        _events(app, "Call me Zed. My dog is called Rex.", channel="guild-1")
    )
    await backend.streaming.wait()  # the other turn read the history and is generating
    reply = await asyncio.wait_for(_confirmed(app, channel="dm"), 10)
    assert reply.startswith("Erased everything stored about you: 2 messages in 1 conversation")
    backend.gate.set()
    events = await other
    assert isinstance(events[-1], Reply) and events[-1].text.startswith("You said: Call me Zed")
    assert [e for e in events if isinstance(e, Notice)] == []  # nothing learned, nothing told
    await app.engine.summaries.wait()
    assert await app.engine.store.export_user(DISCORD_SAM) is None
    assert await _said(app, "hi again", channel="guild-1") == "You said: hi again"
    data = await app.engine.store.export_user(DISCORD_SAM)
    assert data is not None and data["preferences"] == [] and data["memories"] == []
    assert [m["content"] for c in data["conversations"] for m in c["messages"]] == [
        "hi again",
        "You said: hi again",
    ]


async def test_a_turn_that_begins_during_the_erase_waits_for_it(
    isolated_env: Path, new_app: AppFactory
) -> None:
    store = ShieldedStore()
    backend = HeldBackend()
    app = await new_app(make_settings(isolated_env), backend=backend, store=store)
    await app.start()
    await _said(app, "my old secret", channel="guild-1")
    gate = store.hold("erase_user")  # a long VACUUM
    confirmed = asyncio.ensure_future(_confirmed(app))
    await store.reached["erase_user"].wait()
    backend.streaming.clear()
    other = asyncio.ensure_future(_said(app, "what did I say?", channel="guild-1"))
    # Without the barrier the turn reads the old history and generates at once; with it, it
    # waits for the erase (bounded wait: nothing to observe while it rightly waits).
    await asyncio.wait([asyncio.ensure_future(backend.streaming.wait())], timeout=0.3)
    gate.set()
    await confirmed
    assert await other == "You said: what did I say?"
    assert "my old secret" not in str(backend.calls[-1].messages)


async def test_forget_me_cut_off_by_its_time_limit_still_erases_everything(
    isolated_env: Path, new_app: AppFactory
) -> None:
    store = ShieldedStore()
    settings = make_settings(isolated_env, plugins={"command_timeout": 0.2})
    app = await new_app(settings, backend=FakeBackend(), store=store)
    notes = KeepsNotes()
    app.plugins.add_plugin(notes, "notes")
    await app.start()
    await app.engine.memories.remember(DISCORD_SAM, "my locker code is 1234")
    assert await app.engine.memories.recall(DISCORD_SAM, "locker code") != []
    gate = store.hold("erase_user")  # a VACUUM of a large file
    reply = await _confirmed(app)
    assert reply == ERASING_ON  # not "/forget-me took too long"
    assert notes.erased == []
    gate.set()
    await app.close()  # waits for the erase in flight
    assert notes.erased == [DISCORD_SAM]
    assert await store.export_user(DISCORD_SAM) is None
    assert DISCORD_SAM not in app.engine.memories._recall._indexes  # the cache dropped


async def test_forget_me_erases_what_plugins_keep_when_the_store_knows_nothing(
    fake_app: App,
) -> None:
    notes, failing = KeepsNotes(), KeepsNotes(fails=True)
    fake_app.plugins.add_plugin(notes, "notes")
    fake_app.plugins.add_plugin(failing, "broken")
    try:
        reply = await _confirmed(fake_app)
    finally:
        fake_app.plugins.remove_plugin("notes")
        fake_app.plugins.remove_plugin("broken")
    assert notes.erased == [DISCORD_SAM]
    assert reply == (
        "Erased what chatcore stored about you: 0 messages in 0 conversations, 0 memories, "
        "0 preferences. But plugin 'broken' could not erase its data; it was logged, tell the "
        "operator. If you write again, that starts afresh."
    )


def test_memory_forget_erases_what_plugins_keep_and_says_which_failed(
    isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(
        tmp_path,
        monkeypatch,
        "broken-notes",
        """
        from chatcore import hookimpl

        @hookimpl
        def user_erased(user):
            raise OSError("the notes folder is read-only")
        """,
    )
    isolated_env.mkdir(mode=0o700, exist_ok=True)
    history = isolated_env / "terminal_history"
    history.write_text("\n# 2024-01-01\n+my secret\n")
    done = CliRunner().invoke(cli, ["memory", "forget", "--user", "terminal:sam", "--yes"])
    assert done.exit_code == 3, done.output
    assert "holds nothing about them" in done.stdout
    assert "warning: plugins that could not erase their data about terminal:sam" in done.stderr
    assert "'broken-notes'" in done.stderr
    assert "my secret" not in history.read_text()  # the terminal plugin's part still ran


async def test_hooks_get_the_apps_one_services_object(fake_app: App) -> None:
    privacy = fake_app.engine.services.privacy
    assert privacy.services is fake_app.engine.services


async def test_closing_tells_how_many_background_stores_were_lost(
    fake_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    memories = fake_app.engine.memories
    never = asyncio.Event()
    memories.track(asyncio.ensure_future(never.wait()))
    memories.track(asyncio.ensure_future(never.wait()))
    with caplog.at_level(logging.WARNING, "chatcore.memory.service"):
        await memories.close()
    assert "2 background memory stores still running at close were cancelled" in caplog.text
    assert not memories._tracked


async def test_a_summary_fold_that_began_before_the_erase_writes_nothing() -> None:
    store = InMemoryConversationStore()
    barrier = EraseBarrier()
    summaries = RollingSummaries(store, history_limit=2, barrier=barrier)
    folding = asyncio.Event()

    async def summarizer(previous: str, messages: Sequence[ChatMessage]) -> str:
        await folding.wait()
        return "summary of " + " ".join(m.content for m in messages)

    summaries.summarizer = summarizer
    key = ConversationKey("discord", "dm", "sam")

    async def turn() -> None:  # as the engine does: note the generation, store, fold
        await barrier.begin(DISCORD_SAM)
        kept = await store.append(key, [ChatMessage("user", f"q{n}") for n in range(3)])
        summaries.update(key, None, kept, 0)

    await asyncio.ensure_future(turn())
    async with barrier.erasing(DISCORD_SAM):
        await barrier.drain(DISCORD_SAM)
    folding.set()
    await summaries.wait()
    assert await store.get_summary(key) is None


async def test_a_write_cut_off_by_its_caller_ends_before_the_erase_deletes() -> None:
    barrier = EraseBarrier()
    gate, order = asyncio.Event(), []

    async def write() -> str:
        await gate.wait()
        order.append("written")
        return "done"

    writer = asyncio.ensure_future(barrier.write(DISCORD_SAM, write))
    for _ in range(2):  # twice, like a shutdown past its grace
        await asyncio.sleep(0)
        writer.cancel()

    async def erase() -> None:
        async with barrier.erasing(DISCORD_SAM):
            await barrier.drain(DISCORD_SAM)
            order.append("deleted")

    erasing = asyncio.ensure_future(erase())
    await asyncio.sleep(0)
    gate.set()
    await erasing
    assert order == ["written", "deleted"]
    assert writer.cancelled()


async def test_work_noted_before_an_erase_cannot_write_after_it() -> None:
    barrier = EraseBarrier()
    done: list[str] = []

    async def turn() -> None:
        await barrier.begin(DISCORD_SAM)
        async with barrier.erasing(DISCORD_SAM):  # meanwhile, the user erased their data
            pass
        with pytest.raises(UserErasedError):
            await barrier.write(DISCORD_SAM, partial(_append, done, "sam"))
        await barrier.write(UserKey("discord", "ann"), partial(_append, done, "ann"))

    await asyncio.ensure_future(turn())
    await barrier.write(DISCORD_SAM, partial(_append, done, "sam, afresh"))  # work begun later
    assert done == ["ann", "sam, afresh"]


async def _append(to: list[str], item: str) -> None:
    to.append(item)
