"""Built-in plugin: what a user can see and set about themselves, ``/prefs`` to list, set and
unset their preferences (name, role, reply language, length, tone), which shape every prompt.

Registered through ``register_commands`` like any plugin's commands; it reaches the store only
through ``context.services``.
"""

from __future__ import annotations

from collections.abc import Callable

from chatcore import hookimpl
from chatcore.commands import Command, CommandContext
from chatcore.memory.base import UserKey
from chatcore.memory.learn import PREFERENCE_KEYS, PreferenceValueError, normalise_preference

USAGE = (
    "Usage: /prefs (list them), /prefs set KEY VALUE, /prefs unset KEY. "
    f"Keys: {', '.join(PREFERENCE_KEYS)}."
)


async def preferences(context: CommandContext) -> str:
    """``/prefs``, ``/prefs set KEY VALUE``, ``/prefs unset KEY``."""
    store = context.services.store
    user = UserKey.of(context.message.conversation)
    action, _, rest = context.args.partition(" ")
    key, _, value = rest.strip().partition(" ")
    key = key.lower()
    if action == "":
        stored = await store.get_preferences(user)
        if not stored:
            return f"No preferences yet. {USAGE}"
        lines = ["Your preferences (they shape every reply):"]
        for name in sorted(stored, key=lambda k: (k not in PREFERENCE_KEYS, k)):
            how = "you set it" if stored[name].source == "explicit" else "learned"
            lines.append(f"  {name} = {stored[name].value} ({how})")
        lines.append("Change one with /prefs set KEY VALUE, remove one with /prefs unset KEY.")
        return "\n".join(lines)
    if action == "set" and key:
        try:
            normalised = normalise_preference(key, value)
        except PreferenceValueError as error:
            return f"Not saved: {error}."
        await store.set_preference(user, key, normalised, "explicit")
        return f"Saved: {key} = {normalised}."
    if action == "unset" and key:
        if await store.delete_preference(user, key):
            return f"Removed your {key} preference."
        return f"You had no {key} preference."
    return USAGE


@hookimpl
def register_commands(register: Callable[[Command], None]) -> None:
    register(
        Command("prefs", "show or set your preferences: /prefs set language French", preferences)
    )
