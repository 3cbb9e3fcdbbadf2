"""The ``openai`` backend inside a whole app (``model.backend = "openai"``) against the fake
server; its settings (the key only from the environment); settings a backend cannot honour
refused at start."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatcore.app import create_app
from chatcore.config import ConfigError, Settings, load_settings, masked_settings
from chatcore.events import Message, Reply, ReplyChunk, ReplyError, ReplyEvent
from chatcore.generation.fake import FakeBackend
from chatcore.generation.openai import OpenAIBackend
from tests.conftest import AppFactory, make_settings, memory_store
from tests.fake_openai_server import FakeOpenAIServer, Stream


def openai_settings(home: Path, openai_server: FakeOpenAIServer, **generation: object) -> Settings:
    return make_settings(
        home,
        model={"backend": "openai"},
        openai={"base_url": openai_server.base_url, "retries": 0},
        generation={"repetition_penalty": 1.0, **generation},
    )


def msg(text: str) -> Message:
    return Message(text=text, user="alice", channel="c1", platform="test")


async def collect(events: AsyncIterator[ReplyEvent]) -> list[ReplyEvent]:
    return [event async for event in events]


async def test_a_whole_chat_through_the_app(
    isolated_env: Path, openai_server: FakeOpenAIServer, new_app: AppFactory
) -> None:
    app = await new_app(openai_settings(isolated_env, openai_server))
    assert isinstance(app.engine.backend, OpenAIBackend)
    await app.start()
    openai_server.enqueue(Stream(["Hi ", "Alice."], usage=(30, 2)))
    events = await collect(app.engine.handle(msg("hello")))
    assert [e.text for e in events if isinstance(e, ReplyChunk)] == ["Hi ", "Alice."]
    final = events[-1]
    assert isinstance(final, Reply) and final.text == "Hi Alice."
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (30, 2)
    await collect(app.engine.handle(msg("and again")))
    sent = [m["content"] for m in openai_server.chats[-1].body["messages"]]
    assert sent[-3:] == ["hello", "Hi Alice.", "and again"]
    assert openai_server.chats[-1].body["messages"][0]["role"] == "system"


async def test_a_broken_stream_keeps_the_partial_reply_in_the_conversation(
    isolated_env: Path, openai_server: FakeOpenAIServer, new_app: AppFactory
) -> None:
    settings = openai_settings(isolated_env, openai_server)
    store = memory_store(settings)
    app = await new_app(settings, store=store)
    await app.start()
    openai_server.enqueue(Stream(["Half ", "a ", "reply"], drop_after=2))
    events = await collect(app.engine.handle(msg("tell me")))
    assert "".join(e.text for e in events if isinstance(e, ReplyChunk)) == "Half a "
    assert isinstance(events[-1], ReplyError) and events[-1].code == "backend_error"
    history = await store.history(msg("x").conversation)
    # Stored marked as cut, so that later prompts read it so.
    assert [(m.role, m.content) for m in history] == [
        ("user", "tell me"),
        ("assistant", "Half a […]"),
    ]


async def test_a_chosen_setting_the_backend_cannot_honour_stops_the_start(
    isolated_env: Path, openai_server: FakeOpenAIServer
) -> None:
    settings = openai_settings(isolated_env, openai_server, strategy="sample", top_k=40)
    with pytest.raises(ConfigError) as caught:
        await create_app(settings, store=memory_store(settings))
    (line,) = caught.value.lines
    assert line.startswith("config error: generation.top_k = 40: the openai backend")
    assert "set it to 0" in line


async def test_defaults_it_cannot_honour_do_not_stop_the_start(
    isolated_env: Path,
    openai_server: FakeOpenAIServer,
    monkeypatch: pytest.MonkeyPatch,
    new_app: AppFactory,
) -> None:
    monkeypatch.setenv("CHATCORE_MODEL__BACKEND", "openai")
    monkeypatch.setenv("CHATCORE_OPENAI__BASE_URL", openai_server.base_url)
    settings = load_settings()  # repetition_penalty = 1.1 from default.toml: not chosen
    assert settings.generation.repetition_penalty == 1.1
    assert not settings.is_explicit("generation", "repetition_penalty")
    assert settings.is_explicit("openai", "base_url")
    app = await new_app(settings)
    await app.start()
    events = await collect(app.engine.handle(msg("ping")))
    assert isinstance(events[-1], Reply) and events[-1].text == "You said: ping"
    assert "repetition_penalty" not in openai_server.chats[0].body


def test_a_chosen_value_in_a_file_or_the_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "my.toml"
    file.write_text("[generation]\nrepetition_penalty = 1.2\n")
    settings = load_settings(file)
    assert settings.is_explicit("generation", "repetition_penalty")
    assert not settings.is_explicit("generation", "top_k")
    backend = OpenAIBackend(settings.openai)
    from chatcore.generation.capabilities import check_generation_settings

    with pytest.raises(ConfigError, match=r"generation.repetition_penalty = 1.2"):
        check_generation_settings(backend, settings)
    monkeypatch.setenv("CHATCORE_GENERATION__STRATEGY", "beam")
    with pytest.raises(ConfigError) as caught:
        check_generation_settings(backend, load_settings())
    assert caught.value.lines == [
        "config error: generation.strategy = 'beam': the openai backend cannot honour it: the "
        'chat-completions API has no beam search; use "greedy" or "sample"'
    ]
    check_generation_settings(FakeBackend(), load_settings(file))  # the fake takes anything


def test_the_api_key_comes_only_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "my.toml"
    file.write_text('[openai]\napi_key = "sk-in-a-file"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(file)
    (line,) = caught.value.lines
    assert "openai.api_key is a secret" in line and "CHATCORE_OPENAI__API_KEY" in line
    monkeypatch.setenv("CHATCORE_OPENAI__API_KEY", "sk-from-env")
    settings = load_settings()
    assert settings.openai.api_key.get_secret_value() == "sk-from-env"
    assert masked_settings(settings)["openai"]["api_key"] == "********"


def test_the_base_url_must_be_http(tmp_path: Path) -> None:
    file = tmp_path / "my.toml"
    file.write_text('[openai]\nbase_url = "127.0.0.1:8000"\n')
    with pytest.raises(ConfigError, match=r"openai\.base_url = '127\.0\.0\.1:8000'"):
        load_settings(file)
