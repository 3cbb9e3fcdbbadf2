"""Memory in the chat, end to end on the fake backend and the hashing embedder: what the user
says is learned and announced in a ``Notice``, shapes later prompts, and ``/remember``,
``/memories`` and ``/forget`` keep long-term memories; one test on the real MiniLM embedder."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from chatcore.app import App
from chatcore.builtin import memory as memory_plugin
from chatcore.events import Notice, Reply, ReplyError, ReplyEvent
from chatcore.generation.fake import FakeBackend
from chatcore.memory.base import UserKey
from chatcore.memory.service import MAX_MEMORY_CHARS
from tests.conftest import AppFactory, make_settings
from tests.test_engine import collect, msg

USER = UserKey("test", "alice")


async def _turn(app: App, text: str, user: str = "alice") -> list[ReplyEvent]:
    return await collect(app.engine.handle(msg(text, user=user)))


async def _say(app: App, text: str, user: str = "alice") -> str:
    """The reply's text (a command's answer)."""
    finals = [e for e in await _turn(app, text, user) if isinstance(e, Reply | ReplyError)]
    assert len(finals) == 1
    return finals[0].text


def _notices(events: list[ReplyEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, Notice)]


def _recalled(backend: FakeBackend) -> str:
    """The last prompt's new message: recalled memories go with it (older turns may quote
    them: the fake backend echoes its prompt)."""
    return backend.calls[-1].messages[-1].content


@pytest.fixture
async def app(isolated_env: Path, new_app: AppFactory, fake_backend: FakeBackend) -> App:
    app = await new_app(make_settings(isolated_env), backend=fake_backend)
    await app.start()
    return app


async def test_call_me_sam_is_announced_stored_as_learned_and_prompted(
    app: App, fake_backend: FakeBackend
) -> None:
    events = await _turn(app, "call me Sam")
    kinds = [type(e).__name__ for e in events]
    assert kinds[-2:] == ["Reply", "Notice"]  # the notice comes after the reply
    assert _notices(events) == ["noted: I'll call you Sam — say \"don't call me Sam\" to undo."]
    stored = await app.engine.store.get_preferences(USER)
    assert stored["name"].value == "Sam" and stored["name"].source == "learned"
    await _turn(app, "hello")
    assert "The user's name is Sam." in fake_backend.calls[-1].messages[0].content
    # Said again: nothing new, nothing announced.
    assert _notices(await _turn(app, "call me Sam")) == []
    # The phrase the notice gives undoes it.
    assert _notices(await _turn(app, "don't call me Sam")) == [
        "noted: I won't use that name any more."
    ]
    assert "name" not in await app.engine.store.get_preferences(USER)
    await _turn(app, "hello")
    assert "Sam" not in fake_backend.calls[-1].messages[0].content


async def test_an_undo_of_another_value_leaves_the_preference(app: App) -> None:
    await _turn(app, "call me Sam")
    assert _notices(await _turn(app, "don't call me Alex")) == []
    assert (await app.engine.store.get_preferences(USER))["name"].value == "Sam"
    assert _notices(await _turn(app, "stop answering in French")) == []  # nothing to undo


async def test_a_learned_language_shows_in_prefs_and_the_recalled(
    app: App, fake_backend: FakeBackend
) -> None:
    (notice,) = _notices(await _turn(app, "please answer in French"))
    assert notice.startswith("noted: I'll answer in French")
    assert "  language = French (learned)" in await _say(app, "/prefs")
    await _turn(app, "what time is it?")
    assert "Answer in French." in fake_backend.calls[-1].messages[0].content
    # A learned value replaces one the user set, and says so.
    assert await _say(app, "/prefs set length detailed") == "Saved: length = detailed."
    (notice,) = _notices(await _turn(app, "keep it short"))
    assert notice.startswith("noted: I'll keep answers short")
    assert "  length = short (learned)" in await _say(app, "/prefs")


async def test_a_stated_fact_is_remembered_once_named_by_id_and_recalled(
    app: App, fake_backend: FakeBackend
) -> None:
    (notice,) = _notices(await _turn(app, "my dog is called Rex"))
    (memory,) = await app.engine.memories.list(USER)
    assert memory.text == "The user's dog is called Rex."
    assert notice == (
        f"noted: The user's dog is called Rex. — memory {memory.id}; /forget {memory.id} undoes it."
    )
    await _turn(app, "what is my dog called?")
    assert "Rex" in _recalled(fake_backend)
    # The same fact again, in other case and punctuation: stored once, nothing announced.
    assert _notices(await _turn(app, "My dog is called REX!")) == []
    assert len(await app.engine.memories.list(USER)) == 1
    # Another user's memories are their own.
    await _turn(app, "what is my dog called?", user="bob")
    assert "Rex" not in _recalled(fake_backend)


async def test_preferences_and_facts_in_one_message_make_one_notice(app: App) -> None:
    events = await _turn(app, "I'm Sam and I live in Berlin. Please answer in German.")
    (notice,) = _notices(events)
    lines = notice.split("\n")
    assert len(lines) == 3 and all(line.startswith("noted: ") for line in lines)
    assert "I'll call you Sam" in lines[0] and "German" in lines[1]
    assert re.fullmatch(r"noted: The user lives in Berlin\. — memory \d+; /forget \d+ .*", lines[2])


async def test_nothing_learned_gives_no_notice(app: App) -> None:
    events = await _turn(app, "what is the capital of France?")
    assert _notices(events) == [] and isinstance(events[-1], Reply)
    assert await app.engine.memories.list(USER) == []


async def test_learning_off_learns_nothing(
    isolated_env: Path, new_app: AppFactory, fake_backend: FakeBackend
) -> None:
    settings = make_settings(isolated_env, memory={"learn": False})
    app = await new_app(settings, backend=fake_backend)
    await app.start()
    for text in ("call me Sam", "my dog is called Rex", "please answer in French"):
        assert _notices(await _turn(app, text)) == []
    assert await app.engine.store.get_preferences(USER) == {}
    assert await app.engine.memories.list(USER) == []
    # The commands still work: learning is what is off, not memory.
    assert (await _say(app, "/remember my dog is called Rex")).startswith("Remembered as")


async def test_a_failure_in_learning_is_logged_and_the_reply_stands(
    app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(app.engine.memories, "remember", broken)
    with caplog.at_level(logging.ERROR):
        events = await _turn(app, "call me Sam. My dog is called Rex.")
    assert isinstance(events[-2], Reply)
    # The preference was stored and announced; the fact that failed was logged, not shown.
    assert _notices(events) == ["noted: I'll call you Sam — say \"don't call me Sam\" to undo."]
    assert "memory: storing a fact of test:alice" in caplog.text and "disk full" in caplog.text
    # Nothing counted against the plugin: its commands still work.
    assert "name = Sam" in await _say(app, "/prefs")


async def test_a_learn_that_raises_gives_no_notice_and_is_logged(
    app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(text: str) -> None:
        raise RuntimeError("rule bug")

    monkeypatch.setattr(memory_plugin, "learn", broken)
    with caplog.at_level(logging.ERROR):
        events = await _turn(app, "call me Sam")
    assert isinstance(events[-1], Reply) and _notices(events) == []
    assert "memory: learning from message" in caplog.text and "rule bug" in caplog.text


async def test_a_slow_store_goes_on_in_the_background_and_is_announced_without_its_id(
    isolated_env: Path, new_app: AppFactory
) -> None:
    settings = make_settings(isolated_env, plugins={"hook_timeout": 0.4})
    app = await new_app(settings, backend=FakeBackend())
    await app.start()
    memories = app.engine.memories
    remember = memories.remember
    release = asyncio.Event()

    async def slow(user: UserKey, text: str) -> object:  # as an embedder's first load
        await release.wait()
        return await remember(user, text)

    memories.remember = slow  # type: ignore[method-assign]
    events = await _turn(app, "call me Sam. My dog is called Rex.")
    assert _notices(events) == [
        "noted: I'll call you Sam — say \"don't call me Sam\" to undo.\n"
        "noted: The user's dog is called Rex. — being stored; /memories will list it."
    ]
    assert await memories.list(USER) == []
    release.set()
    for _ in range(200):  # bounded: 2 s
        if await memories.list(USER):
            break
        await asyncio.sleep(0.01)
    assert [m.text for m in await memories.list(USER)] == ["The user's dog is called Rex."]
    # One still waiting at shutdown is cancelled: closing is not held up by it.
    release.clear()
    await _turn(app, "I live in Leeds")
    await asyncio.wait_for(app.close(), 10)


# -- the commands ----------------------------------------------------------------------------


async def test_remember_memories_and_forget(app: App, fake_backend: FakeBackend) -> None:
    assert (await _say(app, "/memories")).startswith("No memories yet.")
    answer = await _say(app, "/remember my sister is called Ana")
    (memory,) = await app.engine.memories.list(USER)
    assert answer == f"Remembered as memory {memory.id}; /forget {memory.id} removes it."
    assert memory.text == "my sister is called Ana"
    assert await _say(app, "/remember My sister is called Ana.") == (
        f"I already remember that (memory {memory.id})."
    )
    await _say(app, "/remember the wifi password is on the fridge")
    listing = (await _say(app, "/memories")).split("\n")
    assert listing[0] == "What I remember about you (2; id, date, text):"
    assert re.fullmatch(rf"  {memory.id}  \d{{4}}-\d\d-\d\d  my sister is called Ana", listing[1])
    assert listing[2].endswith("the wifi password is on the fridge")  # newest last
    await _turn(app, "what is my sister called?")
    assert "my sister is called Ana" in _recalled(fake_backend)

    assert await _say(app, f"/forget {memory.id}") == f"Forgot memory {memory.id}."
    assert await _say(app, f"/forget {memory.id}") == (
        f"You have no memory {memory.id}; /memories lists yours."
    )
    await _turn(app, "what is my sister called?")
    assert "my sister is called Ana" not in _recalled(fake_backend)
    assert "my sister" not in await _say(app, "/memories")


async def test_command_errors_say_what_to_do(app: App) -> None:
    assert await _say(app, "/remember") == memory_plugin.REMEMBER_USAGE
    too_long = await _say(app, "/remember " + "x" * (MAX_MEMORY_CHARS + 1))
    assert too_long.startswith(f"Not remembered: a memory is at most {MAX_MEMORY_CHARS}")
    assert await _say(app, "/forget") == memory_plugin.FORGET_USAGE
    assert (await _say(app, "/forget abc")).startswith("'abc' is not a memory id. Usage: /forget")
    assert (await _say(app, "/forget -3")).startswith("'-3' is not a memory id.")
    assert (await _say(app, "/forget ３")).startswith("'３' is not a memory id.")  # not ASCII
    huge = "9" * 30  # more than any database id: not found, not an overflow
    assert (
        await _say(app, f"/forget {huge}") == f"You have no memory {huge}; /memories lists yours."
    )
    await _say(app, "/remember a thing", user="bob")
    (bobs,) = await app.engine.memories.list(UserKey("test", "bob"))
    assert await _say(app, f"/forget #{bobs.id}") == (
        f"You have no memory {bobs.id}; /memories lists yours."
    )  # alice cannot forget bob's
    assert await app.engine.memories.list(UserKey("test", "bob")) == [bobs]


async def test_a_long_memory_list_shows_the_newest_and_counts_the_rest(app: App) -> None:
    total = memory_plugin.MEMORIES_SHOWN + 7
    for i in range(total):
        await app.engine.memories.remember(USER, f"fact number {i} " + "y" * 300)
    lines = (await _say(app, "/memories")).split("\n")
    assert lines[1] == "  … 7 older not shown"
    shown = lines[2:-1]
    assert len(shown) == memory_plugin.MEMORIES_SHOWN
    assert "fact number 7 " in shown[0] and f"fact number {total - 1} " in shown[-1]
    assert all(line.endswith("…") for line in shown)  # long texts cut in the list
    assert lines[-1] == "Remove one with /forget ID."


async def test_help_lists_the_memory_commands(app: App) -> None:
    listing = await _say(app, "/help")
    for name in ("prefs", "remember", "memories", "forget"):
        assert f"  /{name} - " in listing


# -- the real embedder -----------------------------------------------------------------------


@pytest.mark.model
async def test_a_learned_fact_is_recalled_for_a_paraphrased_question_with_minilm(
    isolated_env: Path, new_app: AppFactory
) -> None:
    settings = make_settings(isolated_env, memory={"embedder": "minilm", "min_score": 0.35})
    backend = FakeBackend()
    app = await new_app(settings, backend=backend)
    await app.start()
    texts = ("my dog is called Rex", "I live in Leeds", "I'm allergic to peanuts", "I love jazz")
    for text in texts:
        (notice,) = _notices(await _turn(app, text))
        assert notice.startswith("noted: The user")
    # The first may still be storing in the background while the embedder loads (bounded).
    for _ in range(600):
        if len(await app.engine.memories.list(USER)) == len(texts):
            break
        await asyncio.sleep(0.1)
    assert len(await app.engine.memories.list(USER)) == len(texts)
    await _turn(app, "what's the name of my pet?")
    assert "The user's dog is called Rex." in _recalled(backend)
