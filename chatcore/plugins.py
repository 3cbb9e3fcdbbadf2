"""The plugin manager: loads built-in and installed plugins, collects what they register, and
calls hooks so that one failing plugin is reported by name and contained (observers), fails
the call (hooks that decide), or gives way to the next (hooks where one handler is chosen).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, Literal, TypeVar

import pluggy

from chatcore import hookspecs
from chatcore.adapter_api import AdapterSpec
from chatcore.bounded import Raised, TimedOut, Worker, run_bounded
from chatcore.commands import Command
from chatcore.config import PLUGINS_ENV, AdapterSettings, PluginsSettings, Settings
from chatcore.pipeline.steps import DetectorSettings, DetectorSpec, RewriterSettings, RewriterSpec
from chatcore.skills import Skill

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "chatcore"

DEFAULT_PLUGINS: dict[str, str] = {
    "backends": "chatcore.builtin.backends",
    "commands": "chatcore.builtin.commands",
    "memory": "chatcore.builtin.memory",
    "safety": "chatcore.builtin.safety",
    "postprocess": "chatcore.builtin.postprocess",
    "terminal": "chatcore.adapters.terminal",
    "websocket": "chatcore.adapters.websocket",
    "discord": "chatcore.adapters.discord",
}
"""Built-in plugins by name: each module is an ordinary pluggy plugin."""

T = TypeVar("T")
StepSpec = DetectorSpec | RewriterSpec
STEP_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
"""Step names are keys of ``[pipeline.steps.<name>]`` and of environment variables."""


class PluginError(Exception):
    """A plugin could not be used; the message names the plugin and what went wrong."""


class PluginFault(Exception):
    """Plugin code raised or ran past its time limit; ``str()`` names the plugin and the call."""

    def __init__(self, plugin: str, what: str, problem: str, *, timed_out: bool) -> None:
        super().__init__(f"plugin {plugin!r} {problem} in {what}")
        self.plugin = plugin
        self.timed_out = timed_out
        self.detail = f"{problem} in {what}"
        """What went wrong, without the plugin's name."""


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
        self._shared: list[Registry[Any]] = []

    def share_names(self, other: Registry[Any]) -> None:
        """Make names unique across this registry and ``other`` (commands and skills both
        answer ``/name``)."""
        self._shared.append(other)
        other._shared.append(self)

    def add(self, name: str, item: T, owner: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"a {self.kind} name must be a non-empty string, not {name!r}")
        if name in self._items:
            raise PluginError(
                f"{self.kind} {name!r} is already registered by plugin {self._owners[name]!r}"
            )
        for other in self._shared:
            if name in other:
                raise PluginError(
                    f"{self.kind} {name!r}: the name is already taken by the {other.kind} of "
                    f"plugin {other.owner(name)!r}"
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


class PluginHost:
    """Owns the pluggy manager and the registries filled by the ``register_*`` hooks."""

    def __init__(self, limits: PluginsSettings | None = None) -> None:
        self.limits = limits or PluginsSettings()
        """Time limits and the failure count that disables a plugin; ``load`` takes the
        configured ones."""
        self._failures: dict[str, int] = {}
        self._workers: dict[str, Worker] = {}
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.backends: Registry[Callable[[Settings], Any]] = Registry("backend")
        self.adapters: Registry[AdapterSpec] = Registry("adapter")
        self.commands: Registry[Command] = Registry("command")
        self.skills: Registry[Skill] = Registry("skill")
        """Skills (``register_skills``): ``/name`` is a command or a skill, never both."""
        self.skills.share_names(self.commands)
        self.filters: Registry[StepSpec] = Registry("step")
        """Pipeline steps (``register_filters``): detectors and rewriters share one namespace,
        the names of their ``[pipeline.steps.<name>]`` sections."""

    # -- loading -------------------------------------------------------------------------------

    async def load(self, settings: Settings, installed: Iterable[EntryPoint] | None = None) -> None:
        """Load the configured built-ins and the installed entry-point plugins, then collect
        their registrations. Failures are recorded in ``infos``; nothing here raises for them."""
        self.limits = settings.plugins
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
        wrappers = self._refuse_wrappers(plugin)
        if wrappers:
            raise PluginError(f"plugin {name!r}: {wrappers}")
        self.infos[name] = PluginInfo(name, source, hooks=self._hook_names(plugin))

    def remove_plugin(self, name: str) -> None:
        """Unregister a plugin and everything it registered."""
        self._unregister(name)
        self.infos.pop(name, None)

    def _unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        worker = self._workers.pop(name, None)
        if worker is not None:
            worker.stop()
        for registry in (self.backends, self.adapters, self.commands, self.skills, self.filters):
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
        wrappers = self._refuse_wrappers(plugin)
        if wrappers:
            self._fail(name, source, wrappers)
            return
        self.infos[name] = PluginInfo(name, source, hooks=self._hook_names(plugin))

    def _refuse_wrappers(self, plugin: object) -> str:
        """Unregister ``plugin`` and say why when it has wrapper implementations: hooks are
        called one implementation at a time, bounded, so a wrapper would silently never run
        (fail open, for a wrapper meant to guard something). Empty when there are none."""
        wrapped = sorted(
            hook.name
            for hook in self.pm.get_hookcallers(plugin) or []
            for impl in hook.get_hookimpls()
            if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper)
        )
        if not wrapped:
            return ""
        self.pm.unregister(plugin)
        return (
            f"wrapper implementations are not supported ({', '.join(wrapped)}); use plain "
            "hooks, or register_filters for steps on messages and reply streams"
        )

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
            ("register_adapters", self.adapters, _adapter_entry),
            ("register_commands", self.commands, _command_entry),
            ("register_skills", self.skills, _skill_entry),
            ("register_filters", self.filters, _filter_entry),
        ]
        for hook_name, registry, to_entry in collectors:
            # In load order, so built-ins claim their names before installed plugins.
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                owner = impl.plugin_name
                if (only is not None and owner != only) or self.infos[owner].status != "loaded":
                    continue

                window = _Window(hook_name)
                register = partial(self._register, registry, owner, to_entry, window)
                try:
                    await self.invoke(
                        owner, f"hook {hook_name}", impl.function, {"register": register}
                    )
                except PluginFault as fault:
                    self._disable(owner, fault.detail)
                finally:
                    window.open = False

    def _register(
        self,
        registry: Registry[Any],
        owner: str,
        to_entry: Callable[..., tuple[str, Any]],
        window: _Window,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """The ``register`` callable a ``register_*`` hook of ``owner`` receives; it works only
        while that hook runs (a hook that timed out cannot register things later)."""
        if not window.open:
            raise PluginError(f"register was called after {window.hook} of {owner!r} returned")
        name, item = to_entry(*args, **kwargs)
        registry.add(name, item, owner)
        label = registry.kind
        if isinstance(item, DetectorSpec | RewriterSpec):
            label = "detector" if isinstance(item, DetectorSpec) else "rewriter"
        self.infos[owner].registered.setdefault(label, []).append(name)

    def _disable(self, name: str, error: str) -> None:
        log.warning("plugin %r disabled: %s", name, error)
        self._unregister(name)
        info = self.infos[name]
        info.status, info.error, info.registered = "failed", error, {}

    # -- calling -------------------------------------------------------------------------------

    async def call(
        self,
        hook_name: str,
        *,
        seconds: float | None = None,
        concurrently: bool = False,
        faults: list[PluginFault] | None = None,
        **kwargs: Any,
    ) -> list[tuple[str, Any]]:
        """For observers: call every implementation of a hook, newest plugin first (or all at
        once when ``concurrently``); return the ``(plugin name, result)`` pairs that are not
        None. A plugin that raises or runs past its time limit is logged by name and skipped:
        the hook's other observers go on. Its ``PluginFault`` is appended to ``faults`` when
        given, for a caller that must tell someone (an erase a plugin could not finish)."""
        impls = self._impls(hook_name)

        async def one(impl: Any) -> Any:
            try:
                return await self._call_one(impl, hook_name, kwargs, seconds)
            except PluginFault as fault:
                if faults is not None:
                    faults.append(fault)
                return None  # logged by invoke; an observer's failure never stops the message

        if concurrently:
            values = await asyncio.gather(*(one(impl) for impl in impls))
        else:
            values = [await one(impl) for impl in impls]
        return [
            (impl.plugin_name, v) for impl, v in zip(impls, values, strict=True) if v is not None
        ]

    async def call_strict(
        self, hook_name: str, *, seconds: float | None = None, **kwargs: Any
    ) -> list[tuple[str, Any]]:
        """For hooks that decide (a check that may refuse): call every implementation, newest
        plugin first, and fail closed: the first that raises or runs past its time limit stops
        the call with its ``PluginFault``, logged with the plugin's name. Returns the
        ``(plugin name, result)`` pairs that are not None."""
        results = []
        for impl in self._impls(hook_name):
            value = await self._call_one(impl, hook_name, kwargs, seconds)
            if value is not None:
                results.append((impl.plugin_name, value))
        return results

    async def call_first(
        self, hook_name: str, *, seconds: float | None = None, strict: bool = False, **kwargs: Any
    ) -> tuple[str, Any] | None:
        """For hooks where one handler is chosen: call implementations newest plugin first and
        stop at the first non-None result, returned with its plugin's name (None when none
        answered). A plugin that raises or runs out of time is logged and passed over, so the
        next may answer; with ``strict`` its ``PluginFault`` stops the call instead."""
        for impl in self._impls(hook_name):
            try:
                value = await self._call_one(impl, hook_name, kwargs, seconds)
            except PluginFault:
                if strict:
                    raise
                continue
            if value is not None:
                return impl.plugin_name, value
        return None

    def _impls(self, hook_name: str) -> list[Any]:
        """A hook's implementations, newest plugin first (wrappers never load)."""
        return list(reversed(getattr(self.pm.hook, hook_name).get_hookimpls()))

    async def _call_one(
        self, impl: Any, hook_name: str, kwargs: dict[str, Any], seconds: float | None
    ) -> Any:
        args = {name: kwargs[name] for name in impl.argnames}
        return await self.invoke(
            impl.plugin_name, f"hook {hook_name}", impl.function, args, seconds=seconds
        )

    async def invoke(
        self,
        plugin: str,
        what: str,
        function: Callable[..., Any],
        kwargs: dict[str, Any],
        *,
        limit: Literal["hook_timeout", "command_timeout"] = "hook_timeout",
        seconds: float | None = None,
    ) -> Any:
        """Run plugin code, bounded (``chatcore.bounded``): sync code in the plugin's own daemon
        thread, async code in a task of its own, anything it returns awaited, all within the
        seconds of the ``plugins.<limit>`` setting (or ``seconds``, when shorter).

        Raises ``PluginFault``, already logged with the plugin's name, when the code raised
        anything (``SystemExit`` and ``KeyboardInterrupt`` included) or ran out of time; the
        caller decides whether to go on (an observer) or fail closed (a step that decides). A
        plugin that faults ``plugins.max_failures`` times in a row is disabled."""
        configured: float = getattr(self.limits, limit)
        allowed = configured if seconds is None else min(configured, seconds)
        try:
            value = await run_bounded(function, kwargs, allowed, self._worker(plugin))
        except TimedOut:
            setting = f" (plugins.{limit})" if allowed == configured else ""
            problem = f"did not return within {allowed:g} s{setting}"
            raise self._fault(plugin, what, None, problem) from None
        except Raised as raised:
            raise self._fault(plugin, what, raised.error) from raised.error
        self._failures.pop(plugin, None)
        return value

    def _worker(self, plugin: str) -> Worker:
        worker = self._workers.get(plugin)
        if worker is None:
            worker = self._workers[plugin] = Worker(f"chatcore-plugin-{plugin}")
        return worker

    def _fault(
        self, plugin: str, what: str, error: BaseException | None, problem: str = ""
    ) -> PluginFault:
        if error is not None:
            problem = f"raised {_one_line(error)}"
        fault = PluginFault(plugin, what, problem, timed_out=error is None)
        log.error("%s", fault)
        if error is not None:
            log.debug("traceback:\n%s", "".join(traceback.format_exception(error)))
        info = self.infos.get(plugin)
        if info is not None:
            info.hook_errors += 1
        count = self._failures[plugin] = self._failures.get(plugin, 0) + 1
        limit = self.limits.max_failures
        if limit and count >= limit and info is not None and info.status == "loaded":
            self._disable(plugin, f"{count} failures in a row; the last: {fault.detail}")
        return fault


@dataclass
class _Window:
    """Open while a ``register_*`` hook runs."""

    hook: str
    open: bool = True


def _import(module: str) -> object:
    return importlib.import_module(module)


def _adapter_entry(
    name: str, factory: Callable[..., Any], settings: type[AdapterSettings] = AdapterSettings
) -> tuple[str, AdapterSpec]:
    if not (isinstance(settings, type) and issubclass(settings, AdapterSettings)):
        raise PluginError(
            f"register_adapters: the settings of {name!r} must subclass "
            f"chatcore.config.AdapterSettings, not {settings!r}"
        )
    return name, AdapterSpec(factory, settings)


def _filter_entry(spec: Any) -> tuple[str, StepSpec]:
    if not isinstance(spec, DetectorSpec | RewriterSpec):
        raise PluginError(
            "register_filters expects a chatcore.pipeline.steps.DetectorSpec or RewriterSpec, "
            f"not {spec!r}"
        )
    if not isinstance(spec.name, str) or not STEP_NAME.match(spec.name):
        raise PluginError(
            f"register_filters: step name {spec.name!r} must be lower case letters, digits and "
            "_ (at most 40, starting with a letter): it names the [pipeline.steps.<name>] section"
        )
    base = DetectorSettings if isinstance(spec, DetectorSpec) else RewriterSettings
    if not (isinstance(spec.settings, type) and issubclass(spec.settings, base)):
        raise PluginError(
            f"register_filters: the settings of step {spec.name!r} must subclass "
            f"chatcore.pipeline.steps.{base.__name__}, not {spec.settings!r}"
        )
    if not callable(spec.factory):
        raise PluginError(f"register_filters: the factory of step {spec.name!r} is not callable")
    return spec.name, spec


def _command_entry(command: Any) -> tuple[str, Command]:
    if not isinstance(command, Command):
        raise PluginError(f"register_commands expects a chatcore.commands.Command, not {command!r}")
    return command.name, command


def _skill_entry(skill: Any) -> tuple[str, Skill]:
    if not isinstance(skill, Skill):
        raise PluginError(f"register_skills expects a chatcore.skills.Skill, not {skill!r}")
    return skill.name, skill


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
