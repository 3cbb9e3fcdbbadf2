"""The rules that find a lasting fact the user states about themselves in one clause ("my dog is
called Rex", "I live in Lyon") and restate it in the third person ("The user's dog is called Rex.").

Only first-person statements of lasting things: not questions, opinions about the world, passing
remarks ("my code is broken", "I'm tired") or anything said about today. English, with a few
common French, German and Spanish forms.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from chatcore.memory.lexicon import (
    FACT_NOUNS,
    HAVE_CONDITIONS,
    HAVE_NOUNS,
    LANGUAGES,
    MY_TRANSIENT,
    RELATIVES,
    STATES,
)
from chatcore.memory.utterance import Clause

MAX_FACT_CHARS = 200

_TRANSIENT = re.compile(
    r"\b(?:today|tonight|tomorrow|yesterday|right now|now|at the moment|this (?:morning"
    r"|afternoon|evening|week|weekend)|for (?:lunch|dinner|breakfast)|later|just|currently"
    r"|again)\b"
)
# An object that points at the conversation, not at the world ("I like your answer").
_POINTING = re.compile(
    r"(?:it|this|that|these|those|you|your|yours|him|her|them|when|how|what|the way|the idea"
    r"|the answer|the question|being|to go|so|very|too|a lot)\b"
)
_FIRST_PERSON = re.compile(r"\b(?:i|i'm|im|i've|i'd|i'll)\b")
_PRONOUNS = {"my": "their", "me": "them", "mine": "theirs", "myself": "themselves"}
_PRONOUN = re.compile(r"\b(?:my|me|mine|myself)\b", re.IGNORECASE)
_COUNT = r"(?:a|an|one|two|three|four|five|six|seven|eight|nine|ten|\d{1,2}|some|several)"

_THIRD_PERSON = {
    "have": "has",
    "'ve got": "has",
    "have got": "has",
    "got": "has",
    "do": "does",
    "go": "goes",
    "am": "is",
    "'m": "is",
    "was": "was",
    "grew up": "grew up",
    "was born": "was born",
}


def third_person(verb: str) -> str:
    """The verb for "the user": "live" -> "lives", "study" -> "studies", "teach" -> "teaches"."""
    if verb in _THIRD_PERSON:
        return _THIRD_PERSON[verb]
    if re.search(r"[^aeiou]y$", verb):
        return verb[:-1] + "ies"
    if re.search(r"(?:s|sh|ch|x|z|o)$", verb):
        return verb + "es"
    return verb + "s"


def _restate(text: str) -> str | None:
    """The rest of a statement with "my"/"me" made third person; None when it still speaks in the
    first person (a clause inside that this rule cannot restate) or is too long."""
    if _FIRST_PERSON.search(text.lower()):
        return None
    text = _PRONOUN.sub(lambda m: _PRONOUNS[m.group().lower()], text).strip()
    text = re.sub(r"[\s.!?,;:]+$", "", text)
    return text or None


def _sentence(text: str) -> str | None:
    text = text.strip()
    if not text or len(text) > MAX_FACT_CHARS:
        return None
    return text[0].upper() + text[1:] + "."


_Handler = Callable[[re.Match[str], Clause], str | None]


def _rest(match: re.Match[str], clause: Clause, group: str = "rest") -> str | None:
    return _restate(clause.text[match.start(group) : match.end(group)])


def _my_is(match: re.Match[str], clause: Clause) -> str | None:
    subject = match["subject"]
    head = subject.split()[-1].removesuffix("'s")
    if head in MY_TRANSIENT or subject in ("name", "names") or len(subject.split()) > 4:
        return None
    rest = _rest(match, clause)
    verb = "is" if match["verb"] == "'s" else match["verb"]
    original = clause.text[match.start("subject") : match.end("subject")]
    return None if rest is None else f"The user's {original} {verb} {rest}"


def _my_relative(match: re.Match[str], clause: Clause) -> str | None:
    if match["who"] not in RELATIVES:
        return None
    rest = _rest(match, clause)
    subject = clause.text[match.start("subject") : match.end("subject")]
    return None if rest is None else f"The user's {subject} {match['verb']} {rest}"


_VERB_OBJECT = {
    "live": r"(?:in|on|with|near|at|abroad|outside|alone|by)\b",
    "grew up": r"(?:in|on|near|by)\b",
    "was born": r"(?:in|on)\b",
    "work": r"(?:at|for|in|from home|remotely|with)\b",
    "have": rf"(?:{_COUNT} (?:[a-z-]+ ){{0,2}}?(?:{'|'.join(sorted(HAVE_NOUNS))})"
    rf"|(?:{'|'.join(sorted(HAVE_CONDITIONS))}))\b",
    "own": rf"{_COUNT} ",
    "drive": rf"{_COUNT} ",
    "speak": r"(?P<language>[a-z]+)\b",
}


def _i_verb(match: re.Match[str], clause: Clause) -> str | None:
    verb = match["verb"]
    canonical = {"'ve got": "have", "have got": "have", "got": "have"}.get(verb, verb)
    rest_folded = clause.folded[match.start("rest") :]
    if canonical in _VERB_OBJECT:
        check = re.match(_VERB_OBJECT[canonical], rest_folded)
        if check is None:
            return None
        if canonical == "speak" and check["language"] not in LANGUAGES:
            return None
    elif _POINTING.match(rest_folded):
        return None
    rest = _rest(match, clause)
    return None if rest is None else f"The user {third_person(verb)} {rest}"


def _i_am(match: re.Match[str], clause: Clause) -> str | None:
    rest_folded = clause.folded[match.start("rest") :].rstrip(" .!?")
    rest = _rest(match, clause)
    if rest is None:
        return None
    state = re.match(r"(?:a |an )?([a-z-]+)(?: (?:to|with) .+)?$", rest_folded)
    accepted = (
        (state is not None and state.group(1) in STATES)
        or re.match(r"allergic to \w", rest_folded)
        or re.match(r"\d{1,3}(?: years old| yo| y/o)?$", rest_folded)
        or re.match(r"(?:learning|studying) \w", rest_folded)
        or (
            re.match(r"an? (?:big |huge )?fan of ", rest_folded)
            and not _POINTING.match(rest_folded.split(" of ", 1)[1])
        )
        or (rest_folded.startswith("from ") and rest[5:6].isupper())
    )
    if not accepted:
        return None
    if re.fullmatch(r"\d{1,3}", rest_folded):
        rest += " years old"
    return f"The user is {rest}"


def _i_have_been(match: re.Match[str], clause: Clause) -> str | None:
    rest = _rest(match, clause)
    return None if rest is None else f"The user has been {rest}"


def _called(match: re.Match[str], clause: Clause) -> str | None:
    noun = FACT_NOUNS.get(match["noun"])
    name = clause.text[match.start("name") : match.end("name")].strip()
    if noun is None or not name[:1].isupper():
        return None
    return f"The user's {noun} is called {name}"


def _lives(match: re.Match[str], clause: Clause) -> str | None:
    place = clause.text[match.start("place") : match.end("place")].strip()
    return f"The user lives in {place}" if place[:1].isupper() else None


_NAME = r"(?P<name>[^\W\d_][\w-]*(?: [^\W\d_][\w-]*)?)[\s.!]*$"
_PLACE = r"(?P<place>[^\W\d_][\w' -]{0,40}?)[\s.!]*$"

_RULES: list[tuple[re.Pattern[str], _Handler]] = [
    (
        re.compile(
            r"^my (?P<subject>(?P<who>[a-z-]+)(?:'s [a-z-]+)?(?: [a-z-]+){0,2}?)"
            r" (?P<verb>lives|works|studies|loves|likes|hates|enjoys|plays|speaks|teaches|owns"
            r"|was born|grew up|goes to) (?P<rest>.+)$"
        ),
        _my_relative,
    ),
    (
        re.compile(
            r"^my (?P<subject>[a-z'-]+(?: [a-z'-]+){0,3}?) (?P<verb>is|are|'s) (?P<rest>.+)$"
        ),
        _my_is,
    ),
    (
        re.compile(
            r"^(?:i|i've) (?P<verb>live|grew up|was born|work|study|own|drive|speak|play|use"
            r"|enjoy|love|like|hate|dislike|adore|prefer|teach|have got|have|'ve got|got|take|eat"
            r"|drink|collect|support|follow|run|cycle|swim) (?P<rest>.+)$"
        ),
        _i_verb,
    ),
    (re.compile(r"^(?:i'm|i am) (?P<rest>.+)$"), _i_am),
    (
        re.compile(r"^(?:i've|i have) been (?P<rest>[a-z]+ing (?:for|since) .+)$"),
        _i_have_been,
    ),
    (
        re.compile(
            r"^(?:mon|ma|mein|meine|mi) (?P<noun>[a-zœ]+) (?:s'appelle|heißt|heisst|se llama) "
            + _NAME
        ),
        _called,
    ),
    (re.compile(r"^(?:j'habite|je vis|je vis) (?:a|en|au|aux|dans) " + _PLACE), _lives),
    (re.compile(r"^ich (?:wohne|lebe) in " + _PLACE), _lives),
    (re.compile(r"^vivo en " + _PLACE), _lives),
]

_REMEMBER = re.compile(
    r"^(?:remember|don't forget|dont forget|do not forget|keep in mind|note down|make a note)"
    r"(?: that[:,]? |[:,] | (?=i |i'm |i've |my ))"
)


def fact_in(clause: Clause) -> str | None:
    """The fact one clause states, restated in the third person as a sentence, or None.

    "remember that ..." keeps what follows even when it is not about the user or is about today:
    the user asked for it."""
    explicit = _REMEMBER.match(clause.folded)
    if explicit:
        clause = Clause(
            clause.text[explicit.end() :], clause.folded[explicit.end() :], False, False
        )
    elif clause.question or _TRANSIENT.search(clause.folded):
        return None
    for pattern, handler in _RULES:
        match = pattern.match(clause.folded)
        if match:
            found = handler(match, clause)
            if found is not None:
                return _sentence(found)
    if not explicit:
        return None
    general = re.match(r"^i (?P<verb>[a-z]+) (?P<rest>.+)$", clause.folded)
    if general and general["verb"] not in ("am", "was", "will", "would", "can", "could"):
        rest = _rest(general, clause)
        return (
            None if rest is None else _sentence(f"The user {third_person(general['verb'])} {rest}")
        )
    rest = _restate(clause.text)
    return None if rest is None else _sentence(rest)
