"""The ``openai`` backend against a fake OpenAI-compatible server on loopback: streaming, usage,
retries, refusals, broken streams, the trimmed retry, time-outs, stop strings, cancellation."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from chatcore.config import GenerationSettings, OpenAISettings
from chatcore.events import ChatMessage
from chatcore.generation.openai import OpenAIBackend
from chatcore.generation.types import Backend, Chunk, GenerationError, StreamInterruptedError
from tests.fake_openai_server import Fail, FakeOpenAIServer, Stream

GREEDY = GenerationSettings(repetition_penalty=1.0)
HELLO = [ChatMessage("system", "Be brief."), ChatMessage("user", "hello there")]

MakeBackend = Callable[..., Awaitable[OpenAIBackend]]


@pytest.fixture
def waits() -> list[float]:
    """The seconds the backend waited before each retry (it does not really wait)."""
    return []


@pytest.fixture
async def make_backend(
    openai_server: FakeOpenAIServer, waits: list[float]
) -> AsyncIterator[MakeBackend]:
    made: list[OpenAIBackend] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    async def make(*, load: bool = True, window: int = 0, **values: Any) -> OpenAIBackend:
        values.setdefault("base_url", openai_server.base_url)
        values.setdefault("retry_backoff", 0.5)
        backend = OpenAIBackend(OpenAISettings(**values), window=window, sleep=record)
        made.append(backend)
        if load:
            await backend.load()
        return backend

    try:
        yield make
    finally:
        for backend in made:
            await backend.close()


async def collect(
    backend: OpenAIBackend,
    messages: list[ChatMessage] = HELLO,
    options: GenerationSettings = GREEDY,
) -> list[Chunk]:
    return [chunk async for chunk in backend.stream(messages, options)]


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


async def test_a_reply_streams_piece_by_piece(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.enqueue(Stream(["Hel", "lo", "!"], usage=(12, 3)))
    backend = await make_backend()
    assert isinstance(backend, Backend)
    chunks = await collect(backend)
    assert [c.text for c in chunks] == ["Hel", "lo", "!", ""]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (12, 3)
    (request,) = openai_server.chats
    body = request.body
    assert body["model"] == "fake-model"  # the only one the server lists
    assert body["stream"] is True
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]
    assert body["max_tokens"] == GREEDY.max_new_tokens
    assert body["temperature"] == 0.0
    assert "Authorization" not in request.headers


async def test_sampling_options_and_the_key_are_sent(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.key = "sk-test"
    backend = await make_backend(api_key=SecretStr("sk-test"), model="fake-model")
    options = GenerationSettings(strategy="sample", temperature=0.3, top_p=0.8, seed=7)
    await collect(backend, options=options)
    body = openai_server.chats[0].body
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.3, 0.8, 7)
    assert openai_server.chats[0].headers["Authorization"] == "Bearer sk-test"


async def test_usage_is_estimated_when_the_server_sends_none(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.enqueue(Stream(["a", "b", "c"], finish="length", usage=None))
    backend = await make_backend()
    last = (await collect(backend))[-1]
    assert last.finish_reason == "length"
    assert last.usage is not None
    assert last.usage.completion_tokens == 3
    assert last.usage.prompt_tokens == backend.tokenizer.count_tokens(HELLO) > 0


async def test_429_waits_as_the_server_asks_then_succeeds(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend, waits: list[float]
) -> None:
    backend = await make_backend()
    openai_server.enqueue(Fail(429, "slow down", headers={"Retry-After": "7"}), Stream(["ok"]))
    assert text_of(await collect(backend)) == "ok"
    assert waits == [7.0]
    assert len(openai_server.chats) == 2


async def test_500_then_success_backs_off(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend, waits: list[float]
) -> None:
    backend = await make_backend(retry_backoff=0.5)
    openai_server.enqueue(Fail(500), Fail(503), Stream(["fine"]))
    assert text_of(await collect(backend)) == "fine"
    assert len(waits) == 2
    assert 0.5 <= waits[0] <= 0.5 * 1.25
    assert 1.0 <= waits[1] <= 1.0 * 1.25


async def test_retries_run_out_with_a_clear_error(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend, waits: list[float]
) -> None:
    backend = await make_backend(retries=2)
    openai_server.enqueue(*[Fail(503, "overloaded")] * 3)
    with pytest.raises(GenerationError) as caught:
        await collect(backend)
    assert "HTTP 503: overloaded" in str(caught.value)
    assert "openai.retries = 2" in str(caught.value)
    assert len(waits) == 2 and len(openai_server.chats) == 3


async def test_a_retry_after_over_the_limit_fails_at_once(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend, waits: list[float]
) -> None:
    backend = await make_backend(max_retry_wait=5)
    openai_server.enqueue(Fail(429, headers={"Retry-After": "600"}))
    with pytest.raises(GenerationError, match=r"openai\.max_retry_wait"):
        await collect(backend)
    assert waits == [] and len(openai_server.chats) == 1


async def test_a_wrong_key_says_which_variable_to_check(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.key = "sk-right"
    with pytest.raises(GenerationError) as caught:
        await make_backend(api_key=SecretStr("sk-wrong"))
    message = str(caught.value)
    assert "refused the API key" in message and "CHATCORE_OPENAI__API_KEY" in message
    assert "sk-wrong" not in message
    with pytest.raises(GenerationError, match="wants an API key"):
        await make_backend()


async def test_a_key_refused_mid_way_is_not_retried(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend, waits: list[float]
) -> None:
    backend = await make_backend()
    openai_server.enqueue(Fail(401, "Incorrect API key provided", "invalid_api_key"))
    with pytest.raises(GenerationError, match="CHATCORE_OPENAI__API_KEY"):
        await collect(backend)
    assert waits == [] and len(openai_server.chats) == 1


async def test_an_unknown_model_names_the_setting(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    backend = await make_backend(model="no-such-model")  # listed models are only a warning
    with pytest.raises(GenerationError) as caught:
        await collect(backend)
    assert "'no-such-model'" in str(caught.value) and "openai.model" in str(caught.value)
    assert "does not exist" in str(caught.value)  # the server's own words


async def test_the_model_must_be_named_when_the_server_lists_several(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    openai_server.models = ["a", "b"]
    with pytest.raises(GenerationError, match=r"set openai\.model"):
        await make_backend()
    openai_server.models_status = 404  # no list at all: the configured name is trusted
    backend = await make_backend(model="b")
    assert backend.model == "b"


async def test_an_unreachable_server_is_retried_then_named(
    make_backend: MakeBackend, waits: list[float]
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(GenerationError) as caught:
        await make_backend(base_url=f"http://127.0.0.1:{port}/v1", retries=1)
    message = str(caught.value)
    assert "cannot reach the model server" in message and "openai.base_url" in message
    assert len(waits) == 1


async def test_a_stream_dropped_mid_reply_keeps_the_partial_text(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend, waits: list[float]
) -> None:
    backend = await make_backend()
    openai_server.enqueue(Stream(["The ", "answer ", "is"], drop_after=2))
    seen: list[str] = []
    with pytest.raises(StreamInterruptedError) as caught:
        async for chunk in backend.stream(HELLO, GREEDY):
            seen.append(chunk.text)
    assert seen == ["The ", "answer "]
    assert caught.value.partial == "The answer "
    assert caught.value.finish_reason == "interrupted"
    assert "partial reply was kept" in str(caught.value)
    assert waits == [] and len(openai_server.chats) == 1  # never retried once the reply began


async def test_an_error_event_mid_reply_is_an_interruption(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    backend = await make_backend()
    openai_server.enqueue(Stream(["Part ", "two"], error_after=1))
    with pytest.raises(StreamInterruptedError) as caught:
        await collect(backend)
    assert caught.value.partial == "Part "
    assert "the engine crashed" in str(caught.value)


async def test_a_stream_dropped_before_the_first_token_is_retried(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend, waits: list[float]
) -> None:
    backend = await make_backend()
    openai_server.enqueue(Stream(["never"], drop_after=0), Stream(["second ", "try"]))
    assert text_of(await collect(backend)) == "second try"
    assert len(waits) == 1 and len(openai_server.chats) == 2


async def test_a_lost_end_after_the_finish_is_not_an_interruption(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    backend = await make_backend()
    openai_server.enqueue(Stream(["done"], done=False))  # finish_reason sent, no [DONE]
    chunks = await collect(backend)
    assert text_of(chunks) == "done" and chunks[-1].finish_reason == "stop"


def _conversation(turns: int) -> list[ChatMessage]:
    messages = [ChatMessage("system", "sys")]
    for n in range(turns):
        messages += [ChatMessage("user", f"q{n}"), ChatMessage("assistant", f"a{n}")]
    return [*messages, ChatMessage("user", "now")]


async def test_context_length_exceeded_retries_once_without_the_oldest_turns(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend, waits: list[float]
) -> None:
    backend = await make_backend()
    too_long = "This model's maximum context length is 4096 tokens. However, you requested 5000"
    openai_server.enqueue(Fail(400, too_long), Stream(["short"]))
    assert text_of(await collect(backend, _conversation(4))) == "short"
    first, second = (r.body["messages"] for r in openai_server.chats)
    assert len(first) == 10
    assert [m["content"] for m in second] == ["sys", "q2", "a2", "q3", "a3", "now"]
    assert waits == []  # not a retry of a busy openai_server: no wait


async def test_context_length_exceeded_twice_is_an_error(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    backend = await make_backend()
    code = "context_length_exceeded"
    openai_server.enqueue(Fail(400, "too long", code), Fail(400, "too long", code))
    with pytest.raises(GenerationError, match=r"context\.window"):
        await collect(backend, _conversation(2))
    assert len(openai_server.chats) == 2
    openai_server.enqueue(Fail(400, "too long", code))
    with pytest.raises(GenerationError, match="with no history"):
        await collect(backend)  # nothing to leave out: no second try
    assert len(openai_server.chats) == 3


async def test_a_silent_server_times_out_with_the_setting_named(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend, waits: list[float]
) -> None:
    backend = await make_backend(read_timeout=0.2)
    openai_server.enqueue(Stream(["never"], silent_after=0))
    with pytest.raises(GenerationError) as caught:
        await collect(backend)
    assert not isinstance(caught.value, StreamInterruptedError)
    assert "openai.read_timeout" in str(caught.value)
    assert waits == []  # the server was working on it: a retry would only add load
    openai_server.enqueue(Stream(["half ", "way"], silent_after=1))
    with pytest.raises(StreamInterruptedError) as interrupted:
        await collect(backend)
    assert interrupted.value.partial == "half "


async def test_stop_strings_cut_the_reply_and_are_sent_to_the_server(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    backend = await make_backend()
    openai_server.enqueue(Stream(["Hello ", "wor", "ld\nUs", "er: more"]))
    options = GenerationSettings(repetition_penalty=1.0, stop=("\nUser:", "#1", "#2", "#3", "#4"))
    chunks = await collect(backend, options=options)
    assert text_of(chunks) == "Hello world"
    assert chunks[-1].finish_reason == "stop"
    # The API takes four.
    assert openai_server.chats[0].body["stop"] == ["\nUser:", "#1", "#2", "#3"]


async def test_closing_the_stream_closes_the_http_response(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    backend = await make_backend()
    openai_server.enqueue(Stream(["tick "], endless=True))
    stream = backend.stream(HELLO, GREEDY)
    assert (await anext(stream)).text == "tick "
    assert (await anext(stream)).text == "tick "
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(openai_server.disconnected.wait(), 10)


async def test_cancelling_the_consumer_closes_the_http_response(
    openai_server: FakeOpenAIServer, make_backend: MakeBackend
) -> None:
    backend = await make_backend()
    openai_server.enqueue(Stream(["tick "], endless=True))
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in backend.stream(HELLO, GREEDY):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(openai_server.disconnected.wait(), 10)


async def test_the_estimate_over_counts_and_a_window_can_be_set(make_backend: MakeBackend) -> None:
    backend = await make_backend(window=1024)
    tokenizer = backend.tokenizer
    assert tokenizer.context_window == 1024
    text = "The quick brown fox jumps over the lazy dog. " * 20
    # About 4 bytes of English per token in real tokenizers: the estimate counts more.
    assert tokenizer.count_tokens([ChatMessage("user", text)]) > len(text.encode()) / 4
    default = await make_backend()
    assert default.tokenizer.context_window == 4096


async def test_a_local_tokenizer_json_counts_exactly(
    tmp_path: Path, make_backend: MakeBackend
) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocabulary = {"[UNK]": 0, "hello": 1, "there": 2}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "tok"
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text('{"max_position_embeddings": 2048}')
    backend = await make_backend(tokenizer=str(folder))
    counter = backend.tokenizer
    assert counter.context_window == 2048  # from the folder's config.json
    one = counter.count_tokens([ChatMessage("user", "hello there")])
    two = counter.count_tokens([ChatMessage("user", "hello there hello there")])
    assert two - one == 2
    with pytest.raises(GenerationError, match=r"openai\.tokenizer"):
        await make_backend(tokenizer=str(tmp_path / "missing"))


def test_what_the_backend_cannot_honour() -> None:
    backend = OpenAIBackend(OpenAISettings())
    assert backend.unsupported(GREEDY) == []
    assert (
        backend.unsupported(GenerationSettings(strategy="sample", top_k=0, repetition_penalty=1))
        == []
    )
    assert [u.setting for u in backend.unsupported(GenerationSettings())] == ["repetition_penalty"]
    beam = GenerationSettings(strategy="beam", repetition_penalty=1.0)
    assert [u.setting for u in backend.unsupported(beam)] == ["strategy"]
    sample = GenerationSettings(strategy="sample", repetition_penalty=1.0)
    assert [u.setting for u in backend.unsupported(sample)] == ["top_k"]
