"""Built-in plugin: what chatcore knows about a user, and how they see, change and erase it.
After each reply it learns preferences and facts from what the user said and tells them
("noted: ..."); ``/prefs`` lists, sets and unsets preferences; ``/remember``, ``/memories`` and
``/forget`` keep long-term memories; ``/forget-me`` erases everything stored about the user,
after a confirmation.

Registered through ``register_commands`` and ``reply_finished`` like any plugin; it reaches the
store and the memories only through ``services``. See docs/memory.md.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence

from chatcore import hookimpl
from chatcore.commands import Command, CommandContext
from chatcore.events import Message
from chatcore.memory.barrier import UserErasedError
from chatcore.memory.base import Memory, UserKey, counts_of
from chatcore.memory.learn import (
    PREFERENCE_KEYS,
    Fact,
    PreferenceChange,
    PreferenceValueError,
    describe,
    learn,
    normalise_preference,
)
from chatcore.memory.service import MAX_MEMORY_CHARS, Memories, MemoryTextError
from chatcore.memory.utterance import fold
from chatcore.privacy import Erased
from chatcore.services import Services

log = logging.getLogger(__name__)

USAGE = (
    "Usage: /prefs (list them), /prefs set KEY VALUE, /prefs unset KEY. "
    f"Keys: {', '.join(PREFERENCE_KEYS)}."
)
REMEMBER_USAGE = "Usage: /remember TEXT, e.g. /remember my sister is called Ana."
FORGET_USAGE = "Usage: /forget ID, with the number /memories shows, e.g. /forget 12."
MEMORIES_SHOWN = 30
"""``/memories`` shows at most this many, the newest; it says how many older ones it left out."""
SHOWN_CHARS = 200
"""A memory longer than this is cut in the ``/memories`` list (the whole text stays stored)."""
DUPLICATE_CANDIDATES = 5
"""How many of the closest memories are compared with a new one to find it already stored."""
_MAX_ID = 2**63 - 1


# -- learning after each reply ----------------------------------------------------------------


@hookimpl
async def reply_finished(message: Message, services: Services) -> str | None:
    """Learn preferences and facts from the user's message (``memory.learn``), store them and
    return one notice saying what was noted and how to undo it; None when nothing was."""
    if not services.settings.memory.learn:
        return None
    try:
        # Pure rules, but up to ~5 ms on a long message: off the event loop.
        learned = await asyncio.to_thread(learn, message.text)
    except Exception:
        log.exception("memory: learning from message %s failed; nothing stored", message.id)
        return None
    if not learned:
        return None
    user = UserKey.of(message.conversation)
    notes: list[str] = []
    for change in learned.preferences:
        try:
            note = await _apply_preference(services, user, change)
        except Exception:  # the others may still work; the reply is out already
            log.exception("memory: storing the %s preference of %s failed", change.key, user)
            continue
        if note:
            notes.append(note)
    if learned.facts:
        notes += await _store_facts_within(services, user, learned.facts, message.id)
    return "\n".join(notes) or None


async def _store_facts_within(
    services: Services, user: UserKey, facts: Sequence[Fact], message_id: str
) -> list[str]:
    """Store the new ones of ``facts``; their notices. Waits at most half the hook's time
    limit: past it (the embedder's first load, on a slow machine) the facts are stored in the
    background and announced without their ids, rather than the hook being cut off."""
    work = asyncio.ensure_future(_store_facts(services.memories, user, facts, message_id))
    # Kept (and ended at close, or when the user is erased) whatever happens to this hook.
    services.memories.track(work, user)
    done, _ = await asyncio.wait([work], timeout=services.settings.plugins.hook_timeout / 2)
    if work.cancelled():
        return []  # the user erased their data meanwhile (``Memories.stop_tracked``)
    if work in done:
        return work.result()
    log.info("memory: storing facts from message %s goes on in the background", message_id)
    return [f"noted: {fact.text} — being stored; /memories will list it." for fact in facts]


async def _store_facts(
    memories: Memories, user: UserKey, facts: Sequence[Fact], message_id: str
) -> list[str]:
    notes = []
    for fact in facts:
        try:
            stored = await _remember_new(memories, user, fact.text)
        except MemoryTextError as error:
            log.info("memory: a fact from message %s not stored: %s", message_id, error)
            continue
        except UserErasedError:
            return []  # the user erased their data meanwhile: nothing is stored, nothing told
        except Exception:  # the others may still work; the reply is out already
            log.exception("memory: storing a fact of %s from message %s failed", user, message_id)
            continue
        if stored is not None:
            notes.append(fact_note(stored))
    return notes


def fact_note(memory: Memory) -> str:
    """The line that announces a learned fact, with its id and how to undo it."""
    return f"noted: {memory.text} — memory {memory.id}; /forget {memory.id} undoes it."


async def _apply_preference(services: Services, user: UserKey, change: PreferenceChange) -> str:
    """Store or undo one learned preference; its announcement, or "" when nothing changed."""
    store = services.store
    current = (await store.get_preferences(user)).get(change.key)
    if change.value is None:
        if current is None:
            return ""
        if change.was is not None and fold(change.was.strip()) != fold(current.value.strip()):
            return ""  # "don't call me Sam" while the stored name is not Sam
        await store.delete_preference(user, change.key)
        return describe(change)
    try:
        value = normalise_preference(change.key, change.value)
    except PreferenceValueError as error:
        log.warning("memory: learned %s preference left out: %s", change.key, error)
        return ""
    if current is not None and current.value == value:
        return ""  # said again: nothing new to announce
    await store.set_preference(user, change.key, value, "learned")
    return describe(PreferenceChange(change.key, value, change.evidence, change.was))


def _same_text(text: str) -> str:
    """``text`` as compared for duplicates: case, punctuation and spacing left out."""
    return " ".join(re.sub(r"[^\w\s]", "", text.casefold()).split())


async def _stored_copy(memories: Memories, user: UserKey, text: str) -> Memory | None:
    """The memory of ``user`` that already says ``text`` (same words, see ``_same_text``);
    None for a text too long to be a memory (``remember`` refuses it, saying why).

    Text, not score, decides: with all-MiniLM-L6-v2 two different facts score up to 0.96
    ("is 34 years old" / "is 35 years old") and a restatement as low as 0.955, so no score
    threshold tells a repeat from an update. An exact repeat scores near 1, so it is always
    among the few closest: those are compared, never the whole list."""
    if len(" ".join(text.split())) > MAX_MEMORY_CHARS:
        return None
    wanted = _same_text(text)
    for memory in await memories.recall(user, text, k=DUPLICATE_CANDIDATES):
        if _same_text(memory.text) == wanted:
            return memory
    return None


async def _remember_new(memories: Memories, user: UserKey, text: str) -> Memory | None:
    """Store ``text`` as a memory of ``user`` unless it is already stored (then None)."""
    if await _stored_copy(memories, user, text) is not None:
        return None
    return await memories.remember(user, text)


# -- /prefs -------------------------------------------------------------------------------------


async def preferences(context: CommandContext) -> str:
    """``/prefs``, ``/prefs set KEY VALUE``, ``/prefs unset KEY``."""
    store = context.services.store
    user = UserKey.of(context.message.conversation)
    action, _, rest = context.args.strip().partition(" ")
    action = action.lower()
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
            reason = str(error)
            return f"Not saved: {reason}" + ("" if reason.endswith((".", "!", "?")) else ".")
        await store.set_preference(user, key, normalised, "explicit")
        return f"Saved: {key} = {normalised}."
    if action == "unset" and key:
        if await store.delete_preference(user, key):
            return f"Removed your {key} preference."
        return f"You had no {key} preference."
    return USAGE


# -- /remember, /memories, /forget -----------------------------------------------------------


async def remember(context: CommandContext) -> str:
    """``/remember TEXT``: store a memory as the user wrote it."""
    if not context.args.strip():
        return REMEMBER_USAGE
    memories = context.services.memories
    user = UserKey.of(context.message.conversation)
    try:
        copy = await _stored_copy(memories, user, context.args)
        if copy is not None:
            return f"I already remember that (memory {copy.id})."
        memory = await memories.remember(user, context.args)
    except MemoryTextError as error:
        return f"Not remembered: {error}. {REMEMBER_USAGE}"
    except UserErasedError:
        return "Not remembered: your data was erased meanwhile. Send it again to keep it."
    return f"Remembered as memory {memory.id}; /forget {memory.id} removes it."


def _shown(memory: Memory) -> str:
    text = memory.text
    if len(text) > SHOWN_CHARS:
        text = text[: SHOWN_CHARS - 1].rstrip() + "…"
    return f"  {memory.id}  {memory.created:%Y-%m-%d}  {text}"


async def list_memories(context: CommandContext) -> str:
    """``/memories``: the user's memories with their ids and dates, newest last."""
    stored = await context.services.memories.list(UserKey.of(context.message.conversation))
    if not stored:
        return "No memories yet. Tell me things about you, or use /remember TEXT."
    lines = [f"What I remember about you ({len(stored)}; id, date, text):"]
    hidden = len(stored) - MEMORIES_SHOWN
    if hidden > 0:
        lines.append(f"  … {hidden} older not shown")
    lines += [_shown(memory) for memory in stored[-MEMORIES_SHOWN:]]
    lines.append("Remove one with /forget ID.")
    return "\n".join(lines)


async def forget(context: CommandContext) -> str:
    """``/forget ID``: remove one of the user's memories."""
    given = context.args.strip().removeprefix("#")
    if not given:
        return FORGET_USAGE
    if not given.isascii() or not given.isdigit():
        return f"{given[:40]!r} is not a memory id. {FORGET_USAGE}"
    memory_id = int(given)
    user = UserKey.of(context.message.conversation)
    if 0 < memory_id <= _MAX_ID and await context.services.memories.forget(user, memory_id):
        return f"Forgot memory {memory_id}."
    return f"You have no memory {memory_id}; /memories lists yours."


@hookimpl
def register_commands(register: Callable[[Command], None]) -> None:
    register(
        Command("prefs", "show or set your preferences: /prefs set language French", preferences)
    )
    register(Command("remember", "keep a memory: /remember my sister is called Ana", remember))
    register(Command("memories", "list what I remember about you, with ids", list_memories))
    register(Command("forget", "remove one memory: /forget 12 (ids from /memories)", forget))
    register(forget_me_command())


# /forget-me: erase everything about the user, after a confirmation code.

CODE_TTL = 300.0
"""Seconds a ``/forget-me`` confirmation code stays valid."""
MAX_PENDING = 10_000
"""Codes kept waiting at most (the oldest are dropped first)."""


ERASING_ON = (
    "Erasing everything stored about you is taking a while; it goes on, and nothing you send "
    "from now on is mixed with the old data. Send /forget-me in a few minutes to check that "
    "nothing is left."
)


class ForgetMe:
    """``/forget-me`` says what would be erased and gives a short code, valid ``ttl`` seconds
    for that user only; ``/forget-me CODE`` then erases it all (``services.privacy``), also
    when the store knows nothing about them (plugins may keep something). A wrong code erases
    nothing and voids the code, so codes cannot be guessed in turns. Codes live in this
    process's memory (docs/memory.md)."""

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
        # The erase is a task of its own that goes on if this command is cut off; it is waited
        # for at most half the command's time limit, so the answer is never a timeout error.
        erase = context.services.privacy.start_erase(user)
        waited = context.services.settings.plugins.command_timeout / 2
        done, _ = await asyncio.wait([erase], timeout=waited)
        return erased_reply(erase.result()) if done else ERASING_ON

    async def _ask(self, context: CommandContext, user: UserKey, now: float) -> str:
        data = await context.services.privacy.export(user)
        code = secrets.token_hex(3).upper()
        self._pending.pop(user, None)
        while len(self._pending) >= MAX_PENDING:
            del self._pending[next(iter(self._pending))]
        self._pending[user] = (code, now + self.ttl)
        minutes = max(1, round(self.ttl / 60))
        confirm = f"To confirm, send /forget-me {code} within {minutes} minutes."
        if data is None:
            return (
                "Nothing is stored about you, apart from what plugins may keep. This erases "
                f"that. {confirm}"
            )
        return (
            f"This erases everything stored about you: {counts_of(data).describe()}, your "
            f"record, and what plugins keep about you. It cannot be undone. {confirm}"
        )


def erased_reply(erased: Erased) -> str:
    """What ``/forget-me CODE`` answers once the erase is done: what went, and which plugins
    could not erase their data (the user can then ask the operator)."""
    gone = erased.counts.describe()
    failed = erased.failed_plugins
    if not failed:
        return (
            f"Erased everything stored about you: {gone}, and what plugins kept. If you write "
            "again, that starts afresh."
        )
    names = ", ".join(repr(name) for name in failed)
    which = (
        f"plugin {names} could not erase its"
        if len(failed) == 1
        else (f"plugins {names} could not erase their")
    )
    return (
        f"Erased what chatcore stored about you: {gone}. But {which} data; it was logged, tell "
        "the operator. If you write again, that starts afresh."
    )


def forget_me_command() -> Command:
    """``/forget-me``, with its own pending codes (one per app)."""
    return Command("forget-me", "erase everything stored about you (asks to confirm)", ForgetMe())
