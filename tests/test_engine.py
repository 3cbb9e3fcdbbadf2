"""The engine on the fake backend: streaming, history, commands, errors, ordering within a
conversation and concurrency across conversations, cancellation, hooks."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from chatcore import hookimpl
from chatcore.app import App
from chatcore.engine import Engine, EngineNotStartedError
from chatcore.events import Message, Notice, Reply, ReplyChunk, ReplyError, ReplyEvent
from chatcore.generation.fake import FakeBackend
from chatcore.generation.types import ChatMessage, GenerationError
from chatcore.memory.base import UserKey
from chatcore.memory.inmemory import InMemoryConversationStore
from tests.conftest import AppFactory, make_settings


def msg(text: str, user: str = "alice", channel: str = "c1") -> Message:
    return Message(text=text, user=user, channel=channel, platform="test")


async def collect(events: AsyncIterator[ReplyEvent]) -> list[ReplyEvent]:
    return [event async for event in events]


async def test_reply_streams_chunks_then_a_final_reply(
    fake_app: App, fake_backend: FakeBackend
) -> None:
    fake_backend.enqueue(["Hel", "lo", " there"])
    message = msg("hi")
    events = await collect(fake_app.engine.handle(message))
    assert [e.text for e in events if isinstance(e, ReplyChunk)] == ["Hel", "lo", " there"]
    assert [e.index for e in events if isinstance(e, ReplyChunk)] == [0, 1, 2]
    final = events[-1]
    assert isinstance(final, Reply)
    assert final.text == "Hello there" and final.streamed and final.finish_reason == "stop"
    assert final.message_id == message.id
    assert final.usage.completion_tokens == 3


async def test_history_is_kept_per_conversation(fake_app: App, fake_backend: FakeBackend) -> None:
    engine = fake_app.engine
    await collect(engine.handle(msg("first")))
    await collect(engine.handle(msg("other user", user="bob")))
    await collect(engine.handle(msg("second")))
    prompt = fake_backend.calls[-1].messages
    assert prompt == [
        ChatMessage("system", "You are a helpful AI assistant."),
        ChatMessage("user", "first"),
        ChatMessage("assistant", "You said: first"),
        ChatMessage("user", "second"),
    ]


async def test_generation_options_come_from_settings(
    isolated_env: Path, new_app: AppFactory
) -> None:
    settings = make_settings(isolated_env, generation={"max_new_tokens": 2, "stop": ["STOP"]})
    backend = FakeBackend()
    app = await new_app(settings, backend=backend)
    await app.start()
    backend.enqueue(["a", "b", "c", "d"])
    events = await collect(app.engine.handle(msg("x")))
    final = events[-1]
    assert isinstance(final, Reply)
    assert final.text == "ab" and final.finish_reason == "length"
    backend.enqueue(["aST", "OP", "c"])
    final = (await collect(app.engine.handle(msg("y"))))[-1]
    assert isinstance(final, Reply)
    assert final.text == "a" and final.finish_reason == "stop"
    await app.close()


async def test_too_long_message_is_refused_without_calling_the_model(
    isolated_env: Path, new_app: AppFactory
) -> None:
    backend = FakeBackend(context_window=100)
    settings = make_settings(isolated_env, generation={"max_new_tokens": 20})
    app = await new_app(settings, backend=backend)
    await app.start()
    events = await collect(app.engine.handle(msg("word " * 500)))
    assert len(events) == 1
    error = events[0]
    assert isinstance(error, ReplyError) and error.code == "message_too_long"
    assert "at most 80 fit" in error.text
    assert backend.calls == []
    assert await app.engine.store.history(msg("").conversation) == []
    await app.close()


async def test_old_turns_are_dropped_to_fit(isolated_env: Path, new_app: AppFactory) -> None:
    backend = FakeBackend(context_window=80)
    settings = make_settings(isolated_env, generation={"max_new_tokens": 10})
    app = await new_app(settings, backend=backend)
    await app.start()
    for i in range(10):
        await collect(app.engine.handle(msg(f"message number {i}")))
    prompt = backend.calls[-1].messages
    assert backend.tokenizer.count_tokens(prompt) <= 70
    assert prompt[0].role == "system" and prompt[-1].content == "message number 9"
    assert prompt[1].role == "user" and len(prompt) < 21
    await app.close()


async def test_commands(fake_app: App, fake_backend: FakeBackend) -> None:
    engine = fake_app.engine
    await collect(engine.handle(msg("remember me")))
    (help_reply,) = await collect(engine.handle(msg("/help")))
    assert isinstance(help_reply, Reply) and "/reset" in help_reply.text
    assert not help_reply.streamed
    (reset,) = await collect(engine.handle(msg("/reset")))
    assert isinstance(reset, Reply) and "previous one (2 messages)" in reset.text
    assert await engine.store.history(msg("").conversation) == []
    (unknown,) = await collect(engine.handle(msg("/frobnicate now")))
    assert isinstance(unknown, ReplyError) and unknown.code == "unknown_command"
    assert "/frobnicate" in unknown.text and "/help" in unknown.text
    assert len(fake_backend.calls) == 1  # commands never reach the model


async def test_a_failing_command_is_contained(
    fake_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    from chatcore.commands import Command

    class Broken:
        @hookimpl
        def register_commands(self, register: Any) -> None:
            register(Command("crash", "always fails", self.crash))

        def crash(self, context: object) -> str:
            raise RuntimeError("kaput")

    fake_app.plugins.add_plugin(Broken(), "broken")
    try:
        await fake_app.plugins.collect("broken")
        (error,) = await collect(fake_app.engine.handle(msg("/crash")))
        assert isinstance(error, ReplyError) and error.code == "command_failed"
        # The user gets a reference, never the exception text; the log has both.
        assert "kaput" not in error.text
        reference = error.text.split("(ref ")[1].split(")")[0]
        assert any(
            reference in r.message and "kaput" in r.message and "'broken'" in r.message
            for r in caplog.records
        )
    finally:
        fake_app.plugins.remove_plugin("broken")


async def test_backend_error_is_reported_and_the_user_message_kept(
    fake_app: App, fake_backend: FakeBackend
) -> None:
    fake_backend.enqueue(["partial", GenerationError("the model server went away")])
    events = await collect(fake_app.engine.handle(msg("hello")))
    assert isinstance(events[0], ReplyChunk)
    error = events[-1]
    assert isinstance(error, ReplyError) and error.code == "backend_error"
    assert re.fullmatch(
        r"The model could not answer \(ref [0-9a-f]{8}\); it was logged\.", error.text
    )
    history = await fake_app.engine.store.history(msg("").conversation)
    assert history == [ChatMessage("user", "hello"), ChatMessage("assistant", "partial")]


async def test_unexpected_error_becomes_an_internal_error_event(
    fake_app: App, fake_backend: FakeBackend
) -> None:
    fake_backend.enqueue([ZeroDivisionError("oops")])
    (error,) = await collect(fake_app.engine.handle(msg("hello")))
    assert isinstance(error, ReplyError) and error.code == "internal_error"
    (ok,) = [e for e in await collect(fake_app.engine.handle(msg("again"))) if isinstance(e, Reply)]
    assert ok.text == "You said: again"


async def test_messages_of_one_conversation_are_handled_in_arrival_order(
    isolated_env: Path, new_app: AppFactory
) -> None:
    backend = FakeBackend(delay=0.01)
    app = await new_app(make_settings(isolated_env), backend=backend)
    await app.start()
    streams = [app.engine.handle(msg(f"m{i}")) for i in range(4)]
    # consume in reverse: handling order must still be arrival order
    results = [await collect(s) for s in reversed(streams)]
    assert all(isinstance(r[-1], Reply) for r in results)
    assert [c.messages[-1].content for c in backend.calls] == ["m0", "m1", "m2", "m3"]
    # each prompt saw the complete previous turn
    assert backend.calls[3].messages[-2] == ChatMessage("assistant", "You said: m2")
    assert backend.max_active == 1
    await app.close()


async def test_different_conversations_run_concurrently(
    isolated_env: Path, new_app: AppFactory
) -> None:
    backend = FakeBackend(delay=0.02)
    app = await new_app(make_settings(isolated_env), backend=backend)
    await app.start()
    users = ["a", "b", "c"]
    results = await asyncio.gather(*(collect(app.engine.handle(msg("hi", user=u))) for u in users))
    assert backend.max_active == 3
    assert all(isinstance(r[-1], Reply) for r in results)
    await app.close()


async def test_closing_the_stream_stops_generation_and_keeps_the_partial_reply(
    isolated_env: Path, new_app: AppFactory
) -> None:
    backend = FakeBackend(delay=0.01)
    app = await new_app(make_settings(isolated_env), backend=backend)
    await app.start()
    backend.enqueue(["one", " two", " three", " four", " five"])
    events = app.engine.handle(msg("count"))
    first = await anext(events)
    assert isinstance(first, ReplyChunk) and first.text == "one"
    await events.aclose()
    # the next message of the conversation waits for the cancelled one to be stored
    final = (await collect(app.engine.handle(msg("next"))))[-1]
    assert isinstance(final, Reply)
    history = await app.engine.store.history(msg("").conversation)
    assert history[0] == ChatMessage("user", "count")
    assert history[1].role == "assistant" and history[1].content.startswith("one")
    assert "five" not in history[1].content
    assert backend.active == 0
    await app.close()


async def test_cancelling_the_consumer_task_stops_the_reply(
    isolated_env: Path, new_app: AppFactory
) -> None:
    backend = FakeBackend(delay=0.05)
    app = await new_app(make_settings(isolated_env), backend=backend)
    await app.start()
    backend.enqueue(["w"] * 100)
    consumer = asyncio.create_task(collect(app.engine.handle(msg("long"))))
    await asyncio.sleep(0.12)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    final = (await collect(app.engine.handle(msg("after"))))[-1]
    assert isinstance(final, Reply) and final.text == "You said: after"
    assert backend.active == 0
    await app.close()


async def test_hooks_see_messages_and_replies_and_extend_the_system_prompt(
    fake_app: App, fake_backend: FakeBackend
) -> None:
    seen: list[str] = []

    class Observer:
        @hookimpl
        async def message_received(self, message: Message) -> None:
            seen.append(f"in:{message.text}")

        @hookimpl
        def extend_system_prompt(self, message: Message) -> str:
            return f"The user is {message.user}."

        @hookimpl
        def reply_finished(self, message: Message, reply: Reply) -> None:
            seen.append(f"out:{reply.text}")
            raise RuntimeError("a broken observer must not break the reply")

    fake_app.plugins.add_plugin(Observer(), "observer")
    try:
        events = await collect(fake_app.engine.handle(msg("hey")))
        assert isinstance(events[-1], Reply)
        await collect(fake_app.engine.handle(msg("/help")))
    finally:
        fake_app.plugins.remove_plugin("observer")
    assert seen == ["in:hey", "out:You said: hey", "in:/help"]
    system = fake_backend.calls[0].messages[0]
    assert system == ChatMessage("system", "You are a helpful AI assistant.\n\nThe user is alice.")


async def test_handle_before_start_is_a_clear_error(isolated_env: Path) -> None:
    engine = Engine(make_settings(isolated_env), FakeBackend(), InMemoryConversationStore())
    with pytest.raises(EngineNotStartedError, match="start"):
        engine.handle(msg("hi"))


async def test_history_limit_bounds_memory(isolated_env: Path, new_app: AppFactory) -> None:
    app = await new_app(
        make_settings(isolated_env, context={"history_limit": 4}), backend=FakeBackend()
    )
    await app.start()
    for i in range(5):
        await collect(app.engine.handle(msg(f"m{i}")))
    history = await app.engine.store.history(msg("").conversation)
    assert [m.content for m in history] == ["m3", "You said: m3", "m4", "You said: m4"]
    await app.close()


async def test_close_stops_queued_messages_and_ends_every_stream(
    isolated_env: Path, new_app: AppFactory
) -> None:
    backend = FakeBackend(delay=0.02)
    app = await new_app(make_settings(isolated_env), backend=backend)
    await app.start()
    backend.enqueue(["w"] * 100)
    streams = [app.engine.handle(msg(f"m{i}")) for i in range(3)]
    first = await anext(streams[0])
    assert isinstance(first, ReplyChunk)
    await asyncio.wait_for(app.close(), 10)
    assert len(backend.calls) == 1  # the queued messages never reached the model
    for stream in streams:
        events = await asyncio.wait_for(collect(stream), 10)
        assert isinstance(events[-1], ReplyError) and events[-1].code == "cancelled"
        assert "shutting down" in events[-1].text
    # After the stop a message is answered at once, never queued or sent to the model.
    (late,) = await collect(app.engine.handle(msg("too late")))
    assert isinstance(late, ReplyError) and late.code == "cancelled"
    assert "shutting down" in late.text and len(backend.calls) == 1


async def test_close_right_after_handle_still_ends_the_stream(
    isolated_env: Path, new_app: AppFactory
) -> None:
    app = await new_app(make_settings(isolated_env), backend=FakeBackend())
    await app.start()
    stream = app.engine.handle(msg("hi"))
    await app.close()
    events = await asyncio.wait_for(collect(stream), 10)
    assert len(events) == 1
    assert isinstance(events[0], ReplyError) and events[0].code == "cancelled"


async def test_after_reply_hooks_finish_when_the_reader_stops_at_the_reply(
    fake_app: App,
) -> None:
    finished: list[str] = []

    class Learner:
        @hookimpl
        async def reply_finished(self, message: Message, reply: Reply) -> None:
            await asyncio.sleep(0.05)
            finished.append(reply.text)

    fake_app.plugins.add_plugin(Learner(), "learner")
    try:
        async with aclosing(fake_app.engine.handle(msg("teach me"))) as events:
            async for event in events:
                if isinstance(event, Reply):
                    break
        # the next message of the conversation waits for the hooks of the previous one
        await collect(fake_app.engine.handle(msg("next")))
    finally:
        fake_app.plugins.remove_plugin("learner")
    assert finished[0] == "You said: teach me"


async def test_a_stream_without_finish_chunk_counts_as_stopped(
    isolated_env: Path, new_app: AppFactory
) -> None:
    class Minimal(FakeBackend):
        async def stream(self, messages: Any, options: Any) -> AsyncIterator[Any]:
            async for chunk in super().stream(messages, options):
                if chunk.finish_reason is None:
                    yield chunk

    app = await new_app(make_settings(isolated_env), backend=Minimal())
    await app.start()
    final = (await collect(app.engine.handle(msg("hi"))))[-1]
    assert isinstance(final, Reply) and final.finish_reason == "stop"
    await app.close()


async def test_each_message_is_one_log_line_with_its_conversation_and_id(
    fake_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatcore.engine")
    first, second = msg("hello"), msg("/nope")
    await collect(fake_app.engine.handle(first))
    await collect(fake_app.engine.handle(second))
    lines = [r.getMessage() for r in caplog.records if r.name == "chatcore.engine"]
    assert lines == [
        f"message {first.id} in test:c1:alice: replied (stop, 3 tokens)",
        f"message {second.id} in test:c1:alice: error unknown_command",
    ]


async def test_a_stream_closed_before_its_first_event_stops_the_reply(
    isolated_env: Path, new_app: AppFactory
) -> None:
    backend = FakeBackend(delay=0.01)
    backend.enqueue([f" w{i}" for i in range(1000)])
    app = await new_app(make_settings(isolated_env), backend=backend)
    await app.start()
    stream = app.engine.handle(msg("talk"))
    await stream.aclose()  # the reader leaves before reading anything
    for _ in range(200):  # bounded: 2 s
        if not app.engine._tasks:
            break
        await asyncio.sleep(0.01)
    assert not app.engine._tasks and backend.active == 0
    history = await app.engine.store.history(msg("").conversation)
    # Stopped before it began (nothing to keep), or early: never generated in full for nobody.
    assert sum(len(m.content.split()) for m in history) < 100


async def test_hooks_and_commands_get_the_services_never_the_engine(
    fake_app: App,
) -> None:
    from chatcore.commands import Command, CommandContext
    from chatcore.services import Services

    seen: list[Services] = []

    class UsesServices:
        @hookimpl
        def register_commands(self, register: Any) -> None:
            register(Command("count", "count stored messages", self.count))

        @hookimpl
        def message_received(self, services: Services) -> None:
            seen.append(services)

        async def count(self, context: CommandContext) -> str:
            history = await context.services.store.history(context.message.conversation)
            return f"{len(history)} messages; window {context.services.settings.context.window}"

    fake_app.plugins.add_plugin(UsesServices(), "uses")
    try:
        await fake_app.plugins.collect("uses")
        await collect(fake_app.engine.handle(msg("hello")))
        (reply,) = await collect(fake_app.engine.handle(msg("/count")))
    finally:
        fake_app.plugins.remove_plugin("uses")
    assert isinstance(reply, Reply) and reply.text == "2 messages; window 0"
    assert seen and seen[0] is fake_app.engine.services
    assert not hasattr(seen[0], "engine") and not hasattr(seen[0], "backend")


async def test_the_token_cost_of_each_stored_message_is_recorded(fake_app: App) -> None:
    await collect(fake_app.engine.handle(msg("hello there")))
    history = await fake_app.engine.store.history(msg("").conversation)
    assert [m.tokens for m in history] == [
        fake_app.engine.context.cost(ChatMessage(m.role, m.content)) for m in history
    ]
    assert all(m.tokens for m in history)


async def test_text_from_reply_finished_follows_the_reply_as_notices(fake_app: App) -> None:
    class Notes:
        @hookimpl
        def reply_finished(self, reply: Reply) -> str | None:
            return f"noted: {len(reply.text)} characters"

    class Silent:
        @hookimpl
        def reply_finished(self) -> object:
            return 42  # not text: logged and left out

    fake_app.plugins.add_plugin(Notes(), "notes")
    fake_app.plugins.add_plugin(Silent(), "silent")
    try:
        events = await collect(fake_app.engine.handle(msg("hello")))
    finally:
        fake_app.plugins.remove_plugin("notes")
        fake_app.plugins.remove_plugin("silent")
    reply = next(e for e in events if isinstance(e, Reply))
    assert events[-1] == Notice(reply.message_id, f"noted: {len(reply.text)} characters")
    assert [type(e) for e in events[-2:]] == [Reply, Notice]


async def test_the_closest_memories_are_recalled_next_to_the_new_message(
    fake_app: App, fake_backend: FakeBackend
) -> None:
    user = UserKey.of(msg("").conversation)
    memories = fake_app.engine.services.memories
    await memories.remember(user, "the user's dog is called Rex")
    await memories.remember(user, "the user lives in Lisbon")
    await memories.remember(UserKey("other", "x"), "the user's dog is called Bruno")
    await collect(fake_app.engine.handle(msg("what is my dog called?")))
    last = fake_backend.calls[-1].messages[-1]
    assert last.role == "user" and last.content.endswith("what is my dog called?")
    assert "Rex" in last.content and "Bruno" not in last.content
    assert "Lisbon" not in last.content  # under the minimum score
    assert "Rex" not in fake_backend.calls[-1].messages[0].content  # not in the stable part


async def test_recall_can_be_turned_off_and_a_failing_recall_does_not_stop_the_reply(
    settings: Any, isolated_env: Path, new_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    off = make_settings(isolated_env, memory={"recall": 0})
    backend = FakeBackend()
    app = await new_app(off, backend=backend)
    await app.start()
    user = UserKey.of(msg("").conversation)
    await app.engine.services.memories.remember(user, "the user's dog is called Rex")
    await collect(app.engine.handle(msg("what is my dog called?")))
    assert "Rex" not in backend.calls[-1].messages[-1].content

    broken_backend = FakeBackend()
    broken = await new_app(settings, backend=broken_backend)
    await broken.start()

    async def fail(*_: object) -> list[Any]:
        raise RuntimeError("index gone")

    broken.engine.memories.recall = fail  # type: ignore[method-assign]
    events = await collect(broken.engine.handle(msg("what is my dog called?")))
    assert isinstance(events[-1], Reply)
    assert "replying without them" in caplog.text
