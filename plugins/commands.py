"""Built-in plugin: the commands every channel has, ``/help`` and ``/reset``.

Registered through ``register_commands`` exactly like a third-party plugin's commands.
"""

from __future__ import annotations

from collections.abc import Callable

from chatcore import hookimpl
from chatcore.commands import Command, CommandContext


def show_help(context: CommandContext) -> str:
    lines = ["Commands:"]
    lines += [f"  /{name} - {cmd.help}" for name, cmd in sorted(context.commands.items())]
    lines.append("Anything else is sent to the model.")
    return "\n".join(lines)


async def reset_conversation(context: CommandContext) -> str:
    dropped = await context.store.reset(context.message.conversation)
    if not dropped:
        return "Nothing to forget: this conversation was already empty."
    return f"Conversation reset: {dropped} messages forgotten."


@hookimpl
def register_commands(register: Callable[[Command], None]) -> None:
    register(Command("help", "list the commands", show_help))
    register(Command("reset", "forget this conversation and start over", reset_conversation))
