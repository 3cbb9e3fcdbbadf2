"""The real path on the embedded SmolLM2-135M-Instruct: the engine, exact token budgets with
the model's own tokenizer, and the piped ``chatcore chat`` process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chatcore.context import ContextBuilder, MessageTooLongError
from chatcore.engine import Engine
from chatcore.events import Message, Reply, ReplyChunk, ReplyEvent
from chatcore.generation.types import ChatMessage
from chatcore.memory.inmemory import InMemoryConversationStore
from tests.conftest import make_settings, run_chatcore

pytestmark = pytest.mark.model

QUESTION = "What is the capital of France?"


def _reference_count(backend: Any, messages: list[ChatMessage]) -> int:
    """Token count straight from the Hugging Face tokenizer's chat template."""
    from transformers import AutoTokenizer

    folder = backend.prepared.folder
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    return len(ids)


async def test_engine_answers_paris_and_streams(embedded_backend: Any, isolated_env: Path) -> None:
    settings = make_settings(
        isolated_env, model={"backend": "transformers"}, generation={"max_new_tokens": 32}
    )
    engine = Engine(settings, embedded_backend, InMemoryConversationStore())
    await engine.start()
    message = Message(text=QUESTION, user="u", channel="c", platform="test")
    events: list[ReplyEvent] = [event async for event in engine.handle(message)]
    chunks = [e for e in events if isinstance(e, ReplyChunk)]
    final = events[-1]
    assert isinstance(final, Reply), final
    assert "Paris" in final.text
    assert len(chunks) > 1
    assert "".join(c.text for c in chunks) == final.text
    assert final.usage.prompt_tokens == engine.context.tokenizer.count_tokens(
        [ChatMessage("system", settings.context.system_prompt), ChatMessage("user", QUESTION)]
    )


def test_token_counts_are_exact_against_the_real_tokenizer(embedded_backend: Any) -> None:
    tokenizer = embedded_backend.tokenizer
    assert tokenizer.context_window == 8192
    history = []
    for i in range(30):
        history.append(ChatMessage("user", f"Tell me fact number {i} about the sea, please."))
        history.append(ChatMessage("assistant", f"Fact {i}: the sea is salty and deep. " * 3))
    builder = ContextBuilder(tokenizer, reserve=64, window=600)
    prompt = builder.build("You are a helpful AI assistant.", history, "And one more?")
    assert prompt.dropped > 0
    assert prompt.tokens == _reference_count(embedded_backend, prompt.messages)
    assert prompt.tokens <= builder.budget == 536
    # the next older turn would not have fitted
    kept = len(prompt.messages) - 2
    bigger = [prompt.messages[0], *history[len(history) - kept - 2 :], prompt.messages[-1]]
    assert _reference_count(embedded_backend, bigger) > builder.budget


def test_message_longer_than_the_window_is_refused(embedded_backend: Any) -> None:
    builder = ContextBuilder(embedded_backend.tokenizer, reserve=64, window=256)
    with pytest.raises(MessageTooLongError) as caught:
        builder.build("You are a helpful AI assistant.", [], "word " * 400)
    assert caught.value.budget == 192
    assert caught.value.tokens > 400


def test_piped_chatcore_chat_answers(model_home: Path, embedded_backend: Any) -> None:
    # embedded_backend first: the model is converted into model_home, so this start is fast
    done = run_chatcore(
        ["chat"],
        f"{QUESTION}\n",
        CHATCORE_HOME=str(model_home),
        CHATCORE_GENERATION__MAX_NEW_TOKENS="32",
    )
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    # no progress bars or warnings when scripted: at most the notice that the reply was cut
    assert done.stderr in ("", "(reply cut at generation.max_new_tokens)\n")
    assert done.stdout.endswith("\n") and done.stdout.count("\n") >= 1
