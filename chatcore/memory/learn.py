"""Learning from what a user says: the preferences they set or undo ("call me Sam", "keep it
short") and the facts they state ("my dog is called Rex"); how both are announced and prompted.

Pure functions on text, no model: rules over folded text (``preference_rules``, ``persona_rules``,
``fact_rules``), measured on the labelled sets under ``tests/data``. See docs/learning.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from chatcore.memory.fact_rules import fact_in
from chatcore.memory.lexicon import LANGUAGES
from chatcore.memory.persona_rules import ROLE_RULES, TONE_RULES
from chatcore.memory.preference_rules import (
    LANGUAGE_RULES,
    LENGTH_RULES,
    NAME_RULES,
    Rule,
)
from chatcore.memory.utterance import Clause, clauses, fold

# The keys a preference may have, in the order they are prompted.
PREFERENCE_KEYS = ("name", "role", "language", "length", "tone")
LENGTHS = ("short", "detailed")
TONES = ("formal", "casual", "friendly", "playful", "direct")
MAX_EVIDENCE_CHARS = 200
_MAX_VALUE_CHARS = 40

_RULES: list[Rule] = [*NAME_RULES, *LANGUAGE_RULES, *LENGTH_RULES, *TONE_RULES, *ROLE_RULES]


@dataclass(frozen=True, slots=True)
class PreferenceChange:
    """A preference the user set (``value``) or undid (``value is None``) in what they said.

    ``was`` is, for an undo, the value the user named ("don't call me Sam" -> ``"Sam"``): store it
    only when the stored value is that one (or ``was`` is None: "don't call me that")."""

    key: str
    value: str | None
    evidence: str
    was: str | None = None


@dataclass(frozen=True, slots=True)
class Fact:
    """A statement worth remembering, in the third person ("The user's dog is called Rex.")."""

    text: str
    evidence: str = ""


@dataclass(frozen=True, slots=True)
class Learned:
    """What one message taught: at most one change per preference key (the last one said wins),
    and the facts, in the order said."""

    preferences: tuple[PreferenceChange, ...] = ()
    facts: tuple[Fact, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.preferences or self.facts)


def _evidence(clause: Clause) -> str:
    return clause.text.strip()[:MAX_EVIDENCE_CHARS]


def _preferences_in(clause: Clause) -> list[PreferenceChange]:
    found: dict[str, PreferenceChange] = {}
    for rule in _RULES:
        if rule.key in found:
            continue
        match = rule.pattern.match(clause.folded)
        value = None if match is None else rule.value(match, clause)
        if value is not None:
            found[rule.key] = PreferenceChange(rule.key, value[0], _evidence(clause), value[1])
    return list(found.values())


def learn(text: str) -> Learned:
    """The preferences and facts stated in one user message. Never raises; reads at most the
    first ``utterance.MAX_CHARS`` characters."""
    preferences: dict[str, PreferenceChange] = {}
    facts: dict[str, Fact] = {}
    for clause in clauses(text):
        changes = _preferences_in(clause)
        for change in changes:
            preferences.pop(change.key, None)  # the last one said wins, in its place
            preferences[change.key] = change
        if not changes:
            fact = fact_in(clause)
            if fact is not None and fact not in facts:
                facts[fact] = Fact(fact, _evidence(clause))
    return Learned(tuple(preferences.values()), tuple(facts.values()))


# -- explicit values (/prefs set) -----------------------------------------------------------


class PreferenceValueError(ValueError):
    """A value given for a preference that it cannot take; the message says what it can take."""


def _clean_value(value: str) -> str:
    value = re.sub(r"[^\w '+#.-]", "", " ".join(value.split()), flags=re.UNICODE)
    return value.strip()[:_MAX_VALUE_CHARS].strip()


def normalise_preference(key: str, value: str) -> str:
    """The stored form of a value given explicitly (``/prefs set language french`` -> "French").

    Raises PreferenceValueError with a message the user can act on."""
    cleaned = _clean_value(value)
    if key not in PREFERENCE_KEYS:
        raise PreferenceValueError(
            f"unknown preference {key!r}: choose one of {', '.join(PREFERENCE_KEYS)}"
        )
    if not cleaned:
        raise PreferenceValueError(f"give a value for {key}, e.g. /prefs set {key} ...")
    folded = fold(cleaned)
    if key == "language":
        if folded not in LANGUAGES:
            raise PreferenceValueError(
                f"unknown language {cleaned!r}: write its name, e.g. French, German, Spanish"
            )
        return LANGUAGES[folded]
    if key == "length":
        if folded in ("short", "brief", "concise"):
            return "short"
        if folded in ("detailed", "long", "thorough"):
            return "detailed"
        raise PreferenceValueError(f"length is one of {', '.join(LENGTHS)}, not {cleaned!r}")
    if key == "tone":
        if folded not in TONES:
            raise PreferenceValueError(f"tone is one of {', '.join(TONES)}, not {cleaned!r}")
        return folded
    return cleaned


# -- announcing and prompting ---------------------------------------------------------------


def _article(noun: str) -> str:
    return "an" if fold(noun[:1]) in "aeiou" else "a"


def describe(change: PreferenceChange) -> str:
    """The short note that announces a learned preference, with how to undo it."""
    key, value = change.key, change.value
    if value is None:
        undone = {
            "name": "I won't use that name any more",
            "language": "I'll answer in the language you write in",
            "length": "back to answers of normal length",
            "tone": "back to my usual tone",
            "role": "I'll stop assuming your occupation",
        }.get(key, f"{key} is unset")
        return f"noted: {undone}."
    if key == "name":
        return f"noted: I'll call you {value} — say \"don't call me {value}\" to undo."
    if key == "language":
        return f'noted: I\'ll answer in {value} — say "stop answering in {value}" to undo.'
    if key == "length" and value == "short":
        return 'noted: I\'ll keep answers short — say "you can be longer again" to undo.'
    if key == "length":
        return 'noted: I\'ll give detailed answers — say "normal length again" to undo.'
    if key == "tone":
        return f'noted: I\'ll use a {value} tone — say "go back to your normal tone" to undo.'
    if key == "role":
        role = f"{_article(value)} {value}"
        undo = f"I'm no longer {role}"
        return f"noted: you're {role}; I'll answer with that in mind — say \"{undo}\" to undo."
    return f"noted: {key} is {value}."


_LENGTH_LINES = {"short": "Keep answers short.", "detailed": "Give detailed, thorough answers."}
_TONE_LINES = {
    "formal": "Use a formal, professional tone.",
    "casual": "Use a casual, relaxed tone.",
    "friendly": "Be warm and friendly.",
    "playful": "Be playful; light humour is welcome.",
    "direct": "Be direct and to the point, without softening.",
}


def prompt_lines(preferences: Mapping[str, str]) -> list[str]:
    """The lines a user's preferences add to the system prompt, in a stable order (so the prompt's
    cached prefix holds). Unknown keys and values are left out; free text is cleaned and capped."""
    lines: list[str] = []
    for key in PREFERENCE_KEYS:
        raw = preferences.get(key)
        value = _clean_value(raw) if raw else ""
        if not value:
            continue
        if key == "name":
            lines.append(f"The user's name is {value}.")
        elif key == "role":
            lines.append(f"The user is {_article(value)} {value}.")
        elif key == "language" and fold(value) in LANGUAGES:
            lines.append(f"Answer in {LANGUAGES[fold(value)]}.")
        elif key == "length" and value in _LENGTH_LINES:
            lines.append(_LENGTH_LINES[value])
        elif key == "tone" and value in _TONE_LINES:
            lines.append(_TONE_LINES[value])
    return lines
