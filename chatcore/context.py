"""The context builder: fits system prompt, history and the new message into the token budget.

Counts with the model's own tokenizer and chat template, so the budget is exact in tokens.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from chatcore.config import ConfigError
from chatcore.events import ChatMessage
from chatcore.generation.types import ChatTokenizer


class MessageTooLongError(Exception):
    """The new message does not fit the context window even with no history at all."""

    def __init__(self, tokens: int, budget: int, window: int, reserve: int) -> None:
        self.tokens, self.budget, self.window, self.reserve = tokens, budget, window, reserve
        super().__init__(
            f"Your message is too long: with the system prompt it takes {tokens} tokens, and at "
            f"most {budget} fit ({window}-token context window minus {reserve} kept for the "
            f"reply). Shorten it by at least {tokens - budget} tokens, or split it up."
        )


class SystemPromptTooLongError(Exception):
    """The system prompt (with what plugins added) leaves no room for any message."""

    def __init__(self, tokens: int, budget: int) -> None:
        self.tokens, self.budget = tokens, budget
        super().__init__(
            f"The system prompt (context.system_prompt plus what plugins added) takes {tokens} "
            f"tokens, and at most {budget} fit with a message; shorten it, lower "
            "generation.max_new_tokens or raise context.window."
        )


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt ready for a backend, with its exact size."""

    messages: list[ChatMessage]
    tokens: int
    budget: int
    dropped: int
    """History messages left out because they did not fit."""
    trimmed: int = 0
    """Extension and recall texts left out, or cut, to stay within their share."""


@dataclass(frozen=True, slots=True)
class Sections:
    """What goes into a prompt besides the history and the new message, in prompt order:
    stable parts first (they open the system message), what changes every turn last (recalled
    memories sit right before the new message), so a kept KV cache stays valid longest."""

    system_prompt: str = ""
    preferences: Sequence[str] = ()
    """Lines about the user (name, reply language, length, tone); kept whole."""
    summary: str = ""
    """The rolling summary of turns that no longer fit: a heading line, then one line per
    point, oldest first. Over its share of the budget its oldest lines go first."""
    extensions: Sequence[str] = ()
    """Texts from ``extend_system_prompt`` hooks, trimmed to their share of the budget."""
    recalled: Sequence[str] = ()
    """Recalled memories, most relevant first; the least relevant go first when space is short."""


SUMMARY_SHARE = 0.15
"""Share of the prompt budget the rolling summary may take, so recent turns keep most of it."""
_CACHE_SIZE = 20_000
"""Token costs of this many distinct messages are remembered."""


class ContextBuilder:
    """Builds prompts of at most ``window - reserve`` tokens: the system message (system
    prompt, preferences, summary within ``summary_share`` of the budget, plugin extensions
    within ``extra_share``), the
    newest whole turns that fit, recalled memories (within the same share) and the new message.

    Token costs of history messages are counted once and remembered (or taken from
    ``ChatMessage.tokens``); the chosen prompt is then counted exactly. Thread-safe: the engine
    builds prompts in a worker thread, off the event loop."""

    def __init__(
        self,
        tokenizer: ChatTokenizer,
        *,
        reserve: int,
        window: int = 0,
        extra_share: float = 0.25,
        summary_share: float = SUMMARY_SHARE,
    ) -> None:
        model_window = tokenizer.context_window
        self.window = min(window, model_window) if window > 0 else model_window
        self.reserve = reserve
        self.budget = self.window - reserve
        if self.budget <= 0:
            raise ConfigError(
                [
                    f"config error: generation.max_new_tokens = {reserve} leaves no room for a "
                    f"prompt in the {self.window}-token context window; lower it"
                    + (" or raise context.window" if self.window < model_window else "")
                ]
            )
        self.tokenizer = tokenizer
        self.extra_share = extra_share
        self.summary_cap = int(self.budget * summary_share)
        """Most tokens the rolling summary may take."""
        self._costs: OrderedDict[bytes, int] = OrderedDict()
        """Token costs by a digest of (system, role, content): no text is kept (it may be
        erased), and 20k entries stay small however long the messages are."""
        self._lock = threading.Lock()

    def check_system_prompt(self, system_prompt: str) -> None:
        """Refuse, at start, a configured system prompt that leaves no room for any message."""
        head = [ChatMessage("system", system_prompt)] if system_prompt else []
        bare = self.tokenizer.count_tokens([*head, ChatMessage("user", "")])
        if bare >= self.budget:
            raise ConfigError(
                [
                    f"config error: context.system_prompt takes {bare} tokens with an empty "
                    f"message, and at most {self.budget} fit (context.window minus "
                    "generation.max_new_tokens); shorten it, lower generation.max_new_tokens "
                    "or raise context.window"
                ]
            )

    def build(
        self,
        system_prompt: str | Sections,
        history: Sequence[ChatMessage],
        text: str,
    ) -> Prompt:
        """The prompt for ``text``: the system message (always kept), then as many of the newest
        whole turns of ``history`` as fit, then the new user message (with recalled memories
        before it). ``system_prompt`` is the plain system prompt or all the ``Sections``."""
        sections = system_prompt if isinstance(system_prompt, Sections) else Sections(system_prompt)
        stable = "\n\n".join(
            part for part in (sections.system_prompt, *sections.preferences) if part.strip()
        )
        tail = [ChatMessage("user", text)]
        bare = self._count([*self._head(stable), ChatMessage("user", "")])
        if bare >= self.budget:
            raise SystemPromptTooLongError(bare, self.budget)
        smallest = self._count([*self._head(stable), *tail])
        if smallest > self.budget:
            raise MessageTooLongError(smallest, self.budget, self.window, self.reserve)
        if sections.summary.strip():
            room = min(self.summary_cap, self.budget - smallest)
            stable = self._with_summary(stable, sections.summary, room, tail)
            smallest = self._count([*self._head(stable), *tail])

        # Plugin extensions and recalled memories share ``extra_share`` of the budget, and
        # never more than what is left beside the new message: trimmed, never an error.
        allowance = min(int(self.budget * self.extra_share), self.budget - smallest)
        extensions, trimmed = self._fit(stable, list(sections.extensions), allowance, tail)
        system = "\n\n".join(p for p in (stable, *extensions) if p.strip())
        head = self._head(system)
        spent = self._count([*head, *tail]) - smallest
        recalled, dropped_recalls = self._fit_recalled(
            head, list(sections.recalled), allowance - spent, text
        )
        trimmed += dropped_recalls
        tail = [ChatMessage("user", _with_recalled(recalled, text))]

        base = self._count([*head, *tail])
        turns = split_turns(history)
        kept = self._newest_turns(head, turns, tail, self.budget - base)
        messages = [*head, *_flatten(turns[len(turns) - kept :] if kept else []), *tail]
        tokens = self._count(messages)
        return Prompt(
            messages=messages,
            tokens=tokens,
            budget=self.budget,
            dropped=len([m for m in history if m.role != "system"])
            - (len(messages) - len(head) - 1),
            trimmed=trimmed,
        )

    def text_cost(self, text: str) -> int:
        """The tokens ``text`` adds to the system message (about: joins may differ by one)."""
        return self.cost(ChatMessage("system", text)) - self.cost(ChatMessage("system", ""))

    def cost(self, message: ChatMessage, system: str = "") -> int:
        """The tokens ``message`` adds to a prompt (remembered; ``message.tokens`` when set)."""
        if message.tokens is not None:
            return message.tokens
        key = _cache_key(system, message.role, message.content)
        with self._lock:
            known = self._costs.get(key)
            if known is not None:
                self._costs.move_to_end(key)
                return known
        head, probe = self._head(system), ChatMessage("user", "x")
        value = self._count([*head, message, probe]) - self._count([*head, probe])
        with self._lock:
            self._costs[key] = value
            while len(self._costs) > _CACHE_SIZE:
                self._costs.popitem(last=False)
        return value

    # -- internals -----------------------------------------------------------------------------

    def _count(self, messages: Sequence[ChatMessage]) -> int:
        return self.tokenizer.count_tokens(messages)

    @staticmethod
    def _head(system: str) -> list[ChatMessage]:
        return [ChatMessage("system", system)] if system.strip() else []

    def _newest_turns(
        self,
        head: list[ChatMessage],
        turns: list[list[ChatMessage]],
        tail: list[ChatMessage],
        room: int,
    ) -> int:
        """How many of the newest turns fit in ``room`` tokens: estimated from the remembered
        costs, then checked exactly (templates are almost always additive; when one is not,
        the count is corrected one turn at a time)."""
        system = head[0].content if head else ""
        used, kept = 0, 0
        for turn in reversed(turns):
            size = sum(self.cost(m, system) for m in turn)
            if used + size > room:
                break
            used, kept = used + size, kept + 1
        for _ in range(len(turns) + 1):  # bounded: each step moves by one turn
            if (
                kept
                and self._count([*head, *_flatten(turns[len(turns) - kept :]), *tail]) > self.budget
            ):
                kept -= 1
            elif (
                kept < len(turns)
                and self._count([*head, *_flatten(turns[len(turns) - kept - 1 :]), *tail])
                <= self.budget
            ):
                kept += 1
            else:
                break
        return kept

    def _fit(
        self, stable: str, parts: list[str], allowance: int, tail: list[ChatMessage]
    ) -> tuple[list[str], int]:
        """The leading ``parts`` that fit ``allowance`` tokens once joined to the system message
        (the last one cut at a word boundary when only part of it fits); and how many were
        left out or cut."""
        if not parts:
            return [], 0
        base = self._count([*self._head(stable), *tail])

        def size(chosen: list[str]) -> int:
            joined = "\n\n".join(p for p in (stable, *chosen) if p.strip())
            return self._count([*self._head(joined), *tail]) - base

        kept: list[str] = []
        for index, part in enumerate(parts):
            if size([*kept, part]) <= allowance:
                kept.append(part)
                continue
            words = part.split(" ")
            low, high = 0, len(words) - 1  # the most words of this part that still fit
            while low < high:
                middle = (low + high + 1) // 2
                if size([*kept, " ".join(words[:middle]) + " …"]) <= allowance:
                    low = middle
                else:
                    high = middle - 1
            if low:
                kept.append(" ".join(words[:low]) + " …")
            return kept, len(parts) - index
        return kept, 0

    def _with_summary(
        self, stable: str, summary: str, allowance: int, tail: list[ChatMessage]
    ) -> str:
        """``stable`` with the summary joined to it, less the summary's oldest lines (those
        after its heading) as needed to add at most ``allowance`` tokens; without it when not
        even the heading and one line fit."""
        heading, *lines = summary.strip().splitlines()
        base = self._count([*self._head(stable), *tail])

        def joined(kept: int) -> str:
            text = "\n".join([heading, *lines[len(lines) - kept :]])
            return "\n\n".join(p for p in (stable, text) if p.strip())

        def fits(kept: int) -> bool:
            return self._count([*self._head(joined(kept)), *tail]) - base <= allowance

        if fits(len(lines)):
            return joined(len(lines))
        low, high = 0, len(lines) - 1  # the most newest lines that still fit
        while low < high:
            middle = (low + high + 1) // 2
            if fits(middle):
                low = middle
            else:
                high = middle - 1
        return joined(low) if low else stable

    def _fit_recalled(
        self, head: list[ChatMessage], recalled: list[str], allowance: int, text: str
    ) -> tuple[list[str], int]:
        """The most relevant recalled memories that fit ``allowance`` tokens, whole."""
        base = self._count([*head, ChatMessage("user", text)])
        chosen: list[str] = []
        for memory in recalled:
            trial = [*chosen, memory]
            size = self._count([*head, ChatMessage("user", _with_recalled(trial, text))]) - base
            if size > allowance:
                break
            chosen = trial
        return chosen, len(recalled) - len(chosen)


def _with_recalled(recalled: Sequence[str], text: str) -> str:
    """The new message with the recalled memories before it (in the user's turn, which every
    chat template accepts, and next to the message, where a kept KV cache ends anyway)."""
    if not recalled:
        return text
    notes = "\n".join(f"- {memory}" for memory in recalled)
    return f"(What you remember about me:\n{notes})\n\n{text}"


def split_turns(history: Sequence[ChatMessage]) -> list[list[ChatMessage]]:
    """Group messages into turns, each starting at a user message, so a reply is never kept
    without the message it answers."""
    turns: list[list[ChatMessage]] = []
    for message in history:
        if message.role == "system":
            continue
        if message.role == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return turns


def _flatten(turns: Sequence[Sequence[ChatMessage]]) -> list[ChatMessage]:
    return [message for turn in turns for message in turn]


def _cache_key(*parts: str) -> bytes:
    """A 16-byte digest of ``parts``, each one framed by its length so that no two different
    tuples share a key."""
    digest = hashlib.blake2b(digest_size=16, person=b"chatcore-cost")
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.digest()
