"""Rolling summaries of the turns that no longer fit the prompt, made in the background.

The summary is extractive (no model): the gist of each message that fell out, capped in tokens.
It is instant, deterministic, and never competes with replies for the model (docs/memory.md).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol

from chatcore.events import ChatMessage, ConversationKey
from chatcore.memory.barrier import EraseBarrier, UserErasedError
from chatcore.memory.base import ConversationStore, Summary, UserKey

log = logging.getLogger(__name__)

HEADING = "Earlier in this conversation, in short:"
GIST_WORDS = 30
"""Most words kept of one message."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_WHO = {"user": "- The user: ", "assistant": "- You: "}


class Summarizer(Protocol):
    """Folds messages that fell out of the prompt into the previous summary ("" for none)."""

    async def __call__(self, previous: str, messages: Sequence[ChatMessage]) -> str: ...


def gist(text: str, words: int = GIST_WORDS) -> str:
    """The first sentence of ``text`` on one line, cut to ``words`` words (with " …")."""
    flat = " ".join(text.split())
    first = _SENTENCE_END.split(flat, maxsplit=1)[0]
    kept = first.split(" ")
    return " ".join(kept[:words]) + " …" if len(kept) > words else first


def fold(
    previous: str, messages: Sequence[ChatMessage], cap: int, cost: Callable[[str], int]
) -> str:
    """The summary of ``previous`` plus ``messages``: a heading, then one line per message,
    oldest first, within ``cap`` tokens as ``cost`` counts them. Over the cap, the oldest
    replies go first (what the user asked carries the topic), then the oldest lines; "" when
    not even one line fits."""
    lines = [line for line in previous.splitlines() if line.strip() and line != HEADING]
    for message in messages:
        who = _WHO.get(message.role)
        text = gist(message.content)
        if who is not None and text:
            lines.append(who + text)
    # Estimated from the (remembered) cost of each line, then checked on the whole text.
    sizes = [cost(line) + 1 for line in lines]
    budget = cap - cost(HEADING) - 1
    replies = [i for i, line in enumerate(lines) if line.startswith(_WHO["assistant"])]
    dropped: set[int] = set()
    total = sum(sizes)
    for index in [*replies, *range(len(lines))]:
        if total <= budget:
            break
        if index not in dropped:
            dropped.add(index)
            total -= sizes[index]
    kept = [line for i, line in enumerate(lines) if i not in dropped]
    while kept and cost(_render(kept)) > cap:  # bounded: one line fewer each time
        kept.pop(0)
    return _render(kept)


def _render(lines: Sequence[str]) -> str:
    return "\n".join([HEADING, *lines]) if lines else ""


class ExtractiveSummarizer:
    """The default summarizer: ``fold`` in a worker thread (token counting is CPU work)."""

    def __init__(self, cap: int, cost: Callable[[str], int]) -> None:
        self.cap = cap
        self.cost = cost

    async def __call__(self, previous: str, messages: Sequence[ChatMessage]) -> str:
        return await asyncio.to_thread(fold, previous, messages, self.cap, self.cost)


def uncovered(history: Sequence[ChatMessage], summary: Summary | None) -> list[ChatMessage]:
    """The messages of ``history`` after the one the summary covers through. Positions in the
    history are the order; a ``through`` not in it is older than all of it (left out by the
    history limit or pruned), so then the whole history is newer."""
    if summary is None or summary.through is None:
        return list(history)
    for index, message in enumerate(history):
        if message.id == summary.through:
            return list(history[index + 1 :])
    return list(history)


class RollingSummaries:
    """Keeps each conversation's rolling summary: reads it for the prompt, and after a reply
    folds the messages the prompt left out into it, in a background task (at most one per
    conversation) that no reply waits for. Failures are logged; the reply never sees them.

    ``history_limit`` is how many messages the store's ``history`` returns: messages about to
    pass it are folded too, even when the prompt still had room for them."""

    def __init__(
        self,
        store: ConversationStore,
        *,
        enabled: bool = True,
        history_limit: int = 200,
        barrier: EraseBarrier | None = None,
    ) -> None:
        self.store = store
        self.enabled = enabled
        self.history_limit = history_limit
        self.barrier = barrier or EraseBarrier()
        """A fold writes nothing when its user was erased after the turn that started it."""
        self.summarizer: Summarizer | None = None
        """Set when the engine starts (it needs the context's tokenizer); tests may replace it."""
        self._tasks: dict[ConversationKey, asyncio.Task[None]] = {}
        self._stopped = False

    async def current(
        self, key: ConversationKey, history: Sequence[ChatMessage]
    ) -> tuple[Summary | None, list[ChatMessage]]:
        """The conversation's summary (None when off, absent or unreadable) and the messages
        of ``history`` it does not cover, which are all the prompt needs of the history."""
        if not self.enabled:
            return None, list(history)
        try:
            summary = await self.store.get_summary(key)
        except Exception:
            log.warning("reading the summary of %s failed; going on without it", key, exc_info=True)
            return None, list(history)
        return summary, uncovered(history, summary)

    def update(
        self,
        key: ConversationKey,
        summary: Summary | None,
        history: Sequence[ChatMessage],
        dropped: int,
    ) -> None:
        """Start folding into ``summary`` the ``dropped`` oldest messages of ``history`` (the
        messages ``current`` returned, which the prompt was built from, then the turn just
        stored) and those the store will no longer return; return at once. Skipped while a
        fold of this conversation runs: the next reply folds what is still left out."""
        messages = [m for m in history if m.role != "system"]
        left_out = messages[: max(dropped, len(messages) - self.history_limit)]
        if (
            not self.enabled
            or self._stopped
            or self.summarizer is None
            or not left_out
            or left_out[-1].id is None
            or history[-1].id is None
            or key in self._tasks
        ):
            return
        fold = self._fold(self.summarizer, key, summary, left_out, history[-1].id)
        task = asyncio.create_task(fold)
        self._tasks[key] = task
        task.add_done_callback(partial(self._done, key))

    async def wait(self) -> None:
        """Return when the folds now in flight have ended."""
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    def stop(self) -> list[asyncio.Task[None]]:
        """Start no more folds and cancel those in flight; returns them, to be awaited."""
        self._stopped = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        return tasks

    async def _fold(
        self,
        summarizer: Summarizer,
        key: ConversationKey,
        summary: Summary | None,
        left_out: list[ChatMessage],
        newest: str,
    ) -> None:
        through = left_out[-1].id
        try:
            text = await summarizer("" if summary is None else summary.text, left_out)
            # Stored only where nothing moved meanwhile: no newer summary (an earlier fold, or
            # another process) and the same conversation, which still holds the newest message
            # (no /reset). Checked and written at once by the store; else the next reply folds.
            async with self.barrier.guarded(UserKey.of(key)):
                stored = await self.store.replace_summary(
                    key, text, through, previous=summary, newest=newest
                )
            if not stored:
                log.debug("the summary of %s changed meanwhile; left to the next fold", key)
        except UserErasedError:
            log.info("%s: the user was erased; the summary being made is dropped", key)
        except Exception:
            log.warning(
                "summarising old turns of %s failed; kept the last summary", key, exc_info=True
            )

    def _done(self, key: ConversationKey, task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
