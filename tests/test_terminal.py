"""The terminal adapter: piped mode (scriptable), interactive mode through prompt_toolkit's pipe
input, Ctrl-C stopping a reply, and the real ``chatcore chat`` process."""

from __future__ import annotations

import asyncio
import io
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prompt_toolkit.input import PipeInput
from typer.testing import CliRunner

from chatcore import hookimpl
from chatcore.adapters.terminal import TerminalAdapter, login_name
from chatcore.app import App, create_app
from chatcore.cli import app as cli
from chatcore.events import ConversationKey
from chatcore.generation.fake import FakeBackend
from chatcore.generation.types import ChatMessage
from chatcore.lifecycle import ShutdownSignals
from tests.conftest import AppFactory, interactive_terminal, make_settings, run_chatcore

runner = CliRunner()


def test_piped_chat_prints_each_reply_and_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCORE_MODEL__BACKEND", "fake")
    result = runner.invoke(cli, ["chat"], input="Hello there\n\n/help\nsecond line\n")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "You said: Hello there"
    assert "  /reset - start a new conversation" in lines
    assert lines[-1] == "You said: second line"


def test_piped_chat_joins_continued_lines_and_stops_at_quit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHATCORE_MODEL__BACKEND", "fake")
    result = runner.invoke(cli, ["chat"], input="one \\\ntwo\n/quit\nnever sent\n")
    assert result.exit_code == 0
    assert result.stdout == "You said: one\ntwo\n"  # trailing spaces trimmed


def test_piped_chat_reports_errors_on_stderr_and_exits_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHATCORE_MODEL__BACKEND", "fake")
    result = runner.invoke(cli, ["chat"], input="/nope\nhello\n")
    assert result.exit_code == 1
    assert "error: Unknown command /nope" in result.stderr
    assert result.stdout == "You said: hello\n"


def test_cut_reply_is_flagged_on_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCORE_MODEL__BACKEND", "fake")
    monkeypatch.setenv("CHATCORE_GENERATION__MAX_NEW_TOKENS", "2")
    result = runner.invoke(cli, ["chat"], input="one two three\n")
    assert result.exit_code == 0
    assert result.stdout == "You said:…\n"  # the cut sentence is all there is: marked
    assert "(reply cut at generation.max_new_tokens)" in result.stderr


def test_piped_chat_shows_what_was_noted_on_stderr_after_the_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHATCORE_MODEL__BACKEND", "fake")
    monkeypatch.setenv("CHATCORE_MEMORY__EMBEDDER", "hashing")
    result = runner.invoke(
        cli, ["chat"], input="call me Sam\nmy dog is called Rex\n/memories\nhello\n"
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()  # the replies alone: notices stay out of the way
    assert lines[:2] == ["You said: call me Sam", "You said: my dog is called Rex"]
    assert lines[-1] == "You said: hello"
    assert "\x1b" not in result.stderr  # dim only on a terminal
    assert result.stderr.splitlines() == [
        "noted: I'll call you Sam — say \"don't call me Sam\" to undo.",
        "noted: The user's dog is called Rex. — memory 1; /forget 1 undoes it.",
    ]
    assert any(line.endswith("  The user's dog is called Rex.") for line in lines)


def test_reply_budget_larger_than_the_window_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCORE_MODEL__BACKEND", "fake")
    monkeypatch.setenv("CHATCORE_GENERATION__MAX_NEW_TOKENS", "5000")
    result = runner.invoke(cli, ["chat"], input="hi\n")
    assert result.exit_code == 2
    assert result.stderr.startswith("config error: generation.max_new_tokens = 5000")


def test_unknown_backend_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCORE_MODEL__BACKEND", "nonesuch")
    result = runner.invoke(cli, ["chat"], input="hi\n")
    assert result.exit_code == 2
    assert "no backend named 'nonesuch'; available: fake, openai, transformers" in result.stderr


@pytest.fixture
async def app(isolated_env: Path) -> AsyncIterator[App]:
    app = await create_app(make_settings(isolated_env), backend=FakeBackend(delay=0.005))
    try:
        yield app
    finally:
        await app.close()


def _adapter(app: App, pipe: PipeInput, out: io.StringIO, **options: object) -> TerminalAdapter:
    return interactive_terminal(app, pipe, stdout=out, **options)


async def test_interactive_chat_streams_and_keeps_history(
    app: App, pipe: PipeInput, isolated_env: Path
) -> None:
    out = io.StringIO()
    adapter = _adapter(app, pipe, out, user="bob")
    pipe.send_text("hello\r")
    pipe.send_text("line one\x1b\rline two\r")  # Esc-Enter inserts a newline
    pipe.send_text("/help\r/quit\r")
    assert await asyncio.wait_for(adapter.run(), 10) == 0
    text = out.getvalue()
    assert "bot> You said: hello\n" in text
    assert "bot> You said: line one\nline two\n" in text
    assert "Ctrl-C stops a reply" in text
    history = await app.engine.store.history(ConversationKey("terminal", "terminal", "bob"))
    assert history[2] == ChatMessage("user", "line one\nline two")
    assert "hello" in (isolated_env / "terminal_history").read_text()


async def test_interactive_chat_ends_on_ctrl_d(app: App, pipe: PipeInput) -> None:
    out = io.StringIO()
    adapter = _adapter(app, pipe, out)
    pipe.send_text("hi\r\x04")
    assert await asyncio.wait_for(adapter.run(), 10) == 0
    assert adapter.user == login_name()
    assert "You said: hi" in out.getvalue()


class _Noting:
    """A plugin whose notice tries to drive the terminal."""

    @hookimpl
    def reply_finished(self) -> str:
        return "noted: \x1b]0;pwned\x07 [bold]not markup[/bold] :dog:\nsecond line"


async def test_a_notice_is_shown_after_the_reply_harmless(
    app: App, pipe: PipeInput, isolated_env: Path
) -> None:
    app.plugins.add_plugin(_Noting(), "noting")
    await app.plugins.collect("noting")
    out, err = io.StringIO(), io.StringIO()
    adapter = interactive_terminal(app, pipe, stdout=out, stderr=err)
    pipe.send_text("hello\r/quit\r")
    assert await asyncio.wait_for(adapter.run(), 10) == 0
    assert "bot> You said: hello\n" in out.getvalue()
    shown = err.getvalue()
    assert "noted: ␛]0;pwned␇ [bold]not markup[/bold] :dog:\nsecond line\n" in shown
    assert "\x1b" not in shown


async def test_ctrl_c_stops_the_reply_but_not_the_chat(
    isolated_env: Path, pipe: PipeInput, new_app: AppFactory
) -> None:
    backend = FakeBackend(delay=0.02)
    backend.enqueue([f" w{i}" for i in range(200)])
    app = await new_app(make_settings(isolated_env), backend=backend)
    # The app's signal routing, not installed: the test delivers SIGINT itself (never a real
    # signal to the test runner).
    exits: list[int] = []
    app.signals = ShutdownSignals(app.request_stop, grace=30, exit_now=exits.append)
    out = io.StringIO()
    adapter = _adapter(app, pipe, out)
    pipe.send_text("talk a lot\r")
    run = asyncio.create_task(adapter.run())
    for _ in range(500):  # wait until the reply is streaming (bounded: 5 s)
        if " w2" in out.getvalue():
            break
        await asyncio.sleep(0.01)
    if " w2" not in out.getvalue():
        run.cancel()
        pytest.fail("the reply did not start streaming")
    app.signals.handle(signal.SIGINT)
    for _ in range(500):
        if "[stopped]" in out.getvalue():
            break
        await asyncio.sleep(0.01)
    pipe.send_text("after\r/quit\r")
    assert await asyncio.wait_for(run, 10) == 0
    text = out.getvalue()
    assert "[stopped]" in text and " w199" not in text
    assert "bot> You said: after" in text
    assert backend.active == 0
    assert app.signals.received is None and not exits  # the chat went on: no shutdown
    await app.close()


def test_real_process_piped(isolated_env: Path) -> None:
    done = run_chatcore(
        ["chat", "--user", "carol"],
        "What is the capital of France?\n",
        CHATCORE_MODEL__BACKEND="fake",
        CHATCORE_HOME=str(isolated_env),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "You said: What is the capital of France?\n"
