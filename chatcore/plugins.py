"""The plugin manager: loads built-in and installed plugins, collects what they register, and
calls hooks so that one failing plugin is reported by name and contained.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, Literal, TypeVar

import pluggy

from chatcore import hookspecs
from chatcore.commands import Command
from chatcore.config import PLUGINS_ENV, Settings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "chatcore"

DEFAULT_PLUGINS: dict[str, str] = {
    "backends": "chatcore.builtin.backends",
    "commands": "chatcore.builtin.commands",
    "terminal": "chatcore.adapters.terminal",
}
"""Built-in plugins by name: each module is an ordinary pluggy plugin."""

T = TypeVar("T")


class PluginError(Exception):
    """A plugin could not be used; the message names the plugin and what went wrong."""


@dataclass
class PluginInfo:
    """What ``chatcore plugins`` shows about one plugin."""

    name: str
    source: str
    status: Literal["loaded", "failed", "disabled"] = "loaded"
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    hook_errors: int = 0


class Registry(Generic[T]):
    """Named things plugins registered, remembering which plugin supplied each."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}

    def add(self, name: str, item: T, owner: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"a {self.kind} name must be a non-empty string, not {name!r}")
        if name in self._items:
            raise PluginError(
                f"{self.kind} {name!r} is already registered by plugin {self._owners[name]!r}"
            )
        self._items[name] = item
        self._owners[name] = owner

    def drop_owner(self, owner: str) -> None:
        for name in [n for n, o in self._owners.items() if o == owner]:
            del self._items[name], self._owners[name]

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise PluginError(
                f"no {self.kind} named {name!r}; available: {known} "
                "(see `chatcore plugins` for what each plugin registered)"
            ) from None

    def owner(self, name: str) -> str:
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._items.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


async def resolve(value: Any) -> Any:
    """Await ``value`` if it is awaitable: the one place sync and async hooks meet."""
    while inspect.isawaitable(value):
        value = await value
    return value


class PluginHost:
    """Owns the pluggy manager and the registries filled by the ``register_*`` hooks."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.backends: Registry[Callable[[Settings], Any]] = Registry("backend")
        self.adapters: Registry[Callable[..., Any]] = Registry("adapter")
        self.commands: Registry[Command] = Registry("command")

    # -- loading -------------------------------------------------------------------------------

    async def load(self, settings: Settings, installed: Iterable[EntryPoint] | None = None) -> None:
        """Load the configured built-ins and the installed entry-point plugins, then collect
        their registrations. Failures are recorded in ``infos``; nothing here raises for them."""
        disabled = set(settings.plugins.disabled)
        for name in settings.plugins.builtin:
            if name not in DEFAULT_PLUGINS:
                known = ", ".join(DEFAULT_PLUGINS)
                self._fail(name, "built-in", f"no built-in plugin {name!r}; built-ins: {known}")
            elif name in disabled:
                self.infos[name] = PluginInfo(name, "built-in", status="disabled")
            else:
                self._import_and_add(name, "built-in", partial(_import, DEFAULT_PLUGINS[name]))

        allow = _allowlist()
        points = entry_points(group=ENTRY_POINT_GROUP) if installed is None else installed
        for point in points:
            source = _describe_entry_point(point)
            if point.name in disabled or (allow is not None and point.name not in allow):
                if point.name not in self.infos:
                    self.infos[point.name] = PluginInfo(point.name, source, status="disabled")
            elif point.name in self.infos:
                # Never displace the plugin that holds the name (a built-in loads first).
                key = f"{point.name} ({source})"
                self._fail(key, source, f"a plugin named {point.name!r} is already loaded")
            else:
                self._import_and_add(point.name, source, point.load)
        await self._collect_registrations()

    def add_plugin(self, plugin: object, name: str, source: str = "added in code") -> None:
        """Register a plugin object directly (tests, embedding applications)."""
        if name in self.infos:
            raise PluginError(f"a plugin named {name!r} is already loaded")
        self.pm.register(plugin, name=name)
        self.infos[name] = PluginInfo(name, source, hooks=self._hook_names(plugin))

    def remove_plugin(self, name: str) -> None:
        """Unregister a plugin and everything it registered."""
        self._unregister(name)
        self.infos.pop(name, None)

    def _unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        for registry in (self.backends, self.adapters, self.commands):
            registry.drop_owner(name)

    async def collect(self, name: str) -> None:
        """Collect registrations of one plugin added with ``add_plugin`` after ``load``."""
        await self._collect_registrations(only=name)

    def _import_and_add(self, name: str, source: str, importer: Callable[[], object]) -> None:
        try:
            plugin = importer()
            self.pm.register(plugin, name=name)
        except Exception as error:
            self._fail(name, source, f"failed to load: {_one_line(error)}")
            log.debug("plugin %s failed to load:\n%s", name, traceback.format_exc())
            return
        self.infos[name] = PluginInfo(name, source, hooks=self._hook_names(plugin))

    def _fail(self, name: str, source: str, error: str) -> None:
        log.warning("plugin %r disabled: %s", name, error)
        self.infos[name] = PluginInfo(name, source, status="failed", error=error)

    def _hook_names(self, plugin: object) -> list[str]:
        return sorted(
            hook.name
            for hook in self.pm.get_hookcallers(plugin) or []
            if not hook.name.startswith("register_")
        )

    async def _collect_registrations(self, only: str | None = None) -> None:
        collectors: list[tuple[str, Registry[Any], Callable[..., tuple[str, Any]]]] = [
            ("register_backends", self.backends, lambda name, factory: (name, factory)),
            ("register_adapters", self.adapters, lambda name, factory: (name, factory)),
            ("register_commands", self.commands, _command_entry),
        ]
        for hook_name, registry, to_entry in collectors:
            # In load order, so built-ins claim their names before installed plugins.
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                owner = impl.plugin_name
                if (only is not None and owner != only) or self.infos[owner].status != "loaded":
                    continue

                def register(
                    *args: Any,
                    _reg: Registry[Any] = registry,
                    _owner: str = owner,
                    _to: Callable[..., tuple[str, Any]] = to_entry,
                ) -> None:
                    name, item = _to(*args)
                    _reg.add(name, item, _owner)
                    self.infos[_owner].registered.setdefault(_reg.kind, []).append(name)

                try:
                    await resolve(impl.function(register=register))
                except Exception as error:
                    self._disable(owner, f"{hook_name} raised: {_one_line(error)}")

    def _disable(self, name: str, error: str) -> None:
        log.warning("plugin %r disabled: %s", name, error)
        self._unregister(name)
        info = self.infos[name]
        info.status, info.error, info.registered = "failed", error, {}

    # -- calling -------------------------------------------------------------------------------

    async def call(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of a hook, newest plugin first; return the
        ``(plugin name, result)`` pairs that are not None. A raising plugin is logged by name and
        skipped."""
        results: list[tuple[str, Any]] = []
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            if impl.wrapper or impl.hookwrapper:
                log.warning(
                    "plugin %r: wrapper implementations of %s are not supported; skipped",
                    impl.plugin_name,
                    hook_name,
                )
                continue
            try:
                args = {name: kwargs[name] for name in impl.argnames}
                value = await resolve(impl.function(**args))
            except Exception as error:
                info = self.infos.get(impl.plugin_name)
                if info is not None:
                    info.hook_errors += 1
                log.error(
                    "plugin %r raised in hook %s: %s", impl.plugin_name, hook_name, _one_line(error)
                )
                log.debug("traceback:\n%s", traceback.format_exc())
                continue
            if value is not None:
                results.append((impl.plugin_name, value))
        return results


def _import(module: str) -> object:
    return importlib.import_module(module)


def _command_entry(command: Any) -> tuple[str, Command]:
    if not isinstance(command, Command):
        raise PluginError(f"register_commands expects a chatcore.commands.Command, not {command!r}")
    return command.name, command


def _allowlist() -> set[str] | None:
    raw = os.environ.get(PLUGINS_ENV)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _describe_entry_point(point: EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    if dist is not None:
        return f"{dist.name} {dist.version} ({point.value})"
    return f"entry point {point.value}"


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
