"""Built-in plugin: what a user can see and set about themselves, ``/prefs`` to list, set and
unset their preferences (name, role, reply language, length, tone), which shape every prompt;
``/forget-me`` to erase everything stored about them, after a confirmation.

Registered through ``register_commands`` like any plugin's commands; it reaches the store only
through ``context.services``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from chatcore import hookimpl
from chatcore.commands import Command, CommandContext
from chatcore.memory.base import UserKey, counts_of
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
    register(forget_me_command())


# /forget-me: erase everything about the user, after a confirmation code.

CODE_TTL = 300.0
"""Seconds a ``/forget-me`` confirmation code stays valid."""
MAX_PENDING = 10_000
"""Codes kept waiting at most (the oldest are dropped first)."""


class ForgetMe:
    """``/forget-me`` says what would be erased and gives a short code, valid ``ttl`` seconds
    for that user only; ``/forget-me CODE`` then erases it all (``services.privacy.erase``).
    A wrong code erases nothing and voids the code, so codes cannot be guessed in turns."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, ttl: float = CODE_TTL) -> None:
        self.clock = clock
        self.ttl = ttl
        self._pending: dict[UserKey, tuple[str, float]] = {}

    async def __call__(self, context: CommandContext) -> str:
        user = UserKey.of(context.message.conversation)
        now = self.clock()
        for stale in [u for u, (_, until) in self._pending.items() if until <= now]:
            del self._pending[stale]
        given = context.args.strip().upper()
        if not given:
            return await self._ask(context, user, now)
        pending = self._pending.pop(user, None)
        if pending is None:
            return (
                "Nothing was erased: that code has expired or was never given. "
                "Send /forget-me for a new one."
            )
        if not secrets.compare_digest(given, pending[0]):
            return "Nothing was erased: that code is wrong. Send /forget-me for a new one."
        counts = await context.services.privacy.erase(user)
        return (
            f"Erased everything stored about you: {counts.describe()}, and what plugins "
            "kept. If you write again, that starts afresh."
        )

    async def _ask(self, context: CommandContext, user: UserKey, now: float) -> str:
        data = await context.services.privacy.export(user)
        if data is None:
            return "Nothing is stored about you."
        code = secrets.token_hex(3).upper()
        self._pending.pop(user, None)
        while len(self._pending) >= MAX_PENDING:
            del self._pending[next(iter(self._pending))]
        self._pending[user] = (code, now + self.ttl)
        minutes = max(1, round(self.ttl / 60))
        return (
            f"This erases everything stored about you: {counts_of(data).describe()}, your "
            "record, and what plugins keep about you. It cannot be undone. To confirm, send "
            f"/forget-me {code} within {minutes} minutes."
        )


def forget_me_command() -> Command:
    """``/forget-me``, with its own pending codes (one per app)."""
    return Command("forget-me", "erase everything stored about you (asks to confirm)", ForgetMe())
