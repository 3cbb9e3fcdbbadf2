"""The context builder on the fake word tokenizer: budget, turn dropping, refusing."""

from __future__ import annotations

import gc
import types
from collections.abc import Sequence

import pytest

from chatcore.config import ConfigError
from chatcore.context import (
    ContextBuilder,
    MessageTooLongError,
    Sections,
    SystemPromptTooLongError,
    split_turns,
)
from chatcore.generation.fake import WordTokenizer
from chatcore.generation.types import ChatMessage


def _history(turns: int) -> list[ChatMessage]:
    messages = []
    for i in range(turns):
        messages.append(ChatMessage("user", f"question {i} " + "word " * 5))
        messages.append(ChatMessage("assistant", f"answer {i} " + "word " * 5))
    return messages


def test_everything_fits_when_the_budget_allows() -> None:
    builder = ContextBuilder(WordTokenizer(1000), reserve=100)
    prompt = builder.build("be nice", _history(3), "hello")
    assert [m.role for m in prompt.messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert prompt.dropped == 0
    assert prompt.tokens == WordTokenizer().count_tokens(prompt.messages)
    assert prompt.budget == 900


def test_newest_whole_turns_are_kept_and_the_budget_is_exact() -> None:
    tokenizer = WordTokenizer(200)
    history = _history(10)  # each turn: 2 messages x (7 words + 3 overhead) = 20 tokens
    system, text = "be nice", "hello"
    base = tokenizer.count_tokens([ChatMessage("system", system), ChatMessage("user", text)])
    for reserve in range(40, 120, 7):
        builder = ContextBuilder(tokenizer, reserve=reserve)
        prompt = builder.build(system, history, text)
        assert prompt.tokens <= builder.budget
        assert prompt.tokens == tokenizer.count_tokens(prompt.messages)
        kept_turns = (builder.budget - base) // 20
        assert prompt.dropped == len(history) - 2 * kept_turns
        # the kept turns are the newest ones, in order, and start with a user message
        assert prompt.messages[1:-1] == history[len(history) - 2 * kept_turns :]
        # one more turn would not have fitted
        more = history[len(history) - 2 * (kept_turns + 1) :]
        if kept_turns < 10:
            assert (
                tokenizer.count_tokens([prompt.messages[0], *more, prompt.messages[-1]])
                > builder.budget
            )


def test_system_prompt_is_always_kept() -> None:
    builder = ContextBuilder(WordTokenizer(60), reserve=10)
    prompt = builder.build("system words " * 10, _history(5), "hi")
    assert prompt.messages[0].role == "system"
    assert prompt.messages[-1] == ChatMessage("user", "hi")


def test_message_longer_than_the_budget_is_refused_not_cut() -> None:
    builder = ContextBuilder(WordTokenizer(100), reserve=20)
    with pytest.raises(MessageTooLongError) as caught:
        builder.build("sys", [], "word " * 200)
    error = caught.value
    assert error.budget == 80
    assert error.tokens == 200 + 1 + 2 * 3 + 2
    assert "too long" in str(error) and "80" in str(error)


def test_exactly_full_budget_is_accepted() -> None:
    tokenizer = WordTokenizer(100)
    builder = ContextBuilder(tokenizer, reserve=20)
    # system "s": 1+3, user: n+3, generation prompt: 2 -> n = 80 - 9 = 71 words fits exactly
    assert builder.build("s", [], "w " * 71).tokens == 80
    with pytest.raises(MessageTooLongError):
        builder.build("s", [], "w " * 72)


def test_window_setting_caps_the_model_window() -> None:
    assert ContextBuilder(WordTokenizer(8192), reserve=100, window=1024).budget == 924
    assert ContextBuilder(WordTokenizer(512), reserve=100, window=4096).window == 512


def test_reserve_larger_than_window_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as caught:
        ContextBuilder(WordTokenizer(100), reserve=100)
    assert caught.value.lines == [
        "config error: generation.max_new_tokens = 100 leaves no room for a prompt in the "
        "100-token context window; lower it"
    ]


def test_split_turns_keeps_replies_with_their_question() -> None:
    history = [
        ChatMessage("assistant", "greeting"),
        ChatMessage("user", "a"),
        ChatMessage("user", "b"),
        ChatMessage("assistant", "c"),
        ChatMessage("system", "ignored"),
    ]
    assert [[m.content for m in t] for t in split_turns(history)] == [
        ["greeting"],
        ["a"],
        ["b", "c"],
    ]


def test_an_oversized_system_prompt_is_blamed_not_the_message() -> None:
    builder = ContextBuilder(WordTokenizer(100), reserve=20)
    with pytest.raises(SystemPromptTooLongError) as caught:
        builder.build("rule " * 90, [], "hi")
    assert "system prompt" in str(caught.value) and caught.value.budget == 80


# -- sections ------------------------------------------------------------------------------------


class CountingTokenizer(WordTokenizer):
    """A word tokenizer that counts how often it is asked (and from which threads)."""

    def __init__(self, context_window: int = 2048) -> None:
        super().__init__(context_window)
        self.calls = 0

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        self.calls += 1
        return super().count_tokens(messages)


def test_sections_go_stable_first_and_recalled_memories_next_to_the_message() -> None:
    builder = ContextBuilder(WordTokenizer(1000), reserve=100)
    sections = Sections(
        "be nice",
        preferences=["The user's name is Sam.", "Answer in French."],
        summary="Earlier: we talked about dogs.",
        extensions=["Today is Monday."],
        recalled=["The user's dog is called Rex.", "The user lives in Lyon."],
    )
    prompt = builder.build(sections, _history(2), "what is my dog's name?")
    system = prompt.messages[0].content
    assert (
        system.index("be nice")
        < system.index("Sam")
        < system.index("dogs")
        < system.index("Monday")
    )
    assert prompt.messages[1:-1] == _history(2)
    assert prompt.messages[-1].content == (
        "(What you remember about me:\n- The user's dog is called Rex.\n- The user lives in "
        "Lyon.)\n\nwhat is my dog's name?"
    )
    assert prompt.tokens == WordTokenizer().count_tokens(prompt.messages) <= builder.budget


def test_a_large_extension_is_trimmed_to_its_share_never_an_error() -> None:
    builder = ContextBuilder(WordTokenizer(400), reserve=100, extra_share=0.25)  # 75 tokens
    huge = "fact " * 500
    prompt = builder.build(Sections("be nice", extensions=["small note", huge]), _history(3), "hi")
    system = prompt.messages[0].content
    assert "small note" in system and system.endswith(" …")
    assert prompt.trimmed == 1
    extra = WordTokenizer().count_tokens(prompt.messages) - WordTokenizer().count_tokens(
        [ChatMessage("system", "be nice"), *prompt.messages[1:]]
    )
    assert extra <= 75
    assert prompt.tokens <= builder.budget


def test_the_least_relevant_recalled_memories_go_first() -> None:
    builder = ContextBuilder(WordTokenizer(200), reserve=100, extra_share=0.1)  # 10 tokens
    recalled = ["most relevant", "second most relevant memory here", "third"]
    prompt = builder.build(Sections("sys", recalled=recalled), [], "hi")
    assert "most relevant" in prompt.messages[-1].content
    assert "third" not in prompt.messages[-1].content
    assert prompt.trimmed == 2


def _texts_reachable_from(root: object) -> list[str]:
    """Every string that ``root`` refers to, directly or through its containers (not through
    classes, modules or functions, which are shared code, not data)."""
    shared = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)
    seen: set[int] = set()
    found: list[str] = []
    todo: list[object] = [root]
    while todo:
        item = todo.pop()
        if id(item) in seen or isinstance(item, shared):
            continue
        seen.add(id(item))
        assert len(seen) < 100_000, "the walk does not end"
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, bytes):
            found.append(item.decode("latin-1"))
        else:
            todo.extend(gc.get_referents(item))
    return found


def test_remembered_costs_hold_no_text() -> None:
    builder = ContextBuilder(WordTokenizer(4000), reserve=100)
    history = [ChatMessage("user", "my passport is CANARY123"), ChatMessage("assistant", "ok")]
    builder.build("sys CANARY456", history, "next")
    assert builder.cost(history[0], "sys CANARY456") == builder.cost(history[0], "sys CANARY456")
    texts = _texts_reachable_from(builder)
    assert texts  # the walk does reach strings (attribute names at least)
    assert not [text for text in texts if "CANARY" in text]


def test_history_costs_are_counted_once_and_reused() -> None:
    tokenizer = CountingTokenizer(4000)
    builder = ContextBuilder(tokenizer, reserve=100)
    history = _history(100)
    builder.build("sys", history, "first")
    first = tokenizer.calls
    tokenizer.calls = 0
    builder.build(
        "sys", [*history, ChatMessage("user", "first"), ChatMessage("assistant", "ok")], "again"
    )
    assert tokenizer.calls < 20 < first  # only the two new messages and the checks are counted
    stored = [ChatMessage(m.role, m.content, tokens=10) for m in history]
    tokenizer.calls = 0
    ContextBuilder(tokenizer, reserve=100).build("sys", stored, "hi")
    assert tokenizer.calls < 10  # counts kept with stored messages are used as they are
