"""Decides what answers a message, and runs slash commands: usable without the engine.

A message is a ``/command``, a ``/skill`` or a chat for the model. Commands and skills share
one namespace of names (``PluginHost`` refuses a second claim on a name).
"""

from __future__ import annotations

from dataclasses import dataclass

from chatcore.commands import CommandContext, parse_command
from chatcore.events import Message, Reply, ReplyError
from chatcore.failures import logged_failure
from chatcore.plugins import PluginFault, PluginHost
from chatcore.services import Services


@dataclass(frozen=True, slots=True)
class CommandRoute:
    """``/name args``: a registered command answers (or the user hears it is unknown)."""

    name: str
    args: str


@dataclass(frozen=True, slots=True)
class SkillRoute:
    """``/name args`` where a registered skill is ``name``: the skill pipeline answers."""

    name: str
    args: str


@dataclass(frozen=True, slots=True)
class ChatRoute:
    """The model answers, through the reply pipeline."""


Route = CommandRoute | SkillRoute | ChatRoute


class Router:
    """Routes messages and runs commands with the plugins' command registry."""

    def __init__(self, plugins: PluginHost, services: Services) -> None:
        self.plugins = plugins
        self.services = services

    def route(self, message: Message) -> Route:
        """What answers ``message``."""
        command = parse_command(message.text)
        if command is not None:
            if command[0] in self.plugins.skills:
                return SkillRoute(*command)
            return CommandRoute(*command)
        # Natural-language routing to skills (by their examples) will choose here.
        return ChatRoute()

    async def run_command(self, message: Message, route: CommandRoute) -> Reply | ReplyError:
        """Run the command, bounded by ``plugins.command_timeout``; a command that fails, runs
        out of time or returns anything but text answers with an error and a log reference."""
        name, registry = route.name, self.plugins.commands
        if name not in registry:
            return ReplyError(
                message.id, "unknown_command", f"Unknown command /{name}. Type /help for the list."
            )
        commands = dict(registry.items())
        skills = dict(self.plugins.skills.items())
        context = CommandContext(message, route.args, self.services, commands, skills)
        owner = registry.owner(name)
        try:
            text = await self.plugins.invoke(
                owner,
                f"command /{name}",
                commands[name].handler,
                {"context": context},
                limit="command_timeout",
            )
        except PluginFault as fault:
            what = "took too long" if fault.timed_out else "failed"
            return logged_failure(message, "command_failed", f"/{name} {what}", fault)
        if not isinstance(text, str):
            problem = f"plugin {owner!r} returned {type(text).__name__}, not text"
            return logged_failure(message, "command_failed", f"/{name} failed", problem)
        return Reply(message.id, text)
