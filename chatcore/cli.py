"""The ``chatcore`` command line: ``chat``, ``run``, ``serve``, ``config show``, ``db upgrade``,
``memory export|forget`` and ``plugins``.

Errors the user can fix (bad configuration, missing model, unknown plugin) print one clear
line per problem to standard error and exit with code 2.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, overload

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from chatcore import __version__
from chatcore.config import (
    ConfigError,
    Settings,
    load_settings,
    mask_url,
    masked_settings,
    section_settings,
)
from chatcore.files import write_private
from chatcore.generation.types import GenerationError
from chatcore.memory.base import StoreError, UserKey, counts_of
from chatcore.plugins import PluginError, PluginHost
from chatcore.text import terminal_safe

if TYPE_CHECKING:
    from chatcore.privacy import Erased

app = typer.Typer(
    name="chatcore",
    help="Run a language-model chatbot in the terminal and on chat platforms.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
db_app = typer.Typer(
    help="The database (storage.url): migrations. chatcore applies them when it starts.",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
memory_app = typer.Typer(
    help="What is stored about a user: export it as JSON, or erase it all.",
    no_args_is_help=True,
)
app.add_typer(memory_app, name="memory")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML file that overrides config/default.toml (or set CHATCORE_CONFIG).",
        dir_okay=False,
    ),
]


def _fail(lines: list[str], code: int = 2) -> typer.Exit:
    err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
    for line in lines:
        err.print(terminal_safe(line), markup=False)
    return typer.Exit(code)


def _settings(config: Path | None) -> Settings:
    try:
        settings = load_settings(config)
    except ConfigError as error:
        raise _fail(error.lines) from None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_TerminalSafeFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.logging.level, handlers=[handler])
    return settings


class _TerminalSafeFormatter(logging.Formatter):
    """Log lines may quote model, plugin or user text: neutralise its escape sequences."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(super().format(record))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"chatcore {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """chatcore: a chatbot framework with skill plugins."""


@app.command()
def chat(
    config: ConfigOption = None,
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="Your user name (default: login name).")
    ] = None,
) -> None:
    """Chat with the model in the terminal. Piped input: one message per line."""
    settings = _settings(config)
    code = _run(settings, ["terminal"], {"terminal": {"user": user}}, signal_exit_codes=True)
    raise typer.Exit(code)


@app.command()
def run(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Adapters to start (default: every one with enabled = true).", show_default=False
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run the bot: start the enabled adapters (or the named ones) around one engine."""
    settings = _settings(config)
    raise typer.Exit(_run(settings, names or None))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.", min=0, max=65535)] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the WebSocket chat and its web page (`chatcore run websocket`)."""
    settings = _settings(config)
    section = dict(settings.adapters.get("websocket", {}))
    section.update({k: v for k, v in (("host", host), ("port", port)) if v is not None})
    adapters = {**settings.adapters, "websocket": section}
    raise typer.Exit(_run(settings.model_copy(update={"adapters": adapters}), ["websocket"]))


def _run(
    settings: Settings,
    names: list[str] | None,
    options: dict[str, dict[str, Any]] | None = None,
    *,
    signal_exit_codes: bool = False,
) -> int:
    from chatcore.adapter_api import AdapterStartError
    from chatcore.runner import run_adapters

    try:
        return asyncio.run(
            run_adapters(settings, names, options=options, signal_exit_codes=signal_exit_codes)
        )
    except ConfigError as error:
        raise _fail(error.lines) from None
    except (PluginError, GenerationError, StoreError) as error:
        raise _fail([f"error: {error}"]) from None
    except AdapterStartError as error:
        raise _fail([f"error: {error}"]) from None
    except KeyboardInterrupt:
        return 130


@config_app.command("show")
def config_show(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of TOML.")] = False,
) -> None:
    """Print the effective configuration (defaults, file and environment), secrets masked."""
    settings = _settings(config)
    data = masked_settings(settings)
    data["adapters"] = _adapter_sections(settings)
    data["home"] = str(settings.home_path)
    data["storage"]["url"] = mask_url(settings.storage_url)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(_to_toml(data))


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply the database migrations not yet applied (creating the database's tables)."""
    settings = _settings(config)
    where, before, after = _on_store(settings, upgrade=True)
    if before == after:
        typer.echo(f"{where}: already at revision {after} (the newest)")
    else:
        typer.echo(f"{where}: upgraded from revision {before or '(empty)'} to {after}")


@db_app.command("current")
def db_current(config: ConfigOption = None) -> None:
    """Show the database's migration revision and the newest this chatcore ships."""
    settings = _settings(config)
    where, current, head = _on_store(settings, upgrade=False)
    if current is None:
        state = "no tables yet (run `chatcore db upgrade`, or start chatcore)"
    else:
        state = f"revision {current}" + (" (the newest)" if current == head else "")
    typer.echo(f"{where}: {state}; newest revision: {head}")


def _on_store(settings: Settings, *, upgrade: bool) -> tuple[str, str | None, str | None]:
    """(the database, described; its revision before; after): migrating when ``upgrade``."""
    from chatcore.app import open_store

    async def work() -> tuple[str, str | None, str | None]:
        store = open_store(settings)
        try:
            before, head = await store.revision()
            if not upgrade:
                return store.describe(), before, head
            await store.open()
            after, _ = await store.revision()
            return store.describe(), before, after
        finally:
            await store.close()

    try:
        return asyncio.run(work())
    except StoreError as error:
        raise _fail([f"error: {error}"]) from None


UserOption = Annotated[
    str,
    typer.Option(
        "--user",
        "-u",
        help="The user, as PLATFORM:ID (e.g. discord:123456 or terminal:sam).",
        show_default=False,
    ),
]


@memory_app.command("export")
def memory_export(
    user: UserOption,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write to this file (private: 0600) instead of standard output.",
            dir_okay=False,
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Print everything stored about a user as JSON: who they are, preferences, memories,
    conversations with their summaries and messages. Exit code 1: nothing is stored."""
    settings = _settings(config)
    key = _user_key(user)
    where, data = _user_data(settings, key)
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        write_private(output, text)
    except OSError as error:
        raise _fail([f"error: cannot write {output}: {error.strerror or error}"]) from None
    counts = counts_of(data)
    typer.echo(
        terminal_safe(f"wrote {key} ({counts.describe()}) from {where} to {output}"), err=True
    )


@memory_app.command("forget")
def memory_forget(
    user: UserOption,
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="Erase without asking (needed when not on a terminal)."),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Erase everything stored about a user, and what plugins keep about them (the terminal's
    input history for a terminal user), also when the database holds nothing about them. It
    cannot be undone. Exit code 1: you answered no; 3: a plugin could not erase its data."""
    settings = _settings(config)
    key = _user_key(user)
    where, data = _user_data(settings, key, required=False)
    if data is None:
        typer.echo(
            terminal_safe(
                f"to erase: what plugins keep about {key} ({where} holds nothing about them)"
            )
        )
    else:
        what = counts_of(data).describe()
        typer.echo(
            terminal_safe(
                f"to erase: {key} in {where}: {what}, their record, and what plugins keep"
            )
        )
    if key.platform == "terminal":
        typer.echo(
            "the terminal's input history will be emptied too: it is one file, shared by "
            "everyone who chats in the terminal, so what others typed there goes as well"
        )
    if not yes:
        if not sys.stdin.isatty():
            raise _fail(
                [
                    "error: not erasing without a confirmation; run it on a terminal to be "
                    "asked, or add --yes"
                ]
            )
        if not typer.confirm("Erase all of it? It cannot be undone", default=False):
            raise _fail(["nothing was erased"], code=1)
    erased = _erase(settings, key)
    counts = erased.counts
    typer.echo(terminal_safe(f"erased {key}: {counts.describe()}"))
    warnings = []
    if not counts.clean:
        warnings.append(
            "warning: the database file could not be rebuilt (another process was using "
            "it): copies of the erased text may stay in it until chatcore next erases or "
            "closes; see docs/memory.md"
        )
    if erased.failed_plugins:
        names = ", ".join(repr(name) for name in erased.failed_plugins)
        warnings.append(
            f"warning: plugins that could not erase their data about {key} (see the log "
            f"above): {names}; fix them and run this again"
        )
    if warnings:
        raise _fail(warnings, code=3 if erased.failed_plugins else 0)


def _user_key(text: str) -> UserKey:
    try:
        return UserKey.parse(text.strip())
    except ValueError as error:
        raise _fail([f"error: --user {error}"]) from None


@overload
def _user_data(settings: Settings, user: UserKey) -> tuple[str, dict[str, Any]]: ...
@overload
def _user_data(
    settings: Settings, user: UserKey, *, required: bool
) -> tuple[str, dict[str, Any] | None]: ...
def _user_data(
    settings: Settings, user: UserKey, *, required: bool = True
) -> tuple[str, dict[str, Any] | None]:
    """(the database, described; everything it stores about ``user``), without creating
    the database; exit code 1 when it stores nothing about them and ``required``."""
    from chatcore.app import open_store

    async def work() -> tuple[str, dict[str, Any] | None]:
        store = open_store(settings)
        try:
            current, _ = await store.revision()
            if current is None:
                return store.describe(), None
            return store.describe(), await store.export_user(user)
        finally:
            await store.close()

    try:
        where, data = asyncio.run(work())
    except StoreError as error:
        raise _fail([f"error: {error}"]) from None
    if data is None and required:
        raise _fail([f"error: nothing is stored about {user} in {where}"], code=1)
    return where, data


def _erase(settings: Settings, user: UserKey) -> Erased:
    """Erase ``user`` as ``/forget-me`` does: the store, then every plugin's ``user_erased``
    (plugins are loaded, adapters are not started)."""
    from chatcore.app import open_store
    from chatcore.memory.service import Memories
    from chatcore.privacy import Privacy

    async def work() -> Erased:
        plugins = PluginHost()
        await plugins.load(settings)
        store = open_store(settings)
        memories = Memories(store, settings.memory)
        try:
            return await Privacy(settings, store, memories, plugins).erase(user)
        finally:
            await memories.close()
            await store.close()

    try:
        return asyncio.run(work())
    except StoreError as error:
        raise _fail([f"error: {error}"]) from None


@app.command("plugins")
def list_plugins(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List plugins: where each came from, its status, its hooks and what it registered."""
    settings = _settings(config)
    host = PluginHost()
    asyncio.run(host.load(settings))
    infos = sorted(host.infos.values(), key=lambda i: (i.source != "built-in", i.name))
    if as_json:
        typer.echo(json.dumps([info.__dict__ for info in infos], indent=2))
        return
    table = Table("plugin", "source", "status", "registered", "hooks", show_lines=False)
    for info in infos:
        registered = "; ".join(f"{k}: {', '.join(v)}" for k, v in info.registered.items())
        status = info.status if info.error is None else f"{info.status}: {info.error}"
        cells = (info.name, info.source, status, registered or "-", ", ".join(info.hooks) or "-")
        table.add_row(*(Text(terminal_safe(cell)) for cell in cells))
    Console(soft_wrap=False, width=max(100, Console().width)).print(table)


def _adapter_sections(settings: Settings) -> dict[str, Any]:
    """Every registered adapter's section, validated and with its secrets masked; a section no
    plugin registers is shown with its values masked (nothing can say which are secret)."""
    host = PluginHost()
    asyncio.run(host.load(settings))
    sections: dict[str, Any] = {}
    try:
        for name, spec in host.adapters.items():
            sections[name] = masked_settings(section_settings(settings, name, spec.settings))
    except ConfigError as error:
        raise _fail(error.lines) from None
    for name, raw in settings.adapters.items():
        sections.setdefault(name, {key: "********" for key in raw})
    return sections


def _to_toml(data: dict[str, Any]) -> str:
    """Render nested plain data as TOML (scalars first, then tables)."""
    lines: list[str] = []

    def emit(table: dict[str, Any], path: list[str]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in table.items() if isinstance(v, dict)}
        if path and scalars:
            lines.append(f"\n[{'.'.join(path)}]")
        for key, value in scalars.items():
            lines.append(f"{key} = {json.dumps(value, ensure_ascii=False)}")
        for key, value in tables.items():
            emit(value, [*path, key])

    emit(data, [])
    text = "\n".join(lines).strip() + "\n"
    tomllib.loads(text)  # what we print must be a valid config file
    return text


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
