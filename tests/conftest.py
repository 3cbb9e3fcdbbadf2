"""Shared fixtures: every test gets its own data directory and a clean CHATCORE_* environment;
``fake_app`` builds a started app on the fake backend; ``postgres_url`` a PostgreSQL database."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput

from chatcore.adapters.terminal import TerminalAdapter
from chatcore.app import App, create_app
from chatcore.config import Settings
from chatcore.generation.fake import FakeBackend
from chatcore.memory.inmemory import InMemoryConversationStore
from tests.fake_openai_server import FakeOpenAIServer
from tests.pg_server import SKIP_ENV, PostgresServer, PostgresUnavailableError, start_postgres

T = TypeVar("T")
RUN_ENVIRONMENT = dict(os.environ)
"""The environment the test run began with: ``isolated_env`` drops CHATCORE_* for each test,
so switches for the run itself (CHATCORE_SKIP_POSTGRES) are read from here."""


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point CHATCORE_HOME at a temporary directory and drop any other CHATCORE_* variable."""
    for name in list(os.environ):
        if name.startswith("CHATCORE_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("CHATCORE_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield home


def make_settings(home: Path, **sections: dict[str, object]) -> Settings:
    """Settings for tests: the fake backend, a temporary home, and the given section overrides."""
    data: dict[str, object] = {
        "home": str(home),
        "model": {"backend": "fake"},
        "memory": {"embedder": "hashing", "min_score": 0.3},
        # The engine's own tests see the backend's chunks and the user's text as they are: the
        # built-in steps have their own tests (test_pipeline_runner, test_safety_*, test_rewrite,
        # test_repetition), and real-process tests (`chatcore` in a subprocess) run them all.
        "plugins": {"disabled": ["safety", "postprocess"]},
    }
    for name, values in sections.items():
        merged = dict(data.get(name, {}))  # type: ignore[call-overload]
        merged.update(values)
        data[name] = merged
    return Settings(**data)  # type: ignore[arg-type]


@pytest.fixture
def settings(isolated_env: Path) -> Settings:
    return make_settings(isolated_env)


@pytest.fixture
def fake_backend() -> FakeBackend:
    return FakeBackend()


def memory_store(settings: Settings) -> InMemoryConversationStore:
    """The in-memory store the app fixtures use (fast, and nothing to wait for); tests of the
    durable store are in test_sql_store.py, and real-process tests use the configured one."""
    return InMemoryConversationStore(limit=settings.context.history_limit)


@pytest.fixture
async def fake_app(settings: Settings, fake_backend: FakeBackend) -> AsyncIterator[App]:
    app = await create_app(settings, backend=fake_backend, store=memory_store(settings))
    await app.start()
    try:
        yield app
    finally:
        await app.close()


AppFactory = Callable[..., Awaitable[App]]


@pytest.fixture
async def new_app() -> AsyncIterator[AppFactory]:
    """``await new_app(settings, backend=...)``: an app that is closed after the test, whatever
    happened in it; on the in-memory store unless ``store=`` says otherwise."""
    apps: list[App] = []

    async def make(settings: Settings, **kwargs: Any) -> App:
        kwargs.setdefault("store", memory_store(settings))
        app = await create_app(settings, **kwargs)
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in apps:
            await asyncio.wait_for(app.close(), 30)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on 127.0.0.1 for the whole session (tests/pg_server.py). Missing
    binaries fail the test with what to install, unless CHATCORE_SKIP_POSTGRES=1."""
    try:
        server = start_postgres()
    except PostgresUnavailableError as error:
        if RUN_ENVIRONMENT.get(SKIP_ENV) == "1":
            pytest.skip(str(error))
        pytest.fail(str(error), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    import psycopg

    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.url().replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.url(name)


@pytest.fixture(scope="session")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory shared by the whole session, so the embedded model converts once."""
    return tmp_path_factory.mktemp("model-home")


@pytest.fixture(scope="session")
def embedded_backend(model_home: Path) -> Iterator[Any]:
    """The real embedded model, loaded once per test session (greedy, small replies)."""
    from chatcore.generation.local import TransformersBackend

    backend = TransformersBackend.from_settings(Settings(home=str(model_home)))
    run_in_thread(backend.load())
    yield backend
    run_in_thread(backend.close())


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` in a fresh event loop on another thread (leaves pytest's loops alone)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def run_chatcore(args: list[str], stdin: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``chatcore ARGS`` as a real process with ``stdin`` piped in and ``env`` added."""
    return subprocess.run(
        [sys.executable, "-m", "chatcore.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        check=False,
    )


@pytest.fixture
def pipe() -> Iterator[PipeInput]:
    """Keys for an interactive terminal chat, typed by the test."""
    with create_pipe_input() as pipe_input:
        yield pipe_input


def interactive_terminal(
    app: App,
    pipe: PipeInput,
    *,
    stdout: io.StringIO | None = None,
    stderr: io.StringIO | None = None,
    **options: object,
) -> TerminalAdapter:
    """The terminal adapter of ``app`` in interactive mode, reading keys from ``pipe``."""
    adapter = app.adapter(
        "terminal",
        stdout=stdout or io.StringIO(),
        stderr=stderr or io.StringIO(),
        interactive=True,
        prompt_input=pipe,
        prompt_output=DummyOutput(),
        **options,
    )
    assert isinstance(adapter, TerminalAdapter)
    return adapter


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAIServer]:
    """A fake OpenAI-compatible server on loopback (tests/fake_openai_server.py), closed after
    the test."""
    fake = FakeOpenAIServer()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
