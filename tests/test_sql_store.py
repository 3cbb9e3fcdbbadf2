"""The conversation store: one behaviour suite run on the in-memory store, SQLite and a real
PostgreSQL server; then what only a database gives: restarts, migrations, locks, crashes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from chatcore.cli import app as cli
from chatcore.events import ChatMessage, ConversationKey
from chatcore.memory.base import (
    ConversationBusyError,
    ConversationStore,
    ErasedCounts,
    StoreError,
    Summary,
    UserKey,
    counts_of,
)
from chatcore.memory.database import is_transient, retrying
from chatcore.memory.inmemory import InMemoryConversationStore
from chatcore.memory.schema import (
    Base,
    ConversationRow,
    MemoryRow,
    MessageRow,
    PreferenceRow,
    UserRow,
)
from chatcore.memory.sql import SqlStore
from tests.conftest import run_chatcore

KEY = ConversationKey("terminal", "dm", "sam")
SAM = UserKey.of(KEY)
StoreFactory = Callable[..., ConversationStore]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
async def make_store(kind: str, url: str) -> AsyncIterator[StoreFactory]:
    """``make_store(limit=200)``: a store of this test's kind, closed after the test."""
    made: list[ConversationStore] = []

    def make(limit: int = 200) -> ConversationStore:
        store: ConversationStore
        if kind == "memory":
            store = InMemoryConversationStore(limit=limit)
        else:
            store = SqlStore(url, history_limit=limit)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> ConversationStore:
    return make_store()


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sql_url(sql_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if sql_kind == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
async def sql_stores(sql_url: str) -> AsyncIterator[Callable[[], SqlStore]]:
    """``sql_stores()``: another ``SqlStore`` on the same database (as another process would
    open it), closed after the test."""
    made: list[SqlStore] = []

    def make() -> SqlStore:
        made.append(SqlStore(sql_url))
        return made[-1]

    yield make
    for store in made:
        await store.close()


def turn(n: int) -> list[ChatMessage]:
    return [ChatMessage("user", f"question {n}"), ChatMessage("assistant", f"answer {n}")]


# The behaviour every store shares.


async def test_appended_messages_come_back_in_order_with_id_time_and_tokens(
    store: ConversationStore,
) -> None:
    assert await store.history(KEY) == []
    first = await store.append(KEY, [ChatMessage("user", "hi", tokens=4)])
    second = await store.append(KEY, turn(1))
    history = await store.history(KEY)
    assert history == [ChatMessage("user", "hi"), *turn(1)]
    assert [m.id for m in history] == [m.id for m in first + second]
    assert len({m.id for m in history}) == 3 and all(m.created for m in history)
    assert [m.tokens for m in history] == [4, None, None]
    ids = [int(m.id or 0) for m in history]
    assert ids == sorted(ids)
    assert await store.append(KEY, []) == []


async def test_conversations_are_kept_apart(store: ConversationStore) -> None:
    others = [
        ConversationKey("terminal", "other-channel", "sam"),
        ConversationKey("terminal", "dm", "alex"),
        ConversationKey("discord", "dm", "sam"),
    ]
    await store.append(KEY, turn(0))
    for n, other in enumerate(others, 1):
        await store.append(other, turn(n))
    assert await store.history(KEY) == turn(0)
    for n, other in enumerate(others, 1):
        assert await store.history(other) == turn(n)


async def test_reset_starts_a_new_conversation(store: ConversationStore) -> None:
    assert await store.reset(KEY) == 0
    await store.append(KEY, turn(1) + turn(2))
    await store.set_summary(KEY, "they talked", None)
    assert await store.reset(KEY) == 4
    assert await store.history(KEY) == []
    assert await store.get_summary(KEY) is None
    assert await store.reset(KEY) == 0
    await store.append(KEY, turn(3))
    assert await store.history(KEY) == turn(3)


async def test_token_counts_are_recorded_by_message_id(store: ConversationStore) -> None:
    stored = await store.append(KEY, turn(1))
    await store.set_tokens(KEY, {str(stored[1].id): 12, "999999": 5, "not-an-id": 1})
    assert [m.tokens for m in await store.history(KEY)] == [None, 12]


async def test_the_summary_belongs_to_the_current_conversation(store: ConversationStore) -> None:
    await store.set_summary(KEY, "nothing yet", None)  # no conversation: nothing happens
    assert await store.get_summary(KEY) is None
    stored = await store.append(KEY, turn(1))
    await store.set_summary(KEY, "sam asked a question", stored[-1].id)
    summary = await store.get_summary(KEY)
    assert summary is not None and summary.text == "sam asked a question"
    assert summary.through == stored[-1].id
    await store.set_summary(KEY, "replaced", None)
    assert await store.get_summary(KEY) == type(summary)("replaced", None)


async def test_a_summary_is_replaced_only_where_nothing_moved(store: ConversationStore) -> None:
    first = await store.append(KEY, turn(1))
    newest = first[-1].id
    assert newest is not None
    assert await store.replace_summary(KEY, "one", first[0].id, previous=None, newest=newest)
    one = await store.get_summary(KEY)
    assert one == Summary("one", first[0].id)
    # Another fold stored meanwhile: the summary is no longer the one this fold started from.
    assert not await store.replace_summary(KEY, "stale", newest, previous=None, newest=newest)
    assert not await store.replace_summary(
        KEY, "stale", newest, previous=Summary("one", None), newest=newest
    )
    assert await store.replace_summary(KEY, "two", newest, previous=one, newest=newest)
    two = await store.get_summary(KEY)
    assert two == Summary("two", newest)
    # A /reset and a new message: a new conversation, which does not hold the newest message.
    await store.reset(KEY)
    await store.append(KEY, turn(2))
    assert not await store.replace_summary(KEY, "old", newest, previous=None, newest=newest)
    assert not await store.replace_summary(KEY, "old", newest, previous=two, newest=newest)
    assert await store.get_summary(KEY) is None
    # No conversation at all.
    assert not await store.replace_summary(BOB, "bob", None, previous=None, newest=newest)
    assert await store.get_summary(BOB) is None


async def test_preferences_are_set_replaced_and_deleted_per_user(
    store: ConversationStore,
) -> None:
    alex = UserKey("terminal", "alex")
    assert await store.get_preferences(SAM) == {}
    learned = await store.set_preference(SAM, "language", "French", "learned")
    assert (learned.key, learned.value, learned.source) == ("language", "French", "learned")
    await store.set_preference(SAM, "name", "Sam")
    await store.set_preference(alex, "name", "Alex")
    replaced = await store.set_preference(SAM, "language", "German")
    assert replaced.updated >= learned.updated
    preferences = await store.get_preferences(SAM)
    assert list(preferences) == ["language", "name"]
    assert preferences["language"].value == "German"
    assert preferences["language"].source == "explicit"
    assert await store.delete_preference(SAM, "language") is True
    assert await store.delete_preference(SAM, "language") is False
    assert list(await store.get_preferences(SAM)) == ["name"]
    assert (await store.get_preferences(alex))["name"].value == "Alex"


async def test_memories_are_added_listed_and_deleted_per_user(store: ConversationStore) -> None:
    alex = UserKey("terminal", "alex")
    vector = bytes(range(16))
    rex = await store.add_memory(SAM, "my dog is called Rex", vector)
    assert (rex.text, rex.embedding, rex.dim) == ("my dog is called Rex", vector, 4)
    python = await store.add_memory(SAM, "I write Python", b"\0" * 8, dim=2)
    theirs = await store.add_memory(alex, "Alex likes tea", vector)
    assert [m.id for m in await store.list_memories(SAM)] == [rex.id, python.id]
    chosen = await store.list_memories(SAM, [python.id, theirs.id, rex.id, 10**9])
    assert [m.id for m in chosen] == [rex.id, python.id]  # only Sam's, oldest first
    assert await store.list_memories(SAM, []) == []
    assert await store.delete_memory(SAM, theirs.id) is False  # not Sam's to delete
    assert await store.delete_memory(SAM, rex.id) is True
    assert await store.delete_memory(SAM, rex.id) is False
    assert [m.text for m in await store.list_memories(SAM)] == ["I write Python"]
    assert [m.text for m in await store.list_memories(alex)] == ["Alex likes tea"]
    with pytest.raises(ValueError, match="cannot hold 3 values"):
        await store.add_memory(SAM, "bad", b"\0" * 8, dim=3)


async def test_history_is_the_newest_messages_up_to_the_limit(make_store: StoreFactory) -> None:
    store = make_store(limit=5)
    for n in range(4):
        await store.append(KEY, turn(n))
    history = await store.history(KEY)
    assert [m.content for m in history] == [
        "answer 1",
        "question 2",
        "answer 2",
        "question 3",
        "answer 3",
    ]


async def test_display_names_are_recorded(store: ConversationStore) -> None:
    await store.set_display_name(SAM, "Sam")
    await store.set_display_name(SAM, "Samantha")  # creating the user is not needed twice


# What only the database stores give.


async def test_history_survives_a_restart(sql_stores: Callable[[], SqlStore]) -> None:
    first = sql_stores()
    stored = await first.append(KEY, turn(1))
    await first.set_preference(SAM, "tone", "friendly")
    await first.close()
    second = sql_stores()
    history = await second.history(KEY)
    assert history == turn(1)
    assert [(m.id, m.created) for m in history] == [(m.id, m.created) for m in stored]
    assert (await second.get_preferences(SAM))["tone"].value == "friendly"


async def test_reset_keeps_the_old_conversation(sql_stores: Callable[[], SqlStore]) -> None:
    store = sql_stores()
    await store.append(KEY, turn(1))
    await store.reset(KEY)
    await store.append(KEY, turn(2))

    async def rows(session: object) -> list[tuple[int, bool]]:
        query = (
            select(MessageRow.conversation_id, ConversationRow.closed.is_not(None))
            .join(ConversationRow)
            .order_by(MessageRow.id)
        )
        result = await session.execute(query)  # type: ignore[attr-defined]
        return [(row[0], bool(row[1])) for row in result]

    found = await store.read(rows)
    old, new = found[0][0], found[-1][0]
    assert old != new
    assert found == [(old, True), (old, True), (new, False), (new, False)]


async def test_an_acknowledged_append_is_visible_to_another_process(
    sql_stores: Callable[[], SqlStore],
) -> None:
    writer, reader = sql_stores(), sql_stores()
    await reader.open()
    for n in range(3):
        await writer.append(KEY, turn(n))
        assert (await reader.history(KEY))[-2:] == turn(n)


async def test_a_cancelled_caller_does_not_cut_an_operation_short(
    sql_stores: Callable[[], SqlStore],
) -> None:
    """A reply stopped while its turn is being stored: the caller leaves, the write finishes,
    and the store closes cleanly (a cancelled driver call would drop its connection)."""
    store = sql_stores()
    await store.open()
    writing = asyncio.ensure_future(store.append(KEY, turn(1)))
    await asyncio.sleep(0)  # the write has started
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    reading = asyncio.ensure_future(store.history(KEY))
    await asyncio.sleep(0)
    reading.cancel()
    await store.close()
    again = sql_stores()
    assert await again.history(KEY) == turn(1)


async def test_concurrent_writers_share_one_open_conversation(
    sql_stores: Callable[[], SqlStore],
) -> None:
    """Two stores (as two processes) write to a conversation that does not exist yet: one
    conversation is opened, and every message is stored once."""
    one, two = sql_stores(), sql_stores()
    await asyncio.gather(one.open(), two.open())  # both migrate at once: one does the work
    writes = [
        store.append(KEY, [ChatMessage("user", f"{name} {n}")])
        for n in range(10)
        for name, store in (("one", one), ("two", two))
    ]
    stored = await asyncio.gather(*writes)
    ids = {m.id for batch in stored for m in batch}
    history = await one.history(KEY)
    assert len(ids) == 20 and {m.id for m in history} == ids

    async def open_conversations(session: object) -> int:
        query = select(func.count()).where(ConversationRow.closed.is_(None))
        return int(await session.scalar(query))  # type: ignore[attr-defined]

    assert await two.read(open_conversations) == 1


def _schema_diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_the_migrations_create_exactly_the_models(sql_stores: Callable[[], SqlStore]) -> None:
    """``alembic check``: autogenerate finds nothing to add after the shipped migrations."""
    store = sql_stores()
    await store.open()
    assert await store.revision() == ("0002", "0002")
    async with store.engine.connect() as connection:
        assert await connection.run_sync(_schema_diff) == []


async def test_every_sqlite_connection_is_configured(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'home' / 'chatcore.db'}")
    try:
        await store.open()
        path = tmp_path / "home" / "chatcore.db"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

        async def pragmas() -> list[object]:
            async with store.engine.connect() as connection:
                names = ("journal_mode", "busy_timeout", "foreign_keys", "secure_delete")
                values = [await connection.scalar(text(f"PRAGMA {n}")) for n in names]
                await asyncio.sleep(0.05)  # hold the connection, so that the others are new
                return values

        for values in await asyncio.gather(*(pragmas() for _ in range(3))):
            assert values == ["wal", 5000, 1, 1]
    finally:
        await store.close()


async def test_a_writer_waits_for_a_lock_held_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqlStore(f"sqlite:///{path}")
    try:
        await store.open()
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock...
        release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
        release.start()  # ...for a while
        try:
            stored = await store.append(KEY, turn(1))
        finally:
            release.join()
            other.close()
        assert await store.history(KEY) == turn(1) and len(stored) == 2
    finally:
        await store.close()


class _DriverError(Exception):
    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


async def test_transient_errors_are_tried_again_a_bounded_number_of_times() -> None:
    def failing(*errors: _DriverError) -> Callable[[], asyncio.Future[str]]:
        remaining = list(errors)
        calls = []

        async def operation() -> str:
            calls.append(1)
            if remaining:
                raise OperationalError("INSERT ...", {}, remaining.pop(0))
            return f"done after {len(calls)}"

        return operation  # type: ignore[return-value]

    locked = _DriverError("database is locked")
    serialization = _DriverError("could not serialize access", "40001")
    deadlock = _DriverError("deadlock detected", "40P01")
    assert await retrying(failing(locked, serialization, deadlock), pause=0) == "done after 4"
    assert is_transient(OperationalError("x", {}, locked))
    with pytest.raises(OperationalError, match="no such table"):
        await retrying(failing(_DriverError("no such table: users")), pause=0)
    with pytest.raises(OperationalError, match="database is locked"):
        await retrying(failing(*[locked] * 3), attempts=3, pause=0)


async def test_unusable_databases_say_what_to_check(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="supports sqlite:///PATH and postgresql"):
        SqlStore("mysql://root@localhost/chat")
    (tmp_path / "file").write_text("not a folder")
    for url, problem in [
        (f"sqlite:///{tmp_path / 'file' / 'chatcore.db'}", "File exists"),
        ("postgresql+psycopg://bot:hunter2@127.0.0.1:1/chat", "refused"),
    ]:
        store = SqlStore(url)
        try:
            with pytest.raises(StoreError, match="CHATCORE_STORAGE__URL") as raised:
                await store.open()
        finally:
            await store.close()
        assert problem in str(raised.value) and "hunter2" not in str(raised.value)


def test_db_commands_upgrade_and_show_the_revision(isolated_env: Path) -> None:
    runner = CliRunner()
    before = runner.invoke(cli, ["db", "current"])
    assert before.exit_code == 0 and "no tables yet" in before.stdout
    assert not (isolated_env / "chatcore.db").exists()
    upgraded = runner.invoke(cli, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert "upgraded from revision (empty) to 0002" in upgraded.stdout
    again = runner.invoke(cli, ["db", "upgrade"])
    assert "already at revision 0002" in again.stdout
    current = runner.invoke(cli, ["db", "current"])
    assert "revision 0002 (the newest)" in current.stdout
    bad = runner.invoke(cli, ["db", "upgrade"], env={"CHATCORE_STORAGE__URL": "mysql://x@y/z"})
    assert bad.exit_code == 2 and "supports sqlite" in bad.stderr


def test_chat_continues_after_a_restart_and_reset_keeps_the_old_one(isolated_env: Path) -> None:
    env = {"CHATCORE_MODEL__BACKEND": "fake"}
    for said in ("my name is Sam", "what is my name?", "/reset\nhello again"):
        done = run_chatcore(["chat", "--user", "sam"], f"{said}\n", **env)
        assert done.returncode == 0, done.stderr
    assert "previous one (4 messages)" in done.stdout
    with sqlite3.connect(isolated_env / "chatcore.db") as db:
        rows = db.execute(
            "SELECT c.id, c.closed IS NOT NULL, m.role, m.content FROM messages m "
            "JOIN conversations c ON c.id = m.conversation_id ORDER BY m.id"
        ).fetchall()
    old, new = rows[0][0], rows[-1][0]
    assert rows == [
        (old, 1, "user", "my name is Sam"),
        (old, 1, "assistant", "You said: my name is Sam"),
        (old, 1, "user", "what is my name?"),
        (old, 1, "assistant", "You said: what is my name?"),
        (new, 0, "user", "hello again"),
        (new, 0, "assistant", "You said: hello again"),
    ]


# Crash test: acknowledged turns survive SIGKILL.


def _crash_runs(url: str, runs: int, seed: int) -> dict[str, int]:
    """Start the child ``runs`` times, SIGKILL it at a random moment each time; return every
    acknowledged message id with its turn number."""
    rng = random.Random(seed)
    acknowledged: dict[str, int] = {}
    child = Path(__file__).with_name("store_crash_child.py")
    for run in range(runs):
        proc = subprocess.Popen(
            [sys.executable, str(child), url, str(run * 100_000)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        watchdog = threading.Timer(60, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            if run % 5 == 0:  # now and then while it starts, opens and migrates
                threading.Event().wait(rng.uniform(0.0, 0.8))
            else:
                assert proc.stdout.readline() == "ready\n", proc.stderr.read()  # type: ignore[union-attr]
                threading.Event().wait(rng.uniform(0.0, 0.25))
            os.kill(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate(timeout=30)
        finally:
            watchdog.cancel()
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        for line in out.splitlines(keepends=True):
            if line.endswith("\n") and line != "ready\n":
                message_id, number = line.split()
                acknowledged[message_id] = int(number)
    return acknowledged


async def _check_after_crashes(url: str, acknowledged: dict[str, int]) -> None:
    store = SqlStore(url, history_limit=10**9)
    try:
        history = await store.history(ConversationKey("crash", "channel", "writer"))
    finally:
        await store.close()
    stored = {m.id: m.content for m in history}
    missing = [i for i in acknowledged if i not in stored]
    assert not missing, f"{len(missing)} acknowledged turns lost, e.g. {missing[:5]}"
    assert all(stored[i] == f"turn {n}" for i, n in acknowledged.items())


async def test_acknowledged_turns_survive_sigkill_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    url = f"sqlite:///{path}"
    acknowledged = await asyncio.to_thread(_crash_runs, url, 20, seed=13)
    assert len(acknowledged) > 20  # the kills landed while it was writing
    await _check_after_crashes(url, acknowledged)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


async def test_acknowledged_turns_survive_sigkill_on_postgresql(postgres_url: str) -> None:
    acknowledged = await asyncio.to_thread(_crash_runs, postgres_url, 4, seed=31)
    assert len(acknowledged) > 4
    await _check_after_crashes(postgres_url, acknowledged)


# Privacy: export, erase, retention (every store).

BOB = ConversationKey("terminal", "dm", "bob")
ALICE = ConversationKey("terminal", "dm", "alice")


async def _plant(store: ConversationStore, key: ConversationKey, word: str) -> None:
    user = UserKey.of(key)
    await store.append(key, [ChatMessage("user", f"{word} one"), ChatMessage("assistant", "ok")])
    await store.append(ConversationKey(key.platform, "general", key.user), turn(9))
    await store.set_summary(key, f"{word} summary", None)
    await store.set_display_name(user, f"{word} name")
    await store.set_preference(user, "tone", "formal")
    await store.set_preference(user, "name", word, "learned")
    await store.add_memory(user, f"{word} memory", b"\0" * 8)


async def test_export_holds_everything_about_the_user(store: ConversationStore) -> None:
    await _plant(store, KEY, "sam")
    await _plant(store, BOB, "bob")
    data = await store.export_user(SAM)
    assert data is not None and await store.export_user(UserKey("terminal", "nobody")) is None
    assert (data["format"], data["version"]) == ("chatcore-user-export", 1)
    assert data["user"]["platform"] == "terminal" and data["user"]["id"] == "sam"
    assert data["user"]["display_name"] == "sam name"
    assert [(p["key"], p["value"], p["source"]) for p in data["preferences"]] == [
        ("name", "sam", "learned"),
        ("tone", "formal", "explicit"),
    ]
    assert [m["text"] for m in data["memories"]] == ["sam memory"]
    assert all("embedding" not in m for m in data["memories"])
    dm, general = data["conversations"]
    assert (dm["channel"], dm["summary"], general["channel"]) == ("dm", "sam summary", "general")
    assert [(m["role"], m["content"]) for m in dm["messages"]] == [
        ("user", "sam one"),
        ("assistant", "ok"),
    ]
    assert [m["content"] for m in general["messages"]] == ["question 9", "answer 9"]
    assert json.loads(json.dumps(data)) == data  # JSON-ready as it is


async def test_erase_removes_the_user_and_leaves_others_untouched(
    store: ConversationStore,
) -> None:
    await _plant(store, KEY, "sam")
    await _plant(store, BOB, "bob")
    bob_before = await store.export_user(UserKey.of(BOB))
    sam = await store.export_user(SAM)
    assert sam is not None
    counts = await store.erase_user(SAM)
    assert counts == counts_of(sam)
    assert counts == ErasedCounts(users=1, conversations=2, messages=4, preferences=2, memories=1)
    assert await store.export_user(SAM) is None
    assert await store.history(KEY) == [] and await store.get_preferences(SAM) == {}
    assert await store.list_memories(SAM) == [] and await store.get_summary(KEY) is None
    assert await store.export_user(UserKey.of(BOB)) == bob_before
    assert await store.erase_user(SAM) == ErasedCounts()


async def test_erase_counts_match_the_database(sql_stores: Callable[[], SqlStore]) -> None:
    store = sql_stores()
    await _plant(store, KEY, "sam")
    await store.reset(KEY)
    await store.append(KEY, turn(1))
    await _plant(store, BOB, "bob")

    async def rows(session: AsyncSession) -> dict[str, int]:
        tables = [UserRow, ConversationRow, MessageRow, PreferenceRow, MemoryRow]
        return {
            t.__tablename__: await session.scalar(select(func.count()).select_from(t)) or 0
            for t in tables
        }

    before = await store.read(rows)
    data = await store.export_user(SAM)
    assert data is not None and len(data["conversations"]) == 3
    assert data["conversations"][0]["closed"] is not None
    counts = await store.erase_user(SAM)
    after = await store.read(rows)
    assert counts == counts_of(data)
    assert {name: before[name] - after[name] for name in before} == {
        "users": counts.users,
        "conversations": counts.conversations,
        "messages": counts.messages,
        "preferences": counts.preferences,
        "memories": counts.memories,
    }
    assert after["users"] == 1 and counts.clean


async def test_prune_deletes_only_messages_older_than_the_cutoff(
    store: ConversationStore, kind: str
) -> None:
    await store.append(KEY, turn(1))
    await store.append(BOB, turn(1))
    await store.set_summary(BOB, "bob summary", None)
    await asyncio.sleep(0.01)  # the clock moves on, so the cutoff falls between the turns
    cutoff = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await store.append(KEY, turn(2))
    assert await store.prune_messages(cutoff) == 4
    assert await store.history(KEY) == turn(2)
    assert await store.history(BOB) == [] and await store.get_summary(BOB) is None
    bob = await store.export_user(UserKey.of(BOB))
    if kind != "memory":  # the in-memory store keeps no user apart from their data
        assert bob is not None and bob["conversations"] == []  # emptied: gone; the user stays
    assert await store.prune_messages(cutoff) == 0


async def test_prune_drops_the_summary_that_covers_a_pruned_message(
    store: ConversationStore, url: str, kind: str
) -> None:
    old = await store.append(KEY, [ChatMessage("user", "my passport is CANARY123"), *turn(0)])
    await store.set_summary(KEY, "- The user: my passport is CANARY123", old[0].id)
    await store.append(BOB, turn(1))
    await store.set_summary(BOB, "bob summary", None)
    await asyncio.sleep(0.01)  # the clock moves on, so the cutoff falls between the turns
    cutoff = datetime.now(UTC)
    await asyncio.sleep(0.01)
    newer = await store.append(KEY, turn(2))
    await store.append(BOB, turn(2))
    await store.set_summary(BOB, "bob summary", None)  # says not what it covers: it goes
    await store.append(ALICE, turn(3))
    await store.set_summary(ALICE, "alice summary", None)  # nothing of hers is pruned: it stays
    assert await store.prune_messages(cutoff) == 5
    assert await store.history(KEY) == newer and await store.get_summary(KEY) is None
    assert await store.get_summary(BOB) is None
    assert await store.get_summary(ALICE) is not None
    await store.set_summary(KEY, "recent", newer[-1].id)
    await store.append(KEY, turn(4))
    assert await store.prune_messages(cutoff) == 0
    assert await store.get_summary(KEY) is not None  # covers only what was kept
    await store.close()
    if kind == "sqlite":
        files = [p for p in Path(url.removeprefix("sqlite:///")).parent.iterdir() if p.is_file()]
        assert files and not [p.name for p in files if b"CANARY123" in p.read_bytes()]


# Conversation locks: one message of a conversation at a time (tests/test_ordering.py has the
# cross-process tests).


async def _busy(store: ConversationStore, key: ConversationKey = KEY) -> bool:
    """Whether the conversation's lock is held elsewhere (one attempt, no waiting)."""
    try:
        async with store.conversation_lock(key, 0):
            return False
    except ConversationBusyError:
        return True


async def test_a_conversation_lock_is_held_until_it_is_given_back(
    store: ConversationStore,
) -> None:
    other = ConversationKey("terminal", "dm", "alex")
    async with store.conversation_lock(KEY, 5):
        assert await _busy(store)
        assert not await _busy(store, other)  # other conversations go on
        with pytest.raises(ConversationBusyError, match=r"busy.*storage\.conversation_wait"):
            async with store.conversation_lock(KEY, 0.05):
                pass
    assert not await _busy(store)


async def test_a_waiter_gets_the_lock_once_it_is_given_back(store: ConversationStore) -> None:
    order: list[str] = []
    holding = asyncio.Event()

    async def first() -> None:
        async with store.conversation_lock(KEY, 5):
            holding.set()
            await asyncio.sleep(0.05)
            order.append("first done")

    async def second() -> None:
        await holding.wait()
        async with store.conversation_lock(KEY, 30):
            order.append("second in")

    await asyncio.gather(first(), second())
    assert order == ["first done", "second in"]


async def test_a_cancelled_waiter_gives_back_nothing_it_did_not_take(
    store: ConversationStore,
) -> None:
    async with store.conversation_lock(KEY, 5):
        entered = []

        async def wait() -> None:
            async with store.conversation_lock(KEY, 30):
                entered.append(True)

        waiter = asyncio.create_task(wait())
        await asyncio.sleep(0.05)  # waiting by now (and if not, cancelled before it waits)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await _busy(store) and not entered
    assert not await _busy(store)


async def test_stores_on_one_database_take_turns_like_processes(
    sql_stores: Callable[[], SqlStore],
) -> None:
    """Each store stands for a process: its locks are its own (a file it opened, a database
    session of its own), so a waiter in one, cancelled, leaves the other's lock alone."""
    one, two, three = sql_stores(), sql_stores(), sql_stores()
    async with one.conversation_lock(KEY, 5):
        assert await _busy(two)
        waiter = asyncio.create_task(_busy_until_cancelled(two))
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await _busy(three) and await _busy(two)
        handed = asyncio.create_task(_enter(three, 30))
    assert await handed  # the waiter in another "process" got it once it was free
    assert not await _busy(two)


async def _busy_until_cancelled(store: SqlStore) -> None:
    async with store.conversation_lock(KEY, 300):
        raise AssertionError("the lock was held elsewhere")


async def _enter(store: SqlStore, wait: float) -> bool:
    async with store.conversation_lock(KEY, wait):
        return True
