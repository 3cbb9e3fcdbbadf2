"""The context builder: fits system prompt, history and the new message into the token budget.

Counts with the model's own tokenizer and chat template, so the budget is exact in tokens.
"""

from __future__ import annotations

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


class ContextBuilder:
    """Builds prompts of at most ``window - reserve`` tokens, keeping the newest whole turns."""

    def __init__(self, tokenizer: ChatTokenizer, *, reserve: int, window: int = 0) -> None:
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

    def build(self, system_prompt: str, history: Sequence[ChatMessage], text: str) -> Prompt:
        """The prompt for ``text``: the system prompt (always kept), then as many of the newest
        whole turns of ``history`` as fit, then the new user message."""
        head = [ChatMessage("system", system_prompt)] if system_prompt else []
        tail = [ChatMessage("user", text)]
        bare = self.tokenizer.count_tokens([*head, ChatMessage("user", "")])
        if bare >= self.budget:
            raise SystemPromptTooLongError(bare, self.budget)
        smallest = self.tokenizer.count_tokens([*head, *tail])
        if smallest > self.budget:
            raise MessageTooLongError(smallest, self.budget, self.window, self.reserve)

        turns = split_turns(history)
        # The token count grows with every turn kept: binary-search the most newest turns.
        low, high, best_tokens = 0, len(turns), smallest
        while low < high:
            middle = (low + high + 1) // 2
            tokens = self.tokenizer.count_tokens([*head, *_flatten(turns[-middle:]), *tail])
            if tokens <= self.budget:
                low, best_tokens = middle, tokens
            else:
                high = middle - 1
        kept = _flatten(turns[len(turns) - low :]) if low else []
        return Prompt(
            messages=[*head, *kept, *tail],
            tokens=best_tokens,
            budget=self.budget,
            dropped=len(history) - len(kept),
        )


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
