"""Plugin code cannot stall or end the bot: sync hooks run off the event loop, every hook and
command has a time limit, ``BaseException`` is contained, wrong return types are refused, and a
plugin that keeps failing is disabled."""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatcore import hookimpl
from chatcore.app import App
from chatcore.commands import Command, CommandContext
from chatcore.events import Message, Reply, ReplyError
from chatcore.generation.fake import FakeBackend
from tests.conftest import AppFactory, make_settings
from tests.test_engine import collect, msg


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of the test, so that no blocked plugin thread outlives it."""
    event = threading.Event()
    yield event
    event.set()


async def _app(new_app: AppFactory, home: Path, plugin: object, **plugins: object) -> App:
    app = await new_app(make_settings(home, plugins=plugins), backend=FakeBackend())
    app.plugins.add_plugin(plugin, "suspect")
    await app.plugins.collect("suspect")
    await app.start()
    return app


async def test_a_blocking_sync_hook_does_not_stall_other_conversations(
    isolated_env: Path, release: threading.Event, new_app: AppFactory
) -> None:
    class Blocking:
        @hookimpl
        def message_received(self, message: Message) -> None:
            if message.user == "slow":
                release.wait(30)  # a plugin doing blocking I/O

    app = await _app(new_app, isolated_env, Blocking(), hook_timeout=60.0)
    slow = asyncio.ensure_future(collect(app.engine.handle(msg("wait", user="slow"))))
    started = time.monotonic()
    others = await asyncio.wait_for(
        asyncio.gather(
            collect(app.engine.handle(msg("one", user="bob"))),
            collect(app.engine.handle(msg("two", user="carol"))),
        ),
        10,  # a guard against hanging; the replies come in milliseconds
    )
    assert [events[-1].text for events in others] == ["You said: one", "You said: two"]
    assert not slow.done()  # its own conversation still waits for the hook
    print(f"two other conversations answered in {time.monotonic() - started:.3f} s")
    release.set()
    (reply,) = [e for e in await asyncio.wait_for(slow, 10) if isinstance(e, Reply)]
    assert reply.text == "You said: wait"


async def test_a_hook_past_its_time_limit_is_skipped_and_named(
    isolated_env: Path,
    release: threading.Event,
    caplog: pytest.LogCaptureFixture,
    new_app: AppFactory,
) -> None:
    class Stuck:
        @hookimpl
        async def message_received(self, message: Message) -> None:
            await asyncio.Event().wait()  # never returns

        @hookimpl
        def extend_system_prompt(self, message: Message) -> str:
            release.wait(30)
            return "never used"

    app = await _app(new_app, isolated_env, Stuck(), hook_timeout=0.2)
    events = await asyncio.wait_for(collect(app.engine.handle(msg("hello"))), 10)
    assert isinstance(events[-1], Reply) and events[-1].text == "You said: hello"
    timed_out = "plugin 'suspect' did not return within 0.2 s (plugins.hook_timeout)"
    assert f"{timed_out} in hook message_received" in caplog.text
    assert "in hook extend_system_prompt" in caplog.text
    backend = app.engine.backend
    assert isinstance(backend, FakeBackend)
    assert "never used" not in backend.calls[0].messages[0].content


@pytest.mark.parametrize("exit_kind", ["sys.exit", "KeyboardInterrupt", "async sys.exit"])
async def test_exits_raised_by_plugin_code_are_contained(
    isolated_env: Path, caplog: pytest.LogCaptureFixture, exit_kind: str, new_app: AppFactory
) -> None:
    class Exiting:
        @hookimpl
        def message_received(self, message: Message) -> None:
            if exit_kind == "sys.exit":
                sys.exit(3)
            if exit_kind == "KeyboardInterrupt":
                raise KeyboardInterrupt

        @hookimpl
        async def reply_finished(self) -> None:
            if exit_kind == "async sys.exit":
                sys.exit(4)

    app = await _app(new_app, isolated_env, Exiting())
    for text in ("first", "second"):
        events = await asyncio.wait_for(collect(app.engine.handle(msg(text))), 10)
        assert events[-1].text == f"You said: {text}"  # type: ignore[union-attr]
    assert "plugin 'suspect' raised" in caplog.text


async def test_a_command_past_its_time_limit_fails_and_the_conversation_goes_on(
    isolated_env: Path, new_app: AppFactory
) -> None:
    class SlowCommand:
        @hookimpl
        def register_commands(self, register: Any) -> None:
            register(Command("forever", "never answers", self.forever))

        async def forever(self, context: CommandContext) -> str:
            await asyncio.sleep(3600)
            return "late"

    app = await _app(new_app, isolated_env, SlowCommand(), command_timeout=0.2)
    (error,) = await asyncio.wait_for(collect(app.engine.handle(msg("/forever"))), 10)
    assert isinstance(error, ReplyError) and error.code == "command_failed"
    assert error.text.startswith("/forever took too long (ref ")
    events = await asyncio.wait_for(collect(app.engine.handle(msg("still here"))), 10)
    assert events[-1].text == "You said: still here"  # type: ignore[union-attr]


@pytest.mark.parametrize("value", [None, b"bytes", {"a": 1}, 42])
async def test_a_command_must_return_text(
    isolated_env: Path, value: object, caplog: pytest.LogCaptureFixture, new_app: AppFactory
) -> None:
    class Wrong:
        @hookimpl
        def register_commands(self, register: Any) -> None:
            register(Command("wrong", "returns no text", lambda context: value))

    app = await _app(new_app, isolated_env, Wrong())
    (error,) = await collect(app.engine.handle(msg("/wrong")))
    assert isinstance(error, ReplyError) and error.code == "command_failed"
    assert re.fullmatch(r"/wrong failed \(ref [0-9a-f]{8}\); it was logged\.", error.text)
    assert f"returned {type(value).__name__}, not text" in caplog.text


async def test_a_system_prompt_extension_must_be_text(
    isolated_env: Path, caplog: pytest.LogCaptureFixture, new_app: AppFactory
) -> None:
    class Wrong:
        @hookimpl
        def extend_system_prompt(self) -> object:
            return {"tone": "formal"}

    app = await _app(new_app, isolated_env, Wrong())
    await collect(app.engine.handle(msg("hi")))
    backend = app.engine.backend
    assert isinstance(backend, FakeBackend)
    assert backend.calls[0].messages[0].content == app.settings.context.system_prompt
    assert "returned dict from extend_system_prompt, not text; left out" in caplog.text


async def test_a_hanging_startup_hook_does_not_keep_the_app_from_starting(
    isolated_env: Path, release: threading.Event, new_app: AppFactory
) -> None:
    class Hanging:
        @hookimpl
        def startup(self) -> None:
            release.wait(30)

    app = await new_app(
        make_settings(isolated_env, plugins={"hook_timeout": 0.2}), backend=FakeBackend()
    )
    app.plugins.add_plugin(Hanging(), "suspect")
    await asyncio.wait_for(app.start(), 10)
    assert app.started


async def test_a_plugin_that_keeps_failing_is_disabled(
    isolated_env: Path, caplog: pytest.LogCaptureFixture, new_app: AppFactory
) -> None:
    calls = 0

    class Flaky:
        @hookimpl
        def register_commands(self, register: Any) -> None:
            register(Command("flaky", "always fails", self.fail))

        @hookimpl
        def message_received(self) -> None:
            nonlocal calls
            calls += 1
            raise RuntimeError("again")

        def fail(self, context: CommandContext) -> str:
            raise RuntimeError("again")

    app = await _app(new_app, isolated_env, Flaky(), max_failures=3)
    for i in range(5):
        await collect(app.engine.handle(msg(f"m{i}")))
    assert calls == 3
    info = app.plugins.infos["suspect"]
    assert info.status == "failed"
    assert (
        info.error
        == "3 failures in a row; the last: raised RuntimeError: again in hook message_received"
    )
    assert "flaky" not in app.plugins.commands  # what it registered is gone too
    (error,) = await collect(app.engine.handle(msg("/flaky")))
    assert isinstance(error, ReplyError) and error.code == "unknown_command"


async def test_successes_reset_the_failure_count(isolated_env: Path, new_app: AppFactory) -> None:
    class SometimesFails:
        @hookimpl
        def message_received(self, message: Message) -> None:
            if message.text.startswith("bad"):
                raise RuntimeError("bad input")

    app = await _app(new_app, isolated_env, SometimesFails(), max_failures=2)
    for text in ("bad 1", "good", "bad 2", "good", "bad 3"):
        await collect(app.engine.handle(msg(text)))
    assert app.plugins.infos["suspect"].status == "loaded"


async def test_cancelling_a_reply_cancels_its_hook_without_blaming_the_plugin(
    isolated_env: Path, new_app: AppFactory
) -> None:
    entered = asyncio.Event()

    class Waits:
        @hookimpl
        async def message_received(self) -> None:
            entered.set()
            await asyncio.sleep(3600)

    app = await _app(new_app, isolated_env, Waits(), hook_timeout=600.0, max_failures=1)
    reader = asyncio.ensure_future(collect(app.engine.handle(msg("hi"))))
    await asyncio.wait_for(entered.wait(), 10)
    reader.cancel()  # the reader goes away: the reply and its hook are cancelled
    await asyncio.gather(reader, return_exceptions=True)
    await asyncio.wait_for(app.engine.stop(), 10)
    assert app.plugins.infos["suspect"].status == "loaded"
    assert app.plugins.infos["suspect"].hook_errors == 0


async def test_async_code_that_ignores_cancellation_is_abandoned_at_its_limit(
    isolated_env: Path, new_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    finished: list[str] = []

    class Stubborn:
        @hookimpl
        async def message_received(self) -> None:
            for _ in range(30):  # bounded: 3 s
                try:
                    await asyncio.sleep(0.1)
                except asyncio.CancelledError:
                    continue  # swallows every cancellation
            finished.append("late")

    app = await _app(new_app, isolated_env, Stubborn(), hook_timeout=0.2)
    events = await asyncio.wait_for(collect(app.engine.handle(msg("hi"))), 2)
    assert isinstance(events[-1], Reply) and events[-1].text == "You said: hi"
    assert not finished  # answered long before the stubborn hook gave up
    assert "did not return within 0.2 s (plugins.hook_timeout) in hook message_received" in (
        caplog.text
    )


async def test_a_register_hook_past_its_limit_cannot_register_later(
    settings: Any, release: threading.Event
) -> None:
    from chatcore.plugins import PluginHost

    done = threading.Event()

    class Late:
        @hookimpl
        def register_commands(self, register: Any) -> None:
            release.wait(10)
            try:
                register(Command("late", "registered too late", lambda context: "late"))
            finally:
                done.set()

    host = PluginHost(settings.plugins.model_copy(update={"hook_timeout": 0.2}))
    host.add_plugin(Late(), "late")
    await host.collect("late")
    assert host.infos["late"].status == "failed"
    release.set()
    assert await asyncio.to_thread(done.wait, 10)
    assert "late" not in host.commands
