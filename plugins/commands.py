"""Built-in plugin: the commands every channel has, ``/help`` (commands and skills) and
``/reset``.

Registered through ``register_commands`` exactly like a third-party plugin's commands.
"""

from __future__ import annotations

from collections.abc import Callable

from chatcore import hookimpl
from chatcore.commands import Command, CommandContext


def show_help(context: CommandContext) -> str:
    lines = ["Commands:"]
    lines += [f"  /{name} - {cmd.help}" for name, cmd in sorted(context.commands.items())]
    if context.skills:
        lines.append("Skills (/NAME --help shows a skill's options and examples):")
        lines += [f"  /{name} - {s.description}" for name, s in sorted(context.skills.items())]
    lines.append("Anything else is sent to the model.")
    return "\n".join(lines)


async def reset_conversation(context: CommandContext) -> str:
    closed = await context.store.reset(context.message.conversation)
    if not closed:
        return "Nothing to reset: this conversation is already new."
    return (
        f"New conversation started; the previous one ({closed} messages) no longer shapes replies."
    )


@hookimpl
def register_commands(register: Callable[[Command], None]) -> None:
    register(Command("help", "list the commands", show_help))
    register(Command("reset", "start a new conversation", reset_conversation))
