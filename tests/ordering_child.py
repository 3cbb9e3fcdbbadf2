"""Child processes of the ordering tests (tests/test_ordering.py).

``send URL HOME NAME COUNT``: an app on the fake backend (slow, so that turns overlap) and the
shared database; prints ``ready``, waits for a line on stdin, then sends COUNT messages to one
conversation at once. Prints a JSON line per prompt the backend got (the new message and how
many history messages came before it), then one per reply (``final``: its type and text).

``send URL HOME NAME COUNT --no-lock BARRIER``: the same with the conversation lock replaced by
one that holds nothing (the negative control); each process's first prompt then waits (at most
30 seconds) until both processes have made theirs, each marked by a file in the folder BARRIER,
so that the two turns certainly overlap.

``hold URL``: takes that conversation's lock, prints ``held`` and sleeps until it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from chatcore.app import create_app
from chatcore.config import GenerationSettings, Settings
from chatcore.events import ChatMessage, ConversationKey, Message, Reply, ReplyError
from chatcore.generation.fake import FakeBackend
from chatcore.generation.types import Chunk
from chatcore.memory.sql import SqlStore

PLATFORM, CHANNEL, USER = "ordering", "room", "sam"
DELAY = 0.005
"""Seconds before each chunk of a reply (about six chunks each)."""


class RecordingBackend(FakeBackend):
    """The echoing fake backend, printing what each prompt held; with a ``barrier`` folder,
    the first prompt waits there for the other process's first prompt."""

    def __init__(self, *, barrier: Path | None = None, name: str = "", delay: float) -> None:
        super().__init__(delay=delay)
        self.barrier = barrier
        self.name = name

    def stream(
        self, messages: Sequence[ChatMessage], options: GenerationSettings
    ) -> AsyncIterator[Chunk]:
        history = sum(1 for m in messages if m.role != "system") - 1
        print(json.dumps({"prompt": messages[-1].content, "history": history}), flush=True)
        return self._after_barrier(super().stream(messages, options))

    async def _after_barrier(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        barrier, self.barrier = self.barrier, None
        if barrier is not None:
            (barrier / self.name).touch()
            for _ in range(3000):  # bounded: 30 seconds
                if len(list(barrier.iterdir())) >= 2:
                    break
                await asyncio.sleep(0.01)
        async for chunk in chunks:
            yield chunk


def _no_lock(
    key: ConversationKey, wait: float, *, queued: bool = False
) -> AbstractAsyncContextManager[None]:
    return contextlib.nullcontext()


def _message(text: str) -> Message:
    return Message(text, user=USER, channel=CHANNEL, platform=PLATFORM)


async def send(url: str, home: str, name: str, count: int, barrier: Path | None) -> None:
    settings = Settings(
        home=home,
        model={"backend": "fake"},
        storage={"url": url},
        memory={"embedder": "hashing", "learn": False, "recall": 0},
    )
    backend = RecordingBackend(barrier=barrier, name=name, delay=DELAY)
    app = await create_app(settings, backend=backend)
    if barrier is not None:
        app.engine.store.conversation_lock = _no_lock  # type: ignore[method-assign]
    try:
        await app.start()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # go: both processes start together
        streams = [app.engine.handle(_message(f"{name} message {n}")) for n in range(count)]

        async def final(stream: AsyncIterator[object]) -> Reply | ReplyError:
            last = None
            async for event in stream:
                if isinstance(event, Reply | ReplyError):
                    last = event
            assert last is not None
            return last

        for event in await asyncio.gather(*(final(s) for s in streams)):
            print(json.dumps({"final": type(event).__name__, "text": event.text}), flush=True)
    finally:
        await app.close()


async def hold(url: str) -> None:
    store = SqlStore(url)
    key = _message("-").conversation
    async with store.conversation_lock(key, 30):
        print("held", flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    if sys.argv[1] == "send":
        no_lock = sys.argv[6:7] == ["--no-lock"]
        barrier = Path(sys.argv[7]) if no_lock else None
        asyncio.run(send(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), barrier))
    else:
        asyncio.run(hold(sys.argv[2]))
