"""The rules that read a preference in one clause: name, reply language, answer length, tone and
role, set or undone, in English with the common French, German and Spanish wordings.

Each rule is a regular expression anchored at both ends of a clause (so "should I answer in
French" or "tell her to keep it short" never match) and a function that checks and normalises what
it captured. Precision first: what is not clearly a preference about the user is left alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from chatcore.memory.lexicon import (
    LANGUAGES,
    NATIONALITIES,
    NOT_NAMES,
)
from chatcore.memory.utterance import TAIL, Clause

# (key, value or None to unset, the value being undone when the user named it)
Change = tuple[str, str | None, str | None]
Value = tuple[str | None, str | None]

_LANG = "(?P<lang>" + "|".join(sorted(map(re.escape, LANGUAGES), key=len, reverse=True)) + r")\b"
_TAIL = f"(?P<tail>{TAIL})"
_COMMITMENT = re.compile(
    r"\b(?:from now on|always|only|with me|to me|instead|please|going forward|by default"
    r"|from here on|in the future|in future)\b"
)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: a key, a pattern over the folded clause, and what checks and normalises it."""

    key: str
    pattern: re.Pattern[str]
    value: Callable[[re.Match[str], Clause], Value | None]


def rule(key: str, pattern: str, value: Callable[[re.Match[str], Clause], Value | None]) -> Rule:
    return Rule(key, re.compile(pattern), value)


def const(value: str | None) -> Callable[[re.Match[str], Clause], Value | None]:
    return lambda match, clause: (value, None)


# -- names ----------------------------------------------------------------------------------

_NAME_TOKEN = re.compile(r"[^\W\d_](?:[^\W\d_]|['-](?=[^\W\d_]))*")
_NAME_FOLLOWERS = frozenset(
    [
        "and",
        "but",
        "btw",
        "here",
        "please",
        "from",
        "thanks",
        "though",
        "lol",
        "by",
        "not",
        "instead",
        "now",
        "again",
        "anymore",
        "bitte",
        "por",
        "s'il",
        "svp",
        "stp",
        "merci",
        "et",
        "und",
        "y",
    ]
)
TAIL_ONLY = re.compile(TAIL)


def _capitalise(word: str) -> str:
    if not word.islower():
        return word
    return "-".join(part[:1].upper() + part[1:] for part in word.split("-"))


def parse_name(clause: Clause, start: int, *, capital: bool) -> str | None:
    """The name written at ``start`` (one to three words), or None when what is there is not
    clearly a name: a common word, a nationality, a possessive, or followed by more words."""
    tokens: list[str] = []
    pos = end = start
    while len(tokens) < 3:
        match = _NAME_TOKEN.match(clause.text, pos)
        if not match:
            break
        word, low = match.group(), clause.folded[match.start() : match.end()]
        if low in NOT_NAMES or low in _NAME_FOLLOWERS:
            break
        if (capital or tokens) and not word[0].isupper():
            break
        if low.endswith("'s") or (not tokens and (low in LANGUAGES or low in NATIONALITIES)):
            return None
        tokens.append(word)
        end = match.end()
        if clause.text[end : end + 1] != " ":
            break
        pos = end + 1
    if not tokens or len(" ".join(tokens)) > 40:
        return None
    rest = clause.folded[end:]
    first = rest.split(maxsplit=1)[0] if rest.strip() else ""
    followed = not rest.strip() or rest.lstrip()[0] in ",.!;:)?" or first in _NAME_FOLLOWERS
    if not (followed or TAIL_ONLY.match(rest)):
        return None
    return " ".join(_capitalise(token) for token in tokens)


def _name(capital: bool) -> Callable[[re.Match[str], Clause], Value | None]:
    def value(match: re.Match[str], clause: Clause) -> Value | None:
        name = parse_name(clause, match.end(), capital=capital)
        return None if name is None else (name, None)

    return value


_UNNAMED = re.compile(r"(?:that|this|it|so|by that name|by my name|like that|by name)" + TAIL)


def _unname(capital: bool) -> Callable[[re.Match[str], Clause], Value | None]:
    def value(match: re.Match[str], clause: Clause) -> Value | None:
        if _UNNAMED.match(clause.folded, match.end()):
            return (None, None)
        name = parse_name(clause, match.end(), capital=capital)
        return None if name is None else (None, name)

    return value


def _when_requested(
    inner: Callable[[re.Match[str], Clause], Value | None],
) -> Callable[[re.Match[str], Clause], Value | None]:
    return lambda match, clause: inner(match, clause) if clause.requested else None


NAME_RULES: list[Rule] = [
    rule("name", r"^(?:you can |you may |you could )?(?:just |simply )?call me ", _name(False)),
    rule("name", r"^(?:my name(?:'s| is)|name's) ", _name(False)),
    rule("name", r"^(?:i'm|i am) ", _name(True)),
    rule("name", r"^je m'appelle ", _name(False)),
    rule("name", r"^(?:appelle|appelez)[- ]moi ", _name(False)),
    rule("name", r"^m'appeler ", _when_requested(_name(False))),
    rule("name", r"^mon (?:pre)?nom (?:est|c'est) ", _name(False)),
    rule("name", r"^je suis ", _name(True)),
    rule("name", r"^ich hei(?:ß|ss)e ", _name(False)),
    rule("name", r"^mein name ist ", _name(False)),
    rule("name", r"^nenn(?:e|t|en sie)? mich (?:bitte )?", _name(False)),
    rule("name", r"^me llamo ", _name(False)),
    rule("name", r"^mi nombre es ", _name(False)),
    rule("name", r"^llamame ", _name(False)),
    rule("name", r"^llamarme ", _when_requested(_name(False))),
    rule("name", r"^soy ", _name(True)),
    rule("name", r"^(?:don't|dont|do not|never|stop|quit) call(?:ing)? me ", _unname(False)),
    rule("name", r"^my name (?:is not|isn't|isnt|'s not) ", _unname(True)),
    rule("name", r"^ne m'appelle(?:z)? (?:plus|pas) ", _unname(False)),
    rule("name", r"^(?:forget|drop|delete) my name" + TAIL, const(None)),
]

# -- reply language -------------------------------------------------------------------------

_V_REPLY = (
    r"(?P<verb>answer|answering|answered|reply|replying|replied|respond|responding|responded"
    r"|write|writing|wrote|talk|talking|talked|speak|speaking|spoke|chat|chatting"
    r"|communicate|communicating)"
)
_V_ING = r"(?:answering|replying|responding|writing|talking|speaking|chatting)"
_OBJ = r"(?: to me| me| with me| back)?"
_ADV = r"(?: only| always| exclusively| just)?"


def _language(match: re.Match[str], clause: Clause) -> Value | None:
    verb = match.groupdict().get("verb") or ""
    tail = match.groupdict().get("tail") or ""
    spoken = verb.startswith(("speak", "talk", "chat", "spoke"))
    if clause.question and (not clause.requested or (spoken and not _COMMITMENT.search(tail))):
        return None  # "do you speak French?", "can you speak French?" ask; they do not set
    return (LANGUAGES[match["lang"]], None)


def _unlanguage(match: re.Match[str], clause: Clause) -> Value | None:
    return (None, LANGUAGES[match["lang"]])


LANGUAGE_RULES: list[Rule] = [
    rule(
        "language", rf"^(?:only |always |just )?{_V_REPLY}{_OBJ}{_ADV} in {_LANG}{_TAIL}", _language
    ),
    rule("language", rf"^(?P<verb>speak|talk)(?: to me| with me)? {_LANG}{_TAIL}", _language),
    rule(
        "language",
        rf"^(?:let's |lets |let us )?(?:switch|change|move|go)(?: back| over)?"
        rf"(?: the language)? to {_LANG}{_TAIL}",
        _language,
    ),
    rule(
        "language",
        rf"^(?:(?:let's|lets|let us) (?:speak|talk|chat|continue|write|converse)(?: in)?"
        rf"|continue in|carry on in) {_LANG}{_TAIL}",
        _language,
    ),
    rule("language", rf"^in {_LANG}(?:,? (?:please|from now on|only|thanks))+[\s.!]*$", _language),
    rule(
        "language",
        rf"^i(?:'d| would)? (?:prefer|like) (?:(?:your )?(?:answers|replies|responses|it) in"
        rf"|to be answered in) {_LANG}{_TAIL}",
        _language,
    ),
    rule("language", rf"^my preferred language is {_LANG}{_TAIL}", _language),
    # French
    rule(
        "language",
        r"^(?:reponds|repondez|repondre|parle|parlez|parler|ecris|ecrivez|ecrire)(?:[- ]moi)?"
        rf"(?: uniquement| seulement| toujours| plutot)? (?:en )?{_LANG}{_TAIL}",
        _language,
    ),
    rule(
        "language",
        rf"^en {_LANG},?(?: s'il te plait| s'il vous plait| svp| stp| merci| desormais)+[\s.!]*$",
        _language,
    ),
    rule("language", rf"^(?:passe|passons|passez) (?:a l'|au |en |a )?{_LANG}{_TAIL}", _language),
    # German
    rule(
        "language",
        r"^(?:antworte|antworten sie|antwortet|sprich|sprechen sie|schreib|schreibe"
        r"|schreiben sie|rede|reden sie)(?: bitte)?(?: nur| immer)?(?: bitte)?"
        rf" (?:auf |in )?{_LANG}(?: mit mir| bitte)*{_TAIL}",
        _language,
    ),
    rule(
        "language",
        rf"^(?:nur |immer )?(?:auf |in )?{_LANG} (?:antworten|sprechen|schreiben|reden){_TAIL}",
        _when_requested(_language),
    ),
    rule("language", rf"^auf {_LANG},? bitte{_TAIL}", _language),
    # Spanish
    rule(
        "language",
        r"^(?:responde|respondeme|contesta|contestame|habla|hablame|escribe|escribeme|responda"
        r"|conteste|hable|hableme|escriba|responder|contestar|hablar|hablarme|escribir"
        rf"|escribirme)(?: solo| solamente| siempre| unicamente)? en {_LANG}{_TAIL}",
        _language,
    ),
    rule("language", rf"^en {_LANG},?(?: por favor)+[\s.!]*$", _language),
    rule("language", rf"^(?:cambia|cambiemos|pasa|pasemos) al? {_LANG}{_TAIL}", _language),
    # undoing
    rule("language", rf"^(?:stop|quit) {_V_ING}(?: to me)? in {_LANG}{_TAIL}", _unlanguage),
    rule("language", rf"^(?:stop|quit) (?:speaking|talking) {_LANG}{_TAIL}", _unlanguage),
    rule(
        "language",
        rf"^(?:don't|dont|do not|never) {_V_REPLY}{_OBJ} in {_LANG}{_TAIL}",
        _unlanguage,
    ),
    rule("language", rf"^no more {_LANG}{_TAIL}", _unlanguage),
    rule(
        "language",
        r"^(?:arrete|arretez|cesse|cessez) de (?:me )?(?:repondre|parler|ecrire)"
        rf"(?: en)? {_LANG}{_TAIL}",
        _unlanguage,
    ),
    rule(
        "language",
        r"^ne (?:me )?(?:reponds|parle|ecris|repondez|parlez|ecrivez) plus"
        rf" (?:en )?{_LANG}{_TAIL}",
        _unlanguage,
    ),
    rule(
        "language",
        rf"^deja de (?:hablar|responder|contestar|escribir)(?:me)?(?: en)? {_LANG}{_TAIL}",
        _unlanguage,
    ),
    rule(
        "language",
        rf"^hor auf,? (?:auf |in )?{_LANG} zu (?:antworten|sprechen|schreiben){_TAIL}",
        _unlanguage,
    ),
    rule(
        "language",
        r"^(?:go back to|use|switch back to) (?:your |the )?(?:default|normal|usual) language"
        + TAIL,
        const(None),
    ),
]

# -- answer length --------------------------------------------------------------------------

_SHORT = r"(?:short|shorter|brief|briefer|concise|terse|succinct|snappy|compact)"
_LONG = r"(?:detailed|longer|long|thorough|in-depth|in depth|comprehensive|elaborate|extensive)"
_ANSWERS = r"(?:answers|replies|responses|explanations|messages|answer|reply|response)"
_SIZED = rf"(?:more )?(?P<size>{_SHORT}|{_LONG})(?:,? (?:and |more )?(?:{_SHORT}|{_LONG}))?"


def _size(match: re.Match[str], clause: Clause) -> Value | None:
    return ("short" if re.fullmatch(_SHORT, match["size"]) else "detailed", None)


LENGTH_RULES: list[Rule] = [
    rule(
        "length",
        r"^keep (?:it|things|them|(?:your |the |all )?" + _ANSWERS + r")"
        r"(?: very| really| nice and| fairly| pretty)? (?:short|brief|concise|simple|succinct"
        r"|to the point)(?: and (?:sweet|to the point|simple|clear|concise))?" + TAIL,
        const("short"),
    ),
    rule(
        "length",
        r"^be (?:more |very |really |a bit more )?(?:brief|concise|terse|succinct|short)" + TAIL,
        const("short"),
    ),
    rule(
        "length",
        r"^(?:give me |give |i want |i'd like |i would like |i prefer |i'd prefer |i like"
        r" |i need )?"
        rf"{_SIZED} {_ANSWERS}{TAIL}",
        _size,
    ),
    rule(
        "length",
        r"^(?:answer|reply|respond)(?: me)? (?:briefly|concisely|shortly|in short|in brief)" + TAIL,
        const("short"),
    ),
    rule(
        "length",
        r"^(?:answer|reply|respond|explain(?: things)?) (?:in (?:more |full |great )?detail"
        r"|thoroughly|at length)" + TAIL,
        const("detailed"),
    ),
    rule("length", r"^(?:less|fewer) (?:verbose|words|wordy|rambling|text)" + TAIL, const("short")),
    rule(
        "length",
        r"^(?:(?:don't|dont|do not) be|stop being) (?:so |too |that )?(?:verbose|wordy"
        r"|long-winded)" + TAIL,
        const("short"),
    ),
    rule("length", r"^stop rambling" + TAIL, const("short")),
    rule(
        "length",
        rf"^your {_ANSWERS} (?:are|were) (?:too|way too|much too|a bit too|far too)"
        r" (?:long|verbose|wordy)" + TAIL,
        const("short"),
    ),
    rule(
        "length",
        rf"^your {_ANSWERS} (?:are|were) (?:too|way too|much too|a bit too|far too)"
        r" (?:short|brief)" + TAIL,
        const("detailed"),
    ),
    rule(
        "length", r"^(?:be|go) (?:more )?(?:detailed|thorough|in depth)" + TAIL, const("detailed")
    ),
    rule(
        "length",
        r"^you can be (?:longer|more detailed|more verbose|wordier|more thorough) again" + TAIL,
        const(None),
    ),
    rule(
        "length",
        r"^you can be (?:longer|more detailed|more thorough|more verbose)" + TAIL,
        const("detailed"),
    ),
    rule(
        "length",
        r"^(?:there's |there is )?no need to (?:be (?:so |that )?(?:brief|short|concise)"
        r"|keep (?:it|them|your answers) (?:short|brief))" + TAIL,
        const(None),
    ),
    rule(
        "length",
        r"^you (?:don't|dont|do not) (?:have|need) to (?:be (?:so |that )?(?:brief|short|concise)"
        r"|keep (?:it|them|your answers) (?:so )?(?:short|brief))" + TAIL,
        const(None),
    ),
    rule(
        "length",
        r"^(?:(?:answer|reply) (?:at )?)?normal length(?: is fine)?" + TAIL,
        const(None),
    ),
    # French, German, Spanish
    rule(
        "length",
        r"^(?:sois|soyez) (?:plus )?(?:bref|breve|brefs|concis|concise)" + TAIL,
        const("short"),
    ),
    rule("length", r"^(?:fais|faites) court" + TAIL, const("short")),
    rule("length", r"^(?:reponds|repondez) (?:brievement|court)" + TAIL, const("short")),
    rule("length", r"^(?:des )?reponses (?:courtes|breves|concises)" + TAIL, const("short")),
    rule(
        "length", r"^(?:des )?reponses (?:detaillees|longues|completes)" + TAIL, const("detailed")
    ),
    rule(
        "length",
        r"^(?:fass(?:e)? dich|fassen sie sich|halte? dich|antworte(?:n sie)?) (?:bitte )?kurz"
        + TAIL,
        const("short"),
    ),
    rule("length", r"^(?:kurze|knappe) antworten" + TAIL, const("short")),
    rule("length", r"^(?:ausfuhrliche|detaillierte|lange) antworten" + TAIL, const("detailed")),
    rule("length", r"^(?:se|sea) (?:breve|conciso|concisa)" + TAIL, const("short")),
    rule("length", r"^(?:responde|contesta) (?:brevemente|corto)" + TAIL, const("short")),
    rule("length", r"^respuestas (?:cortas|breves)" + TAIL, const("short")),
    rule("length", r"^respuestas (?:detalladas|largas)" + TAIL, const("detailed")),
]
