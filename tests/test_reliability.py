"""What chatcore promises under bad input, broken output and signals (docs/reliability.md):
undecodable and control bytes, escape sequences, closed or full output, SIGTERM/SIGHUP/SIGINT,
config mistakes known before the model loads, private files, a bounded memory."""

from __future__ import annotations

import asyncio
import io
import os
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prompt_toolkit.input import PipeInput
from typer.testing import CliRunner

from chatcore import hookimpl
from chatcore.commands import Command
from chatcore.events import ConversationKey
from chatcore.generation.fake import FakeBackend
from chatcore.generation.types import ChatMessage, GenerationError
from chatcore.lifecycle import ShutdownSignals
from chatcore.memory.inmemory import InMemoryConversationStore
from chatcore.text import clean_input, terminal_safe
from tests.conftest import AppFactory, interactive_terminal, make_settings, run_chatcore
from tests.plugin_fixtures import install_plugin
from tests.test_engine import collect, msg

runner = CliRunner()

ESCAPES = ["\x1b]0;pwned\x07", "\x1b[2J", "\x1b]52;c;aGVsbG8=\x07", "\x9b31m", " plain\n"]


# -- input: bytes, control characters, line breaks --------------------------------------------


def test_invalid_utf8_in_a_long_piped_input_loses_no_line(tmp_path: Path) -> None:
    good = [f"line {i}" for i in range(2000)]
    more = [f"more {i}" for i in range(100)]
    data = "\n".join(good).encode() + b"\nbefore \xff after\n" + "\n".join(more).encode() + b"\n"
    done = subprocess.run(
        [sys.executable, "-m", "chatcore.cli", "chat"],
        input=data,
        capture_output=True,
        env={**os.environ, "CHATCORE_MODEL__BACKEND": "fake", "LC_ALL": "C.UTF-8"},
        timeout=300,
        check=False,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr
    assert out.count("You said: ") == 2101
    assert "You said: before \N{REPLACEMENT CHARACTER} after\n" in out
    assert out.endswith("You said: more 99\n")
    assert done.stderr.decode() == (
        "warning: input line 2001 is not valid UTF-8; the undecodable bytes were replaced "
        "with \N{REPLACEMENT CHARACTER}\n"
    )


def test_invalid_utf8_under_the_c_locale_is_no_traceback(isolated_env: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chatcore.cli", "chat"],
        input=b"before\n\xff\xfe\nafter\n",
        capture_output=True,
        env={**os.environ, "CHATCORE_MODEL__BACKEND": "fake", "LC_ALL": "C", "LANG": "C"},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().count("You said: ") == 3
    assert b"Traceback" not in done.stderr


def test_a_line_of_control_characters_is_reported_not_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHATCORE_MODEL__BACKEND", "fake")
    result = runner.invoke(cli_app(), ["chat"], input=b"\x00\x1b\nnext \\\x00\nline\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "You said: next\nline\n"  # trailing spaces trimmed
    assert result.stderr == (
        "warning: input line 1 holds only control characters; nothing was sent\n"
    )


def test_crlf_input_continues_lines_and_ends_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCORE_MODEL__BACKEND", "fake")
    result = runner.invoke(cli_app(), ["chat"], input=b"one \\\r\ntwo\r\nthree\r\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "You said: one\ntwo\nYou said: three\n"


def test_one_rule_for_control_characters_in_input() -> None:
    assert clean_input("a\x00b\x1b[2Jc\x07\td\r\ne\rf\x85g\ud800") == "ab[2Jc\td\ne\nfg\ufffd"


async def test_the_engine_applies_the_input_rule_before_anything_sees_the_text(
    fake_app: Any, fake_backend: FakeBackend
) -> None:
    seen: list[str] = []

    class Observer:
        @hookimpl
        def message_received(self, message: Any) -> None:
            seen.append(message.text)

    fake_app.plugins.add_plugin(Observer(), "observer")
    try:
        await collect(fake_app.engine.handle(msg("nul\x00 and \x1b]0;t\x07 escape")))
    finally:
        fake_app.plugins.remove_plugin("observer")
    assert seen == ["nul and ]0;t escape"]
    assert fake_backend.calls[0].messages[-1].content == "nul and ]0;t escape"
    stored = await fake_app.engine.store.history(msg("").conversation)
    assert stored[0].content == "nul and ]0;t escape"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=8))
def test_any_bytes_piped_in_get_one_answer_or_one_error_per_message(lines: list[bytes]) -> None:
    # Lines that would be commands are prefixed: commands answer in their own shapes.
    lines = [b"x" + line if line.lstrip().startswith(b"/") else line for line in lines]
    data = b"\n".join(lines) + b"\n"
    result = CliRunner().invoke(
        cli_app(), ["chat"], input=data, env={"CHATCORE_MODEL__BACKEND": "fake"}
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (0, 1)
    assert "Traceback" not in result.stderr
    answers = result.stdout.count("You said:")
    errors = sum(1 for line in result.stderr.splitlines() if line.startswith("error: "))
    skipped = result.stderr.count("holds only control characters; nothing was sent")
    assert answers + errors + skipped == _expected_messages(lines)
    assert "\x1b" not in result.stdout and "\x1b" not in result.stderr


def _expected_messages(lines: list[bytes]) -> int:
    """The documented rules: a line is cleaned by the input rule; a trailing backslash then
    continues it; a message with nothing left is reported (when the line was not blank)."""
    count, pending = 0, []
    for raw in lines:
        text = raw.removesuffix(b"\r").decode("utf-8", "replace")
        cleaned = clean_input(text)
        if cleaned.endswith("\\"):
            pending.append(cleaned[:-1])
            continue
        if "\n".join([*pending, cleaned]).strip() or text.strip():
            count += 1
        pending = []
    if "\n".join(pending).strip():
        count += 1
    return count


async def test_a_message_empty_after_the_input_rule_is_refused_without_a_model_call(
    fake_app: Any, fake_backend: FakeBackend
) -> None:
    (error,) = await collect(fake_app.engine.handle(msg("\x00\x1b \x07")))
    assert error.code == "empty_message" and not fake_backend.calls


# -- output: escape sequences, closed or full standard output ------------------------------


async def test_escape_sequences_from_the_model_and_plugins_never_reach_the_terminal(
    isolated_env: Path, new_app: AppFactory
) -> None:
    backend = FakeBackend()
    backend.enqueue(ESCAPES)
    backend.enqueue([GenerationError("\x1b]0;err\x07 the model failed")])
    app = await new_app(make_settings(isolated_env), backend=backend)
    app.plugins.add_plugin(_EscapingCommand(), "escaping")
    await app.plugins.collect("escaping")
    out, err = io.StringIO(), io.StringIO()
    try:
        adapter = app.adapter(
            "terminal",
            stdin=io.StringIO("hello\n/esc\nfails\n"),
            stdout=out,
            stderr=err,
            interactive=False,
        )
        assert await asyncio.wait_for(adapter.run(), 10) == 1
    finally:
        await app.close()
    for stream in (out.getvalue(), err.getvalue()):
        assert not any(ch in stream for ch in "\x1b\x07\x9b")
    assert out.getvalue() == (
        "\N{SYMBOL FOR ESCAPE}]0;pwned\N{SYMBOL FOR BELL}\N{SYMBOL FOR ESCAPE}[2J"
        "\N{SYMBOL FOR ESCAPE}]52;c;aGVsbG8=\N{SYMBOL FOR BELL}<9B>31m plain\n"
        "title \N{SYMBOL FOR ESCAPE}]0;owned\N{SYMBOL FOR BELL}\n"
    )
    assert "error: The model could not answer (ref " in err.getvalue()


class _EscapingCommand:
    @hookimpl
    def register_commands(self, register: Any) -> None:
        register(Command("esc", "answers with an escape", lambda context: "title \x1b]0;owned\x07"))


def test_terminal_safe_keeps_text_and_newlines() -> None:
    text = "Grüße, 你好 👋\n\tindented\n"
    assert terminal_safe(text) == text
    assert terminal_safe("\x1b[31mred\x1b[0m\r") == "\u241b[31mred\u241b[0m\u240d"


@pytest.mark.parametrize(
    ("redirect", "reason"),
    [("/dev/full", "No space left on device"), ("closed", "it was closed")],
)
def test_full_or_closed_stdout_is_one_line_and_exit_1(
    isolated_env: Path, redirect: str, reason: str
) -> None:
    target: Any = subprocess.DEVNULL
    if redirect == "/dev/full":
        target = open(redirect, "wb")  # noqa: SIM115 - closed below
    try:
        done = subprocess.run(
            [sys.executable, "-m", "chatcore.cli", "chat"],
            input=b"one\ntwo\n",
            stdout=target,
            stderr=subprocess.PIPE,
            env={**os.environ, "CHATCORE_MODEL__BACKEND": "fake"},
            timeout=300,
            check=False,
            close_fds=True,
            preexec_fn=(lambda: os.close(1)) if redirect == "closed" else None,
        )
    finally:
        if redirect == "/dev/full":
            target.close()
    assert done.returncode == 1
    assert done.stderr.decode() == (
        f"error: cannot write to standard output ({reason}); stopping\n"
    )


def test_a_broken_pipe_is_one_line_and_exit_1(isolated_env: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatcore.cli", "chat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CHATCORE_MODEL__BACKEND": "fake"},
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"one\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == b"You said: one\n"
    proc.stdout.close()  # the reader goes away, like `chatcore chat | head -1`
    proc.stdin.write(b"two\nthree\n")
    proc.stdin.close()
    assert proc.wait(timeout=60) == 1
    assert proc.stderr is not None
    assert proc.stderr.read() == b"error: cannot write to standard output (Broken pipe); stopping\n"


async def test_a_user_name_with_markup_starts_the_chat(
    isolated_env: Path, new_app: AppFactory, pipe: PipeInput
) -> None:
    app = await new_app(make_settings(isolated_env), backend=FakeBackend())
    err = io.StringIO()
    adapter = interactive_terminal(app, pipe, stderr=err, user="[bold]x[/] [link=y")
    pipe.send_text("\x04")
    assert await asyncio.wait_for(adapter.run(), 10) == 0
    assert "you are [bold]x[/] [link=y." in err.getvalue()


# -- signals ---------------------------------------------------------------------------------

SIGNAL_PLUGIN = """
import asyncio, os, time
from pathlib import Path
from chatcore import hookimpl
from chatcore.generation.fake import FakeBackend

MARKS = Path(os.environ["TESTPLUGIN_MARKS"])

class SlowToClose(FakeBackend):
    async def close(self):
        await asyncio.sleep(float(os.environ.get("TESTPLUGIN_CLOSE_SLEEP", "0")))


@hookimpl
def register_backends(register):
    def slow(settings):
        backend = SlowToClose(delay=0.02)
        for _ in range(3):
            backend.enqueue([f" w{i}" for i in range(1000)])
        return backend
    register("slow", slow)

@hookimpl
def shutdown():
    (MARKS / "shutdown-started").write_text("")
    time.sleep(float(os.environ.get("TESTPLUGIN_SHUTDOWN_SLEEP", "0")))
    (MARKS / "shutdown-done").write_text("")
"""


@pytest.fixture
def signal_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    install_plugin(tmp_path, monkeypatch, "slowbackend", SIGNAL_PLUGIN)
    marks = tmp_path / "marks"
    marks.mkdir()
    yield {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "CHATCORE_MODEL__BACKEND": "slow",
        "TESTPLUGIN_MARKS": str(marks),
    }


def _start_chat(env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatcore.cli", "chat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"talk a lot\nnever answered\n")  # stdin stays open, like a live pipe
    proc.stdin.flush()
    return proc


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, seconds: float = 60) -> bytes:
    """Read the process's stdout until ``marker`` shows (bounded in time)."""
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + seconds
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
    if marker not in seen:
        proc.kill()
        pytest.fail(f"{marker!r} never appeared; got {seen[-200:]!r}")
    return seen


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_during_a_reply_shuts_down_gracefully(
    signal_env: dict[str, str], tmp_path: Path, sig: signal.Signals
) -> None:
    proc = _start_chat(signal_env)
    seen = _read_until(proc, b" w5")
    started = time.monotonic()
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - started
    out = (seen + rest).decode()
    assert proc.returncode == 128 + sig, err
    # (the reply's first space is trimmed by the whitespace rewriter)
    assert out.startswith("You said:") is False and out.startswith("w0 w1")
    assert out.endswith("\n") and " w999" not in out and "never answered" not in out
    assert "error: Stopped: the bot is shutting down. What was written so far is kept." in (
        err.decode()
    )
    assert (tmp_path / "marks" / "shutdown-done").exists()
    assert elapsed < 10, f"the shutdown took {elapsed:.1f} s"


def test_a_second_signal_exits_at_once(signal_env: dict[str, str], tmp_path: Path) -> None:
    proc = _start_chat({**signal_env, "TESTPLUGIN_SHUTDOWN_SLEEP": "60"})
    _read_until(proc, b" w5")
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while not (tmp_path / "marks" / "shutdown-started").exists():
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the shutdown hooks never ran")
        time.sleep(0.05)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert time.monotonic() - started < 5
    assert not (tmp_path / "marks" / "shutdown-done").exists()


def test_a_shutdown_past_its_time_limit_exits(signal_env: dict[str, str], tmp_path: Path) -> None:
    env = {
        **signal_env,
        "TESTPLUGIN_CLOSE_SLEEP": "60",  # the backend never finishes closing
        "CHATCORE_LIFECYCLE__SHUTDOWN_TIMEOUT": "1",
    }
    proc = _start_chat(env)
    _read_until(proc, b" w5")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert time.monotonic() - started < 10
    assert "shutdown took longer than 1 s (lifecycle.shutdown_timeout); exiting" in err.decode()
    assert (tmp_path / "marks" / "shutdown-done").exists()  # the hooks ran before the stuck part


def test_shutdown_hooks_share_the_shutdown_time(signal_env: dict[str, str], tmp_path: Path) -> None:
    """A shutdown hook that hangs gets half the shutdown time; the rest still closes."""
    env = {
        **signal_env,
        "TESTPLUGIN_SHUTDOWN_SLEEP": "60",
        "CHATCORE_LIFECYCLE__SHUTDOWN_TIMEOUT": "2",
        "CHATCORE_PLUGINS__HOOK_TIMEOUT": "120",
    }
    proc = _start_chat(env)
    _read_until(proc, b" w5")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "plugin 'slowbackend' did not return within 1 s in hook shutdown" in err.decode()
    assert "shutdown took longer" not in err.decode()


async def test_shutdown_order_stores_the_partial_reply_before_the_hooks_run(
    isolated_env: Path, new_app: AppFactory
) -> None:
    backend = FakeBackend(delay=0.01)
    backend.enqueue([f" w{i}" for i in range(1000)])
    app = await new_app(make_settings(isolated_env), backend=backend)
    order: list[str] = []
    key = msg("").conversation

    class Watcher:
        @hookimpl
        async def shutdown(self) -> None:
            history = await app.engine.store.history(key)
            order.append(f"shutdown hook saw {len(history)} messages, closed={backend.closed}")

    app.plugins.add_plugin(Watcher(), "watcher")
    await app.start()
    stream = app.engine.handle(msg("talk"))
    events = [await anext(stream) for _ in range(3)]
    app.request_stop()  # what the first signal does
    rest = await asyncio.wait_for(collect(stream), 10)
    await asyncio.wait_for(app.close(), 10)
    assert rest[-1].code == "cancelled"  # type: ignore[union-attr]
    assert order == ["shutdown hook saw 2 messages, closed=False"]
    assert backend.closed
    assert len(events) == 3


def test_sigint_can_be_taken_by_an_adapter_but_not_sigterm() -> None:
    stopped: list[signal.Signals] = []
    exits: list[int] = []
    taken: list[str] = []
    signals = ShutdownSignals(stopped.append, grace=60, exit_now=exits.append)
    with signals.interrupts_to(lambda: taken.append("reply stopped")):
        signals.handle(signal.SIGINT)
        assert taken == ["reply stopped"] and not stopped
        signals.handle(signal.SIGTERM)
    assert stopped == [signal.SIGTERM] and not exits
    signals.handle(signal.SIGINT)  # a second signal
    assert exits == [130]
    signals.uninstall()


# -- configuration known before the model loads --------------------------------------------


def test_a_config_file_that_is_not_utf8_is_one_line(isolated_env: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_bytes(b'[context]\nsystem_prompt = "caf\xe9"\n')
    result = runner.invoke(cli_app(), ["chat", "--config", str(config)], input="hi\n")
    assert result.exit_code == 2
    assert result.stderr == (
        f"config error: {config} is not UTF-8 text (byte 30 cannot be decoded); save it as UTF-8\n"
    )


def test_a_reply_budget_over_the_window_is_refused_before_the_model_loads(
    isolated_env: Path,
) -> None:
    done = run_chatcore(
        ["chat"],
        "hi\n",
        CHATCORE_MODEL__PATH=str(isolated_env / "no-such-model"),
        CHATCORE_CONTEXT__WINDOW="100",
        CHATCORE_GENERATION__MAX_NEW_TOKENS="100",
    )
    assert done.returncode == 2
    assert done.stderr.startswith("config error: generation.max_new_tokens = 100 leaves no room")
    assert "model not found" not in done.stderr


def test_a_system_prompt_larger_than_the_window_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHATCORE_MODEL__BACKEND", "fake")
    monkeypatch.setenv("CHATCORE_CONTEXT__SYSTEM_PROMPT", "word " * 3000)
    result = runner.invoke(cli_app(), ["chat"], input="hi\nagain\n")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("config error: context.system_prompt takes 3008 tokens")
    assert result.stderr.count("\n") == 1


# -- private files, bounded memory ------------------------------------------------------------


def test_the_data_directory_and_history_are_private(isolated_env: Path) -> None:
    isolated_env.mkdir(mode=0o755)
    os.chmod(isolated_env, 0o755)
    loose = isolated_env / "terminal_history"
    loose.write_text("old secret\n")
    os.chmod(loose, 0o644)
    unrelated = isolated_env / "public_html"
    unrelated.write_text("not chatcore's\n")
    os.chmod(unrelated, 0o644)
    done = run_chatcore(["chat"], "hi\n", CHATCORE_MODEL__BACKEND="fake")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(os.stat(isolated_env).st_mode) == 0o700
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600
    assert stat.S_IMODE(unrelated.stat().st_mode) == 0o644  # not chatcore's: left alone
    assert done.stderr.splitlines() == [
        f"WARNING chatcore.files: {isolated_env} was open to other users (mode 0o755); "
        "making it private",
        f"WARNING chatcore.files: {loose} was open to other users (mode 0o644); making it private",
    ]


async def test_a_new_history_file_is_created_private(
    isolated_env: Path, new_app: AppFactory, pipe: PipeInput
) -> None:
    app = await new_app(make_settings(isolated_env), backend=FakeBackend())
    adapter = interactive_terminal(app, pipe)
    pipe.send_text("my password is hunter2\r\x04")
    assert await asyncio.wait_for(adapter.run(), 10) == 0
    history = isolated_env / "terminal_history"
    assert "hunter2" in history.read_text()
    assert stat.S_IMODE(history.stat().st_mode) == 0o600
    assert stat.S_IMODE(os.stat(isolated_env).st_mode) == 0o700


async def test_the_in_memory_store_forgets_the_least_recently_used_conversation() -> None:
    store = InMemoryConversationStore(limit=10, max_conversations=3)
    keys = [ConversationKey("t", "c", f"u{i}") for i in range(4)]
    for key in keys[:3]:
        await store.append(key, [ChatMessage("user", str(key))])
    await store.history(keys[0])  # used again: now the newest
    await store.append(keys[3], [ChatMessage("user", "new")])
    assert len(store) == 3
    assert await store.history(keys[1]) == []
    assert await store.history(keys[0]) != []


def cli_app() -> Any:
    from chatcore.cli import app

    return app


def test_log_lines_are_terminal_safe() -> None:
    import logging

    from chatcore.cli import _TerminalSafeFormatter

    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "model said %s", ("\x1b]0;t\x07",), None
    )
    line = _TerminalSafeFormatter("%(levelname)s %(message)s").format(record)
    assert line == "ERROR model said \N{SYMBOL FOR ESCAPE}]0;t\N{SYMBOL FOR BELL}"


async def test_piped_input_is_read_ahead_only_a_little() -> None:
    from chatcore.adapters.terminal import _READ_AHEAD, _LineReader

    read_fd, write_fd = os.pipe()
    writer = os.fdopen(write_fd, "wb")
    reader_stream = os.fdopen(read_fd, "r")
    try:
        writer.write(b"line\n" * 10_000)  # more than the read-ahead, less than the pipe holds
        writer.flush()
        lines = _LineReader(reader_stream, asyncio.get_running_loop())
        for _ in range(100):  # bounded: 1 s for the reader to fill what it may
            await asyncio.sleep(0.01)
        assert lines._lines.qsize() == _READ_AHEAD
        first = await lines.next()
        assert first is not None and first.number == 1
    finally:
        writer.close()


def test_a_signal_while_the_reader_of_stdout_stalls_still_ends_the_process(
    isolated_env: Path, tmp_path: Path
) -> None:
    source = tmp_path / "many-lines"
    source.write_text("".join(f"line {i}\n" for i in range(20_000)))
    with source.open("rb") as stdin:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chatcore.cli", "chat"],
            stdin=stdin,
            stdout=subprocess.PIPE,  # never read: the pipe fills and writes block
            stderr=subprocess.PIPE,
            env={
                **os.environ,
                "CHATCORE_MODEL__BACKEND": "fake",
                "CHATCORE_LIFECYCLE__SHUTDOWN_TIMEOUT": "1",
            },
        )
        time.sleep(2)  # let it fill the pipe (64 KiB) and block in a write
        assert proc.poll() is None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        finally:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM
    assert time.monotonic() - started < 10


async def test_ctrl_c_at_the_prompt_clears_the_line_and_the_chat_goes_on(
    isolated_env: Path, new_app: AppFactory, pipe: PipeInput
) -> None:
    app = await new_app(make_settings(isolated_env), backend=FakeBackend())
    out = io.StringIO()
    adapter = interactive_terminal(app, pipe, stdout=out)
    pipe.send_text("typed then cleared\x03after\r\x04")
    assert await asyncio.wait_for(adapter.run(), 10) == 0
    assert out.getvalue() == "bot> You said: after\n"


async def test_a_shutdown_while_the_prompt_waits_ends_the_chat_cleanly(
    isolated_env: Path, new_app: AppFactory, pipe: PipeInput
) -> None:
    app = await new_app(make_settings(isolated_env), backend=FakeBackend())
    run = asyncio.ensure_future(interactive_terminal(app, pipe).run())
    await asyncio.sleep(0.3)  # at the prompt
    app.request_stop()  # what SIGTERM does
    assert await asyncio.wait_for(run, 10) == 0
