"""Several adapters around one app: ``chatcore run``, adapter-owned settings sections, the
narrow adapter surface, start failures, crashes, concurrent start."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from chatcore import hookimpl
from chatcore.adapter_api import AdapterContext, AdapterStartError
from chatcore.config import AdapterSettings, ConfigError, load_settings
from chatcore.events import Message, Reply
from chatcore.generation.fake import FakeBackend
from chatcore.plugins import PluginHost
from chatcore.runner import run_adapters
from tests.conftest import AppFactory, make_settings
from tests.plugin_fixtures import install_plugin

runner = CliRunner()


class EchoSettings(AdapterSettings):
    greeting: str = "hello"
    rounds: int = 1
    secret: SecretStr = SecretStr("")


class Steady:
    """Sends ``rounds`` messages, then serves until the app stops."""

    replies: list[str]

    def __init__(self, context: AdapterContext) -> None:
        self.context = context
        self.replies = []

    async def run(self) -> int:
        await self.context.chat.ready()
        settings: EchoSettings = self.context.settings
        for i in range(settings.rounds):
            message = Message(f"{settings.greeting} {i}", "u", "c", "steady")
            async for event in self.context.chat.send(message):
                if isinstance(event, Reply):
                    self.replies.append(event.text)
        await self.context.stopping.wait()
        return 0


class Crashy:
    def __init__(self, context: AdapterContext) -> None:
        self.context = context

    async def run(self) -> int:
        await self.context.chat.ready()
        raise RuntimeError("lost the connection for good")


class CannotStart:
    def __init__(self, context: AdapterContext) -> None:
        self.context = context

    async def run(self) -> int:
        raise AdapterStartError("port 8080 is in use; set [adapters.nostart] port to a free one")


class Adapters:
    def __init__(self) -> None:
        self.made: dict[str, Any] = {}
        self.app: Any = None

    def _keep(self, factory: Callable[[AdapterContext], Any]) -> Callable[..., Any]:
        def make(context: AdapterContext, **options: Any) -> Any:
            adapter = factory(context)
            self.made[context.name] = adapter
            return adapter

        return make

    @hookimpl
    def register_adapters(self, register: Any) -> None:
        register("steady", self._keep(Steady), settings=EchoSettings)
        register("crashy", self._keep(Crashy))
        register("nostart", self._keep(CannotStart))


@pytest.fixture
def adapters(monkeypatch: pytest.MonkeyPatch) -> Iterator[Adapters]:
    """Every app created in the test gets the test adapters and the fake backend."""
    from chatcore import runner as runner_module
    from chatcore.app import create_app

    plugin = Adapters()

    async def create(settings: Any, **kwargs: Any) -> Any:
        host = PluginHost()
        await host.load(settings)
        host.add_plugin(plugin, "test-adapters")
        await host.collect("test-adapters")
        plugin.app = await create_app(settings, plugins=host, backend=FakeBackend())
        return plugin.app

    monkeypatch.setattr(runner_module, "create_app", create)
    yield plugin


async def _run_until(
    settings: Any, names: list[str] | None, adapters: Adapters, condition: Callable[[], bool]
) -> int:
    """Run the adapters; once ``condition()`` holds, ask the app to stop (what a signal does)."""

    async def stopper() -> None:
        for _ in range(1000):  # bounded: 10 s
            if condition():
                break
            await asyncio.sleep(0.01)
        if adapters.app is not None:
            adapters.app.request_stop()  # what a signal does

    task = asyncio.ensure_future(stopper())
    try:
        return await asyncio.wait_for(run_adapters(settings, names), 30)
    finally:
        task.cancel()


async def test_one_adapter_crashing_while_another_serves(
    isolated_env: Path, adapters: Adapters, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(isolated_env, adapters={"steady": {"rounds": 3}})

    def steady_done() -> bool:
        steady = adapters.made.get("steady")
        return steady is not None and len(steady.replies) == 3 and "crashy" in caplog.text

    code = await _run_until(settings, ["steady", "crashy"], adapters, steady_done)
    assert adapters.made["steady"].replies == [
        "You said: hello 0",
        "You said: hello 1",
        "You said: hello 2",
    ]
    assert (
        "adapter 'crashy' crashed: lost the connection for good; the others keep serving"
        in caplog.text
    )
    assert code == 1  # the crash is in the exit code, after a clean shutdown of the rest


async def test_run_starts_the_enabled_adapters_only(isolated_env: Path, adapters: Adapters) -> None:
    settings = make_settings(isolated_env, adapters={"steady": {"enabled": True, "greeting": "hi"}})

    def replied() -> bool:
        steady = adapters.made.get("steady")
        return steady is not None and bool(steady.replies)

    assert await _run_until(settings, None, adapters, replied) == 0
    assert set(adapters.made) == {"steady"}
    assert adapters.made["steady"].replies == ["You said: hi 0"]


async def test_an_adapter_that_cannot_start_stops_the_run(
    isolated_env: Path, adapters: Adapters
) -> None:
    settings = make_settings(isolated_env)
    with pytest.raises(AdapterStartError, match="port 8080 is in use"):
        await _run_until(settings, ["steady", "nostart"], adapters, lambda: False)


async def test_nothing_enabled_is_a_config_error(isolated_env: Path, adapters: Adapters) -> None:
    with pytest.raises(ConfigError, match="no adapter is enabled"):
        await run_adapters(make_settings(isolated_env))


def test_adapter_sections_are_validated_with_one_line_each(
    tmp_path: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "echoadapters", ECHO_PLUGIN)
    config = tmp_path / "bot.toml"
    config.write_text('[adapters.echo]\nrounds = "many"\ncolour = "red"\n')
    monkeypatch.setenv("CHATCORE_MODEL__BACKEND", "fake")
    result = runner.invoke(cli(), ["run", "echo", "--config", str(config)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"config error: adapters.echo.rounds = 'many' (from {config}): Input should be a valid "
        "integer, unable to parse string as an integer",
        f"config error: adapters.echo.colour (from {config}) is not a known key; allowed here: "
        "enabled, greeting, rounds, secret",
    ]


def test_adapter_secrets_are_refused_in_files_and_masked(
    tmp_path: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "echoadapters", ECHO_PLUGIN)
    config = tmp_path / "bot.toml"
    config.write_text('[adapters.echo]\nsecret = "hunter2"\n')
    result = runner.invoke(cli(), ["config", "show", "--config", str(config)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"config error: adapters.echo.secret is a secret and must not be in {config}; remove it "
        "there and set the environment variable CHATCORE_ADAPTERS__ECHO__SECRET instead\n"
    )
    monkeypatch.setenv("CHATCORE_ADAPTERS__ECHO__SECRET", "hunter2")
    monkeypatch.setenv("CHATCORE_ADAPTERS__ECHO__ROUNDS", "4")
    result = runner.invoke(cli(), ["config", "show"])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.stdout
    assert (
        '[adapters.echo]\nenabled = false\ngreeting = "hello"\nrounds = 4\nsecret = "********"'
        in (result.stdout)
    )


def test_an_enabled_section_without_an_adapter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCORE_MODEL__BACKEND", "fake")
    monkeypatch.setenv("CHATCORE_ADAPTERS__DISCORT__ENABLED", "true")
    result = runner.invoke(cli(), ["run"])
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "config error: [adapters.discort] is enabled but no plugin registers an adapter named "
        "'discort'; adapters: "
    )


def test_run_with_a_real_process_answers_and_exits_0_on_sigterm(
    tmp_path: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "echoadapters", ECHO_PLUGIN)
    marks = tmp_path / "marks"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "CHATCORE_MODEL__BACKEND": "fake",
        "CHATCORE_ADAPTERS__ECHO__ENABLED": "true",
        "TESTPLUGIN_MARKS": str(marks),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatcore.cli", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 60
    while not marks.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    if not marks.exists():
        proc.kill()
        pytest.fail(f"the echo adapter never answered: {proc.communicate()[1]!r}")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert marks.read_text() == "You said: hello 0"


async def test_adapters_get_the_narrow_surface_only(
    new_app: AppFactory, isolated_env: Path
) -> None:
    app = await new_app(make_settings(isolated_env), backend=FakeBackend())
    plugin = Adapters()
    app.plugins.add_plugin(plugin, "test-adapters")
    await app.plugins.collect("test-adapters")
    adapter = app.adapter("steady")
    context = adapter.context  # type: ignore[attr-defined]
    fields = {f.name for f in dataclasses.fields(context)}
    assert fields == {"name", "settings", "chat", "home", "stopping", "interrupts_to", "metrics"}
    assert not hasattr(context.chat, "engine") and not hasattr(context.chat, "store")
    assert [c.name for c in context.chat.commands()] == [
        "forget",
        "forget-me",
        "help",
        "memories",
        "prefs",
        "remember",
        "reset",
    ]
    assert isinstance(context.settings, EchoSettings)


async def test_concurrent_starts_run_the_startup_hooks_once(
    new_app: AppFactory, isolated_env: Path
) -> None:
    started: list[int] = []

    class Counter:
        @hookimpl
        async def startup(self) -> None:
            await asyncio.sleep(0.05)  # an await inside start: where a race would show
            started.append(1)

    backend = FakeBackend()
    app = await new_app(make_settings(isolated_env), backend=backend)
    app.plugins.add_plugin(Counter(), "counter")
    await asyncio.gather(*(app.start() for _ in range(5)))
    assert started == [1]


def test_each_builtin_module_has_one_import_name() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import adapters.terminal"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "ImportError: import chatcore.adapters, not adapters" in done.stderr


def test_config_is_loaded_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCORE_ADAPTERS__STEADY__ROUNDS", "7")
    assert load_settings().adapters["steady"] == {"rounds": "7"}  # validated by its adapter


ECHO_PLUGIN = """
import os
from pathlib import Path
from pydantic import SecretStr
from chatcore import hookimpl
from chatcore.config import AdapterSettings
from chatcore.events import Message, Reply


class EchoSettings(AdapterSettings):
    greeting: str = "hello"
    rounds: int = 1
    secret: SecretStr = SecretStr("")


class Echo:
    def __init__(self, context):
        self.context = context

    async def run(self):
        await self.context.chat.ready()
        settings = self.context.settings
        message = Message(f"{settings.greeting} 0", "u", "c", "echo")
        async for event in self.context.chat.send(message):
            if isinstance(event, Reply):
                Path(os.environ["TESTPLUGIN_MARKS"]).write_text(event.text)
        await self.context.stopping.wait()
        return 0


@hookimpl
def register_adapters(register):
    register("echo", Echo, settings=EchoSettings)
"""


def cli() -> Any:
    from chatcore.cli import app

    return app
