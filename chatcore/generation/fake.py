"""A scripted backend for tests: feed it replies with ``enqueue``, read what it was asked in
``calls``. Its tokenizer counts words, so budgets are easy to reason about in tests.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

from chatcore.config import GenerationSettings, Settings
from chatcore.events import FinishReason, Usage
from chatcore.generation.stops import StopStringFilter
from chatcore.generation.types import ChatMessage, Chunk, GenerationError, Unsupported

MESSAGE_OVERHEAD = 3
"""Tokens the fake chat template adds around each message (like ``<|im_start|>role\\n``)."""
GENERATION_PROMPT = 2
"""Tokens the fake chat template adds to open the assistant's turn."""


class WordTokenizer:
    """A ``ChatTokenizer`` where a token is a whitespace-separated word."""

    def __init__(self, context_window: int = 2048) -> None:
        self._context_window = context_window

    @property
    def context_window(self) -> int:
        return self._context_window

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        words = sum(len(m.content.split()) + MESSAGE_OVERHEAD for m in messages)
        return words + GENERATION_PROMPT


@dataclass(frozen=True, slots=True)
class FakeCall:
    """One request the fake backend received."""

    messages: list[ChatMessage]
    options: GenerationSettings


ScriptItem = str | BaseException


class FakeBackend:
    """A ``Backend`` that streams scripted chunks (one chunk counts as one token).

    With nothing enqueued it echoes: ``"You said: <last user message>"``, word by word. An
    exception in a script is raised at that point of the stream. ``delay`` seconds pass before
    each chunk, so tests can interleave conversations.
    """

    name = "fake"

    def __init__(self, *, context_window: int = 2048, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[FakeCall] = []
        self.loaded = False
        self.closed = False
        self.active = 0
        self.max_active = 0
        self._script: deque[list[ScriptItem]] = deque()
        self._tokenizer = WordTokenizer(context_window)

    @classmethod
    def from_settings(cls, settings: Settings) -> FakeBackend:
        return cls()

    def enqueue(self, chunks: Iterable[ScriptItem]) -> None:
        """Script the next reply."""
        self._script.append(list(chunks))

    async def load(self) -> None:
        self.loaded = True

    @property
    def tokenizer(self) -> WordTokenizer:
        return self._tokenizer

    async def stream(
        self, messages: Sequence[ChatMessage], options: GenerationSettings
    ) -> AsyncIterator[Chunk]:
        if not self.loaded:
            raise GenerationError("the fake backend was not loaded")
        self.calls.append(FakeCall(list(messages), options))
        script = self._script.popleft() if self._script else _echo(messages)
        stops = StopStringFilter(options.stop)
        produced = 0
        finish: FinishReason = "stop"
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            for item in script:
                if isinstance(item, BaseException):
                    raise item
                if produced >= options.max_new_tokens:
                    finish = "length"
                    break
                if self.delay:
                    await asyncio.sleep(self.delay)
                produced += 1
                text = stops.feed(item)
                if text:
                    yield Chunk(text)
                if stops.stopped:
                    break
            rest = stops.flush()
            if rest:
                yield Chunk(rest)
        finally:
            self.active -= 1
        usage = Usage(self._tokenizer.count_tokens(messages), produced)
        yield Chunk("", finish_reason=finish, usage=usage)

    def unsupported(self, options: GenerationSettings) -> list[Unsupported]:
        """None: the fake backend takes any options (it ignores the decoding ones)."""
        return []

    async def close(self) -> None:
        self.closed = True


def _echo(messages: Sequence[ChatMessage]) -> list[ScriptItem]:
    last = next((m.content for m in reversed(messages) if m.role == "user"), "")
    words = f"You said: {last}".split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]
