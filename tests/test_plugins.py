"""The plugin system: built-ins, installed entry points, the allowlist, broken plugins,
collisions, hook calling and ``chatcore plugins``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from chatcore import hookimpl
from chatcore.bounded import resolve
from chatcore.cli import app
from chatcore.commands import Command
from chatcore.config import Settings
from chatcore.plugins import PluginError, PluginFault, PluginHost
from tests.conftest import make_settings
from tests.plugin_fixtures import install_plugin

GOOD = """
from chatcore import hookimpl
from chatcore.commands import Command

@hookimpl
def register_commands(register):
    register(Command("ping", "answer pong", lambda ctx: "pong"))

@hookimpl
async def message_received(message):
    return None
"""


async def _loaded(settings: Settings) -> PluginHost:
    host = PluginHost()
    await host.load(settings)
    return host


async def test_builtins_load_and_register(isolated_env: Path) -> None:
    host = await _loaded(make_settings(isolated_env, plugins={"disabled": []}))
    assert {n: i.status for n, i in host.infos.items()} == {
        "backends": "loaded",
        "commands": "loaded",
        "memory": "loaded",
        "safety": "loaded",
        "postprocess": "loaded",
        "terminal": "loaded",
        "websocket": "loaded",
        "discord": "loaded",
    }
    assert host.backends.names() == ["fake", "openai", "transformers"]
    assert host.adapters.names() == ["discord", "terminal", "websocket"]
    assert host.commands.names() == [
        "forget",
        "forget-me",
        "help",
        "memories",
        "prefs",
        "remember",
        "reset",
    ]
    assert host.commands.owner("reset") == "commands"
    assert host.infos["commands"].registered == {"command": ["help", "reset"]}


async def test_builtin_can_be_disabled(isolated_env: Path) -> None:
    host = await _loaded(make_settings(isolated_env, plugins={"disabled": ["commands"]}))
    assert host.infos["commands"].status == "disabled"
    assert "help" not in host.commands


async def test_unknown_builtin_is_reported(isolated_env: Path) -> None:
    host = await _loaded(make_settings(isolated_env, plugins={"builtin": ["backends", "nope"]}))
    assert host.infos["nope"].status == "failed"
    assert "no built-in plugin 'nope'" in (host.infos["nope"].error or "")


async def test_installed_plugin_loads_from_entry_point(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "pinger", GOOD)
    host = await _loaded(settings)
    info = host.infos["pinger"]
    assert info.status == "loaded"
    assert info.source.startswith("chatcore-pinger 0.1")
    assert info.hooks == ["message_received"]
    assert host.commands.owner("ping") == "pinger"


async def test_allowlist_limits_installed_plugins(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "pinger", GOOD)
    monkeypatch.setenv("CHATCORE_PLUGINS", "something-else")
    host = await _loaded(settings)
    assert host.infos["pinger"].status == "disabled"
    assert "ping" not in host.commands
    assert host.infos["commands"].status == "loaded"  # built-ins are not subject to it

    monkeypatch.setenv("CHATCORE_PLUGINS", "something-else, pinger")
    assert (await _loaded(settings)).infos["pinger"].status == "loaded"


async def test_plugin_that_fails_to_import_is_reported_and_contained(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    install_plugin(tmp_path, monkeypatch, "broken", "import not_a_module_anywhere\n")
    with caplog.at_level(logging.WARNING):
        host = await _loaded(settings)
    info = host.infos["broken"]
    assert info.status == "failed"
    assert "ModuleNotFoundError" in (info.error or "")
    assert "'broken'" in caplog.text
    assert host.infos["commands"].status == "loaded"


async def test_plugin_that_raises_while_registering_is_disabled_entirely(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = """
    from chatcore import hookimpl
    from chatcore.commands import Command

    @hookimpl
    def register_commands(register):
        register(Command("half", "registered before the error", lambda ctx: "x"))
        raise RuntimeError("boom")

    @hookimpl
    def message_received(message):
        raise AssertionError("a failed plugin must not be called")
    """
    install_plugin(tmp_path, monkeypatch, "halfway", source)
    host = await _loaded(settings)
    assert host.infos["halfway"].status == "failed"
    assert host.infos["halfway"].error == "raised RuntimeError: boom in hook register_commands"
    assert "half" not in host.commands
    assert await host.call("message_received", message=None) == []


async def test_name_collision_keeps_the_first_and_fails_the_second(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = """
    from chatcore import hookimpl
    from chatcore.commands import Command

    @hookimpl
    def register_commands(register):
        register(Command("help", "my own help", lambda ctx: "mine"))
    """
    install_plugin(tmp_path, monkeypatch, "thief", source)
    host = await _loaded(settings)
    assert host.commands.owner("help") == "commands"
    assert "already registered by plugin 'commands'" in (host.infos["thief"].error or "")


async def test_disabled_config_applies_to_installed_plugins(
    isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "pinger", GOOD)
    host = await _loaded(make_settings(isolated_env, plugins={"disabled": ["pinger"]}))
    assert host.infos["pinger"].status == "disabled"


async def test_call_contains_a_raising_hook_and_awaits_async_ones(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    class Raising:
        @hookimpl
        def extend_system_prompt(self, message: object) -> str:
            raise ValueError("bad plugin")

    class Async:
        @hookimpl
        async def extend_system_prompt(self, message: object) -> str:
            return "from async"

    class Sync:
        @hookimpl
        def extend_system_prompt(self, message: object) -> str:
            return "from sync"

    host = PluginHost()
    for name, plugin in [("raising", Raising()), ("async", Async()), ("sync", Sync())]:
        host.add_plugin(plugin, name)
    with caplog.at_level(logging.ERROR):
        results = await host.call("extend_system_prompt", message=object())
    assert results == [("sync", "from sync"), ("async", "from async")]
    assert (
        "plugin 'raising' raised ValueError: bad plugin in hook extend_system_prompt" in caplog.text
    )
    assert host.infos["raising"].hook_errors == 1


class _Answer:
    def __init__(self, value: str | None) -> None:
        self.value = value
        self.calls = 0

    @hookimpl
    def extend_system_prompt(self, message: object) -> str | None:
        self.calls += 1
        return self.value


class _Raise:
    @hookimpl
    def extend_system_prompt(self, message: object) -> str:
        raise ValueError("bad plugin")


class _Hang:
    @hookimpl
    async def extend_system_prompt(self, message: object) -> str:
        await asyncio.Event().wait()  # never returns
        return "late"


def _host(*plugins: tuple[str, object]) -> PluginHost:
    """A host with ``plugins`` added oldest first (calls go newest first)."""
    host = PluginHost()
    for name, plugin in plugins:
        host.add_plugin(plugin, name)
    return host


async def test_call_strict_fails_closed_naming_the_plugin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = _host(("first", _Answer("one")), ("second", _Answer("two")))
    assert await host.call_strict("extend_system_prompt", message=object()) == [
        ("second", "two"),
        ("first", "one"),
    ]
    host = _host(("after", _Answer("never")), ("raising", _Raise()), ("before", _Answer("b")))
    with caplog.at_level(logging.ERROR), pytest.raises(PluginFault) as raised:
        await host.call_strict("extend_system_prompt", message=object())
    assert raised.value.plugin == "raising" and not raised.value.timed_out
    assert "plugin 'raising' raised ValueError: bad plugin in hook extend_system_prompt" in (
        caplog.text
    )
    host = _host(("hanging", _Hang()))
    with pytest.raises(PluginFault) as raised:
        await host.call_strict("extend_system_prompt", seconds=0.05, message=object())
    assert raised.value.plugin == "hanging" and raised.value.timed_out


async def test_call_first_stops_at_the_first_answer() -> None:
    never = _Answer("never")
    host = _host(("last", never), ("answers", _Answer("yes")), ("passes", _Answer(None)))
    assert await host.call_first("extend_system_prompt", message=object()) == ("answers", "yes")
    assert never.calls == 0
    assert (
        await _host(("none", _Answer(None))).call_first("extend_system_prompt", message=object())
        is None
    )
    # A plugin that fails gives way to the next, unless the call is strict.
    host = _host(("next", _Answer("next")), ("raising", _Raise()))
    assert await host.call_first("extend_system_prompt", message=object()) == ("next", "next")
    with pytest.raises(PluginFault):
        await host.call_first("extend_system_prompt", strict=True, message=object())


async def test_add_plugin_then_collect(settings: Settings) -> None:
    host = await _loaded(settings)

    class Extra:
        @hookimpl
        def register_commands(self, register: Callable[[Command], None]) -> None:
            register(Command("extra", "an extra command", lambda ctx: "x"))

    host.add_plugin(Extra(), "extra")
    await host.collect("extra")
    assert host.commands.owner("extra") == "extra"
    host.remove_plugin("extra")
    assert "extra" not in host.commands
    with pytest.raises(PluginError, match="no command named 'extra'"):
        host.commands.get("extra")


async def test_bad_registration_value_fails_the_plugin(settings: Settings) -> None:
    host = await _loaded(settings)

    class Wrong:
        @hookimpl
        def register_commands(self, register: Callable[[Any], None]) -> None:
            register("not a command")

    host.add_plugin(Wrong(), "wrong")
    await host.collect("wrong")
    assert host.infos["wrong"].status == "failed"
    assert "expects a chatcore.commands.Command" in (host.infos["wrong"].error or "")


def test_command_names_are_validated() -> None:
    with pytest.raises(ValueError, match="lower-case"):
        Command("/Bad", "help", lambda ctx: "")
    with pytest.raises(ValueError, match="one-line help"):
        Command("ok", " ", lambda ctx: "")


async def test_resolve_handles_values_and_coroutines() -> None:
    async def three() -> int:
        return 3

    assert await resolve(1) == 1
    assert await resolve(three()) == 3


def test_cli_plugins_lists_plugins_and_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "pinger", GOOD)
    install_plugin(tmp_path, monkeypatch, "broken", "raise ImportError('missing thing')\n")
    result = CliRunner().invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["pinger"]["registered"] == {"command": ["ping"]}
    assert rows["broken"]["status"] == "failed"
    assert "missing thing" in rows["broken"]["error"]
    assert rows["backends"]["registered"] == {"backend": ["transformers", "openai", "fake"]}

    table = CliRunner().invoke(app, ["plugins"])
    assert table.exit_code == 0
    assert "pinger" in table.stdout and "command: ping" in table.stdout


async def test_installed_plugin_named_like_a_builtin_never_displaces_it(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "commands", GOOD, dist_name="impostor")
    host = await _loaded(settings)
    assert host.infos["commands"].status == "loaded"
    assert host.infos["commands"].source == "built-in"
    assert host.commands.names() == [
        "forget",
        "forget-me",
        "help",
        "memories",
        "prefs",
        "remember",
        "reset",
    ]
    (clash,) = [i for n, i in host.infos.items() if n.startswith("commands (impostor")]
    assert clash.status == "failed" and "already loaded" in (clash.error or "")

    monkeypatch.setenv("CHATCORE_PLUGINS", "")  # left out by the allowlist: not even reported
    host = await _loaded(settings)
    assert host.infos["commands"].status == "loaded"
    assert not [n for n in host.infos if n.startswith("commands (")]


WRAPPING = """
from chatcore import hookimpl
from chatcore.commands import Command

@hookimpl
def register_commands(register):
    register(Command("guarded", "a command", lambda ctx: "ok"))

@hookimpl(wrapper=True)
def extend_system_prompt(message):
    return (yield)
"""


async def test_a_plugin_with_a_wrapper_implementation_is_refused_at_load(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A wrapper would never run (hooks are called one implementation at a time, bounded):
    # refusing the plugin says so at once instead of failing open at every call.
    install_plugin(tmp_path, monkeypatch, "wrapping", WRAPPING)
    with caplog.at_level(logging.WARNING):
        host = await _loaded(settings)
    info = host.infos["wrapping"]
    assert info.status == "failed"
    assert "wrapper implementations are not supported (extend_system_prompt)" in (info.error or "")
    assert "guarded" not in host.commands
    assert host.pm.get_plugin("wrapping") is None
    assert "'wrapping'" in caplog.text

    class Wrapping:
        @hookimpl(hookwrapper=True)
        def message_received(self, message: object) -> Any:
            yield

    with pytest.raises(PluginError, match="not supported \\(message_received\\)"):
        host.add_plugin(Wrapping(), "wrapping-in-code")
    assert "wrapping-in-code" not in host.infos
    assert host.pm.get_plugin("wrapping-in-code") is None


BAD_BACKEND = """
from chatcore import hookimpl

class Exploding:
    name = "exploding"

    async def load(self):
        raise ValueError("no GPU here")

def factory(settings):
    if settings.generation.seed == 7:
        raise KeyError("missing option")
    return Exploding()

@hookimpl
def register_backends(register):
    register("exploding", factory)
"""


def test_a_plugin_backend_that_fails_is_named_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "boom", BAD_BACKEND)
    monkeypatch.setenv("CHATCORE_MODEL__BACKEND", "exploding")
    result = CliRunner().invoke(app, ["chat"], input="hi\n")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: backend 'exploding' (plugin 'boom') failed to load: ValueError: no GPU here"
    )
    monkeypatch.setenv("CHATCORE_GENERATION__SEED", "7")
    result = CliRunner().invoke(app, ["chat"], input="hi\n")
    assert result.exit_code == 2
    assert "backend 'exploding' (plugin 'boom') failed to start: KeyError" in result.stderr
