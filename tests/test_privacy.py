"""A user's own data: ``chatcore memory export|forget``, ``/forget-me`` and retention. The canary
tests plant one unique string everywhere chatcore keeps text about a user (messages, a closed
conversation, a summary, a preference, a memory, the display name, the terminal's input
history), erase the user, and byte-search every file under the data directory for it."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prompt_toolkit.input import PipeInput
from typer.testing import CliRunner

from chatcore.app import App, create_app
from chatcore.builtin.memory import ForgetMe
from chatcore.cli import app as cli
from chatcore.commands import Command
from chatcore.events import ChatMessage, ConversationKey, Message, Reply
from chatcore.generation.fake import FakeBackend
from chatcore.memory.base import UserKey, counts_of
from tests.conftest import AppFactory, interactive_terminal, make_settings, run_chatcore

SAM = UserKey("terminal", "sam")
KEY = ConversationKey("terminal", "terminal", "sam")
BOB = ConversationKey("terminal", "terminal", "bob")
BOB_MARK = "bobmark" + uuid.uuid4().hex


def files_holding(home: Path, text: str) -> list[str]:
    """The files under ``home`` whose bytes contain ``text`` (UTF-8), by relative path."""
    needle = text.encode()
    return sorted(
        str(path.relative_to(home))
        for path in home.rglob("*")
        if path.is_file() and needle in path.read_bytes()
    )


def database_counts(home: Path, user: UserKey) -> dict[str, int]:
    """What the SQLite database holds about ``user``, counted with SQL of its own."""
    with sqlite3.connect(home / "chatcore.db") as db:
        (user_id,) = db.execute(
            "SELECT id FROM users WHERE platform = ? AND platform_user_id = ?",
            (user.platform, user.user),
        ).fetchone()

        def one(sql: str) -> int:
            return int(db.execute(sql, (user_id,)).fetchone()[0])

        return {
            "conversations": one("SELECT count(*) FROM conversations WHERE user_id = ?"),
            "messages": one(
                "SELECT count(*) FROM messages m JOIN conversations c "
                "ON c.id = m.conversation_id WHERE c.user_id = ?"
            ),
            "preferences": one("SELECT count(*) FROM preferences WHERE user_id = ?"),
            "memories": one("SELECT count(*) FROM memories WHERE user_id = ?"),
        }


async def shown(out: io.StringIO, pattern: str, after: int = 0) -> re.Match[str]:
    """Wait (at most 10 s) until the terminal's output from ``after`` on matches ``pattern``."""
    for _ in range(1000):
        found = re.search(pattern, out.getvalue()[after:])
        if found:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"{pattern!r} never shown; output:\n{out.getvalue()}")


async def plant(app: App, canary: str) -> None:
    """Put ``canary`` everywhere the store keeps text about sam, in enough messages (some
    longer than a page) that the database splits pages; bob talks in between."""
    store = app.engine.store
    await store.set_display_name(SAM, f"Sam {canary}")
    await store.set_preference(SAM, "name", f"Sam {canary}")
    await app.engine.memories.remember(SAM, f"my locker code is {canary}")
    for n in range(120):
        long = "y" * (5000 if n % 10 == 0 else 150)
        await store.append(KEY, [ChatMessage("user", f"{canary} {n} {long}")])
        await store.append(KEY, [ChatMessage("assistant", f"noted {canary}")])
        await store.append(BOB, [ChatMessage("user", f"{BOB_MARK} {n} {'x' * 150}")])
    await store.set_summary(KEY, f"Sam told me {canary}", None)
    await store.reset(KEY)  # a closed conversation is erased too
    await store.append(KEY, [ChatMessage("user", f"again {canary}")])
    await store.set_summary(KEY, f"Sam said again {canary}", None)


async def chat_in_terminal(app: App, pipe: PipeInput, canary: str) -> None:
    """sam types the canary in the interactive terminal (so it is in the input history)."""
    out = io.StringIO()
    adapter = interactive_terminal(app, pipe, stdout=out, user="sam")
    pipe.send_text(f"my favourite word is {canary}\r/quit\r")
    assert await asyncio.wait_for(adapter.run(), 10) == 0


async def test_memory_forget_on_the_command_line_leaves_no_trace(
    isolated_env: Path, pipe: PipeInput, tmp_path: Path
) -> None:
    canary = "canary" + uuid.uuid4().hex
    app = await create_app(make_settings(isolated_env), backend=FakeBackend())
    try:
        await chat_in_terminal(app, pipe, canary)
        await plant(app, canary)
    finally:
        await app.close()
    assert "terminal_history" in files_holding(isolated_env, canary)  # the control
    assert "chatcore.db" in files_holding(isolated_env, canary)
    stored = database_counts(isolated_env, SAM)

    exported = tmp_path / "sam.json"  # outside the data directory: it holds the canary
    done = run_chatcore(["memory", "export", "--user", "terminal:sam", "-o", str(exported)], "")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    data = json.loads(exported.read_text())
    counts = counts_of(data)
    assert stored == {
        "conversations": counts.conversations,
        "messages": counts.messages,
        "preferences": counts.preferences,
        "memories": counts.memories,
    }
    assert counts.messages == 2 + 240 + 1 and counts.conversations == 2
    assert canary in data["user"]["display_name"] and canary in data["memories"][0]["text"]

    done = run_chatcore(["memory", "forget", "--user", "terminal:sam", "--yes"], "")
    assert done.returncode == 0, done.stderr
    assert f"erased terminal:sam: {counts.describe()}" in done.stdout
    assert files_holding(isolated_env, canary) == []
    assert files_holding(isolated_env, canary[:16]) == []  # not even a fragment
    assert files_holding(isolated_env, BOB_MARK) == ["chatcore.db"]  # bob is untouched
    assert database_counts(isolated_env, UserKey.of(BOB))["messages"] == 120


async def test_forget_me_in_the_terminal_asks_for_a_code_then_leaves_no_trace(
    isolated_env: Path, pipe: PipeInput
) -> None:
    canary = "canary" + uuid.uuid4().hex
    app = await create_app(make_settings(isolated_env), backend=FakeBackend())
    try:
        out = io.StringIO()
        adapter = interactive_terminal(app, pipe, stdout=out, user="sam")
        running = asyncio.create_task(adapter.run())
        pipe.send_text(f"my secret is {canary}\r")
        await shown(out, "You said: my secret")
        await plant(app, canary)
        assert "terminal_history" in files_holding(isolated_env, canary)  # the control
        assert "chatcore.db" in files_holding(isolated_env, canary) or "chatcore.db-wal" in (
            files_holding(isolated_env, canary)
        )

        mark = len(out.getvalue())
        pipe.send_text("/forget-me\r")
        asked = await shown(out, r"243 messages in 2 conversations.*?/forget-me (\w{6})", mark)
        pipe.send_text("/forget-me 000000\r")
        await shown(out, "Nothing was erased: that code is wrong", mark)
        assert await app.engine.store.export_user(SAM) is not None
        pipe.send_text(f"/forget-me {asked.group(1)}\r")  # voided by the wrong one
        await shown(out, "Nothing was erased: that code has expired or was never given", mark)

        mark = len(out.getvalue())
        pipe.send_text("/forget-me\r")
        asked = await shown(out, r"/forget-me (\w{6}) within 5 minutes", mark)
        pipe.send_text(f"/forget-me {asked.group(1)}\r")
        await shown(out, "Erased everything stored about you: 243 messages", mark)
        assert files_holding(isolated_env, canary) == []  # while the bot still runs
        assert files_holding(isolated_env, BOB_MARK) == ["chatcore.db"]
        pipe.send_text("/quit\r")
        assert await asyncio.wait_for(running, 10) == 0
    finally:
        await app.close()
    assert files_holding(isolated_env, canary) == []


def _ask(app: App, user: str, text: str) -> asyncio.Future[str]:
    async def reply() -> str:
        message = Message(text=text, user=user, channel="dm", platform="discord")
        events = [event async for event in app.engine.handle(message)]
        final = events[-1]
        assert isinstance(final, Reply), final
        return final.text

    return asyncio.ensure_future(reply())


async def test_forget_me_codes_are_per_user_and_expire(fake_app: App) -> None:
    command = fake_app.plugins.commands.get("forget-me")
    assert isinstance(command, Command) and isinstance(command.handler, ForgetMe)
    now = [1000.0]
    command.handler.clock = lambda: now[0]
    asked = await _ask(fake_app, "ann", "/forget-me")  # plugins may keep something: a code
    assert asked.startswith("Nothing is stored about you, apart from what plugins may keep.")
    ann, cid = UserKey("discord", "ann"), UserKey("discord", "cid")
    for user in (ann, cid):
        await fake_app.engine.memories.remember(user, f"{user.user} likes tea")
        await fake_app.engine.store.set_preference(user, "tone", "formal")

    asked = await _ask(fake_app, "ann", "/forget-me")
    assert "0 messages in 0 conversations, 1 memory, 1 preference" in asked
    code = asked.split("/forget-me ")[1].split()[0]
    reply = await _ask(fake_app, "cid", f"/forget-me {code}")  # another user's code
    assert reply.startswith("Nothing was erased")
    now[0] += 301  # past the 5 minutes
    reply = await _ask(fake_app, "ann", f"/forget-me {code.lower()}")
    assert reply.startswith("Nothing was erased: that code has expired")
    assert await fake_app.engine.store.list_memories(ann) != []

    asked = await _ask(fake_app, "ann", "/forget-me")
    now[0] += 299
    code = asked.split("/forget-me ")[1].split()[0]
    assert (await fake_app.engine.memories.recall(ann, "tea"))[0].text == "ann likes tea"
    reply = await _ask(fake_app, "ann", f"/forget-me {code.lower()}")
    assert reply.startswith("Erased everything stored about you: 0 messages in 0 conv")
    assert await fake_app.engine.store.export_user(ann) is None
    assert ann not in fake_app.engine.memories._recall._indexes  # the cached index dropped
    assert await fake_app.engine.memories.recall(ann, "tea") == []
    assert [m.text for m in await fake_app.engine.memories.recall(cid, "tea")] == ["cid likes tea"]


async def test_the_user_erased_hook_reaches_plugins(fake_app: App) -> None:
    seen: list[tuple[UserKey, object]] = []

    class KeepsNotes:
        from chatcore import hookimpl

        @hookimpl
        def user_erased(self, user: UserKey, services: object) -> None:
            seen.append((user, services))

    fake_app.plugins.add_plugin(KeepsNotes(), "notes")
    try:
        await fake_app.engine.store.set_preference(SAM, "tone", "formal")
        erased = await fake_app.engine.services.privacy.erase(SAM)
    finally:
        fake_app.plugins.remove_plugin("notes")
    assert erased.counts.preferences == 1 and erased.failed_plugins == ()
    assert [user for user, _ in seen] == [SAM]
    assert seen[0][1] == fake_app.engine.services


# The command line: what it refuses, and how.


def test_memory_commands_say_what_is_wrong(isolated_env: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(cli, ["memory", "export", "--user", "sam"])
    assert bad.exit_code == 2 and "is not PLATFORM:ID" in bad.stderr
    missing = runner.invoke(cli, ["memory", "export", "--user", "terminal:sam"])
    assert missing.exit_code == 1 and "nothing is stored about terminal:sam" in missing.stderr
    assert not (isolated_env / "chatcore.db").exists()  # looking created nothing
    unusable = runner.invoke(
        cli,
        ["memory", "forget", "--user", "terminal:sam"],
        env={"CHATCORE_STORAGE__URL": "postgresql+psycopg://bot@127.0.0.1:1/chat"},
    )
    assert unusable.exit_code == 2 and "cannot open the database" in unusable.stderr


def test_memory_commands_echo_the_user_verbatim_and_name_the_database_plainly(
    isolated_env: Path,
) -> None:
    runner = CliRunner()
    for command in ("export", "forget"):
        shown = runner.invoke(cli, ["memory", command, "--help"], env={"COLUMNS": "200"})
        assert "PLATFORM:ID (e.g. discord:123456 or terminal:sam)" in shown.output
        assert "\N{SQUARED ID}" not in shown.output  # rich reads ":ID:" as an emoji code
    emoji = runner.invoke(cli, ["memory", "export", "--user", ":smile:"])
    assert emoji.exit_code == 2 and "':smile:' is not PLATFORM:ID" in emoji.stderr
    named = runner.invoke(cli, ["memory", "export", "--user", "terminal::smile:"])
    assert "nothing is stored about terminal::smile: in " in named.stderr
    spaced = runner.invoke(cli, ["memory", "export", "--user", "  terminal:sam "])
    assert spaced.exit_code == 1
    assert spaced.stderr.strip() == (
        f"error: nothing is stored about terminal:sam in {isolated_env / 'chatcore.db'}"
    )
    secret = runner.invoke(
        cli,
        ["memory", "export", "--user", "terminal:sam"],
        env={"CHATCORE_STORAGE__URL": "postgresql+psycopg://bot:hunter2@127.0.0.1:1/chat"},
    )
    assert secret.exit_code == 2
    assert "postgresql+psycopg://bot:********@127.0.0.1:1/chat" in secret.stderr
    assert "hunter2" not in secret.output + secret.stderr


async def test_forget_says_the_shared_terminal_history_is_emptied_too(
    isolated_env: Path, new_app: AppFactory
) -> None:
    app = await new_app(make_settings(isolated_env), store=None)  # SQLite in the home
    await app.engine.store.append(KEY, [ChatMessage("user", "hello")])
    await app.engine.store.append(
        ConversationKey("discord", "c", "42"), [ChatMessage("user", "hi")]
    )
    await app.close()
    runner = CliRunner()  # in a thread: the command runs an event loop of its own
    # Not on a terminal and without --yes: it says what it would erase, then erases nothing.
    terminal = await asyncio.to_thread(
        runner.invoke, cli, ["memory", "forget", "-u", "terminal:sam"]
    )
    assert terminal.exit_code == 2
    assert f"to erase: terminal:sam in {isolated_env / 'chatcore.db'}: 1 message" in terminal.stdout
    assert "input history will be emptied too" in terminal.stdout
    assert "shared by everyone who chats in the terminal" in terminal.stdout
    discord = await asyncio.to_thread(runner.invoke, cli, ["memory", "forget", "-u", "discord:42"])
    assert discord.exit_code == 2 and "to erase: discord:42" in discord.stdout
    assert "input history" not in discord.stdout
    assert database_counts(isolated_env, SAM)["messages"] == 1


async def test_forget_asks_on_a_terminal_and_refuses_without_one(
    isolated_env: Path, new_app: AppFactory
) -> None:
    app = await new_app(make_settings(isolated_env), store=None)  # SQLite in the home
    await app.engine.store.append(KEY, [ChatMessage("user", "hello")])
    await app.close()

    piped = run_chatcore(["memory", "forget", "--user", "terminal:sam"], "y\n")
    assert piped.returncode == 2 and "add --yes" in piped.stderr
    assert _on_a_terminal(["memory", "forget", "--user", "terminal:sam"], "n\n") == 1
    assert database_counts(isolated_env, SAM)["messages"] == 1  # nothing erased
    assert _on_a_terminal(["memory", "forget", "--user", "terminal:sam"], "y\n") == 0
    gone = run_chatcore(["memory", "export", "--user", "terminal:sam"], "")
    assert gone.returncode == 1


def _on_a_terminal(args: list[str], typed: str) -> int:
    """Run ``chatcore ARGS`` with a pseudo-terminal as its input, type ``typed``; exit code."""
    import pty

    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatcore.cli", *args],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.write(controller, typed.encode())
        process.communicate(timeout=120)
        return process.returncode
    finally:
        os.close(controller)
        os.close(terminal)


# Retention.


async def test_retention_prunes_old_messages_at_start_and_stops_on_close(
    isolated_env: Path, new_app: AppFactory
) -> None:
    settings = make_settings(isolated_env, memory={"retention_days": 30})
    app = await new_app(settings)
    store = app.engine.store
    await store.append(KEY, [ChatMessage("user", "old news")])
    await store.append(BOB, [ChatMessage("user", "old too")])
    await asyncio.sleep(0.01)  # the clock moves on, so the cutoff falls between the turns
    cutoff = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await store.append(KEY, [ChatMessage("user", "fresh")])
    # 30 days from now the cutoff is the moment between the old and the fresh messages.
    app.retention.clock = lambda: cutoff + timedelta(days=30)
    await app.start()
    await asyncio.wait_for(app.retention.passed.wait(), 10)
    assert app.retention.passes == 1
    assert [m.content for m in await store.history(KEY)] == ["fresh"]
    assert await store.history(BOB) == []
    await app.close()
    assert app.retention._task is None


async def test_retention_zero_keeps_everything(fake_app: App) -> None:
    assert fake_app.settings.memory.retention_days == 0
    await fake_app.engine.store.append(KEY, [ChatMessage("user", "kept")])
    assert await fake_app.retention.prune() == 0
    assert fake_app.retention._task is None
    assert len(await fake_app.engine.store.history(KEY)) == 1


@pytest.fixture(autouse=True)
def _no_model(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands run in child processes: never load a real model there."""
    monkeypatch.setenv("CHATCORE_MODEL__BACKEND", "fake")
