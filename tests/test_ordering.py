"""Per-conversation ordering across processes that share one database: many senders to one
conversation from two processes; a killed holder's lock; the busy reply; cancellation."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from chatcore.events import (
    ChatMessage,
    ConversationKey,
    Message,
    Reply,
    ReplyChunk,
    ReplyError,
    ReplyEvent,
)
from chatcore.generation.fake import FakeBackend
from chatcore.memory.base import ConversationBusyError
from chatcore.memory.locks import ConversationLocks
from chatcore.memory.sql import SqlStore
from tests.conftest import AppFactory, make_settings

CHILD = Path(__file__).with_name("ordering_child.py")
KEY = ConversationKey("ordering", "room", "sam")
SENDS = 12
"""Messages each of the two processes sends at once."""


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'shared.db'}"


def _child(*args: str, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args],
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _two_senders(url: str, tmp_path: Path, *extra: str) -> list[dict[str, Any]]:
    """Run two sending processes at once on ``url`` (``extra``: more arguments for each);
    every JSON line they printed."""
    children = [
        _child("send", url, str(tmp_path / name), name, str(SENDS), *extra, stdin=True)
        for name in ("one", "two")
    ]
    watchdogs = [threading.Timer(120, child.kill) for child in children]
    try:
        for watchdog in watchdogs:
            watchdog.start()
        for child in children:
            assert child.stdout is not None and child.stderr is not None
            assert child.stdout.readline() == "ready\n", child.stderr.read()
        for child in children:  # both have started: go
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=120) for child in children]
    finally:
        for watchdog in watchdogs:
            watchdog.cancel()
        for child in children:
            child.kill()
            child.wait()
    for child, (_, errors) in zip(children, outputs, strict=True):
        assert child.returncode == 0, errors
    return [json.loads(line) for out, _ in outputs for line in out.splitlines()]


async def test_one_conversation_stays_in_order_across_two_processes(
    shared_url: str, tmp_path: Path
) -> None:
    """Two processes send ``SENDS`` messages each, all at once, to one conversation: every
    prompt saw every earlier turn, and the stored turns alternate, each answer right after
    its question."""
    records = await asyncio.to_thread(_two_senders, shared_url, tmp_path)
    finals = [r for r in records if "final" in r]
    assert len(finals) == 2 * SENDS and all(r["final"] == "Reply" for r in finals), finals
    history = await _stored(shared_url)
    assert len(history) == 4 * SENDS
    questions, answers = history[0::2], history[1::2]
    assert {m.role for m in questions} == {"user"} and {m.role for m in answers} == {"assistant"}
    assert sorted(m.content for m in questions) == sorted(
        f"{name} message {n}" for name in ("one", "two") for n in range(SENDS)
    )
    assert [m.content for m in answers] == [f"You said: {m.content}" for m in questions]
    in_prompt = _history_in_prompts(records, questions)
    assert in_prompt == list(range(0, 4 * SENDS, 2)), in_prompt


async def test_without_the_lock_the_ordering_check_fails(shared_url: str, tmp_path: Path) -> None:
    """The negative control of the test above: with the conversation lock holding nothing, and
    the first turns of the two processes made to overlap, two prompts see the same history."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    records = await asyncio.to_thread(_two_senders, shared_url, tmp_path, "--no-lock", str(barrier))
    assert sorted(p.name for p in barrier.iterdir()) == ["one", "two"]  # both got there
    history = await _stored(shared_url)
    questions = [m for m in history if m.role == "user"]
    assert len(questions) == 2 * SENDS
    in_prompt = _history_in_prompts(records, questions)
    assert in_prompt != list(range(0, 4 * SENDS, 2))
    assert in_prompt.count(0) == 2, in_prompt  # both first prompts saw an empty conversation


async def _stored(url: str) -> list[ChatMessage]:
    """Every message of the conversation, oldest first."""
    store = SqlStore(url, history_limit=10**6)
    try:
        return await store.history(KEY)
    finally:
        await store.close()


def _history_in_prompts(records: list[dict[str, Any]], questions: list[ChatMessage]) -> list[int]:
    """How many history messages came before each stored question in its prompt."""
    seen = {r["prompt"]: r["history"] for r in records if "prompt" in r}
    return [seen[m.content] for m in questions]


async def test_a_lock_held_by_a_killed_process_is_free_again(shared_url: str) -> None:
    holder = _child("hold", shared_url)
    store = SqlStore(shared_url)
    try:
        assert holder.stdout is not None and holder.stderr is not None
        line = await asyncio.to_thread(holder.stdout.readline)
        assert line == "held\n", holder.stderr.read()
        with pytest.raises(ConversationBusyError):
            async with store.conversation_lock(KEY, 0):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        await asyncio.to_thread(holder.wait, 30)
        async with store.conversation_lock(KEY, 30):  # the OS or the server gave it back
            pass
    finally:
        holder.kill()
        holder.wait()
        await store.close()


def _message(text: str) -> Message:
    return Message(text, user=KEY.user, channel=KEY.channel, platform=KEY.platform)


async def _events(stream: Any) -> list[ReplyEvent]:
    return [event async for event in stream]


async def test_a_busy_conversation_gets_an_error_reply_past_the_wait(
    new_app: AppFactory, isolated_env: Path
) -> None:
    url = f"sqlite:///{isolated_env / 'chatcore.db'}"
    settings = make_settings(isolated_env, storage={"conversation_wait": 0.1})
    app = await new_app(settings, backend=FakeBackend(), store=SqlStore(url))
    await app.start()
    other = SqlStore(url)  # another process
    try:
        async with other.conversation_lock(KEY, 5):
            for text in ("hello", "/reset"):  # commands wait for the conversation too
                (error,) = await _events(app.engine.handle(_message(text)))
                assert isinstance(error, ReplyError) and error.code == "conversation_busy"
                assert "busy" in error.text
        assert await app.engine.store.history(KEY) == []
        *_, reply = await _events(app.engine.handle(_message("hello")))
        assert isinstance(reply, Reply) and reply.text == "You said: hello"
    finally:
        await other.close()


async def test_a_stopped_reply_gives_its_conversation_back(
    new_app: AppFactory, isolated_env: Path
) -> None:
    url = f"sqlite:///{isolated_env / 'chatcore.db'}"
    backend = FakeBackend(delay=0.05)
    app = await new_app(make_settings(isolated_env), backend=backend, store=SqlStore(url))
    await app.start()
    other = SqlStore(url)
    try:
        stream = app.engine.handle(_message("one two three four five six seven eight"))
        first = await anext(stream)
        assert isinstance(first, ReplyChunk)
        with pytest.raises(ConversationBusyError):  # held while the reply streams
            async with other.conversation_lock(KEY, 0):
                pass
        await stream.aclose()
        (stopped,) = await _events(stream)
        assert isinstance(stopped, ReplyError) and stopped.code == "cancelled"
        async with other.conversation_lock(KEY, 0):  # given back at once
            pass
    finally:
        await other.close()
    folder = isolated_env / "chatcore.db-locks"  # private, and nothing about users in names
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = list(folder.iterdir())
    assert len(files) == 1 and re.fullmatch(r"\d{4}\.lock", files[0].name)
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


class _GatedLocks:
    """Cross-process locks whose attempts wait for a gate, to cancel a caller mid-attempt."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.gate = asyncio.Event()
        self.given_back = asyncio.Event()
        self.held: set[int] = set()

    async def try_lock(self, lock_id: int) -> int | None:
        self.asked.set()
        await self.gate.wait()
        self.held.add(lock_id)
        return lock_id

    async def unlock(self, handle: int) -> None:
        self.held.discard(handle)
        self.given_back.set()

    async def close(self) -> None:
        pass


async def test_a_lock_taken_after_its_caller_left_is_given_back() -> None:
    """A message stopped while an attempt is at the database: the attempt goes on, and the
    lock it took is given back instead of being held by nobody."""
    across = _GatedLocks()
    locks = ConversationLocks(across)

    async def enter() -> None:
        async with locks.hold(KEY, 30):
            raise AssertionError("entered after being cancelled")

    caller = asyncio.create_task(enter())
    await asyncio.wait_for(across.asked.wait(), 10)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    across.gate.set()
    await asyncio.wait_for(across.given_back.wait(), 10)
    assert not across.held
    await locks.close()
