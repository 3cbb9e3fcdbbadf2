"""What a user said, cut into clauses that the learning rules can read: cleaned, bounded, split
into sentences and clauses, each with a folded copy (lower case, accents off) of the same length.

Standard library only. Every regular expression here runs on bounded text and has no nested
ambiguous repetition, so no input can make matching slow.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

# Only the start of a message is read: a preference or a fact is said in a sentence or two, and
# a long paste (code, a document to summarise) is not the user talking about themselves.
MAX_CHARS = 2000
MAX_CLAUSE_CHARS = 300

_QUOTES = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u02bc": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u00a0": " ",
        "\u202f": " ",
    }
)

# Politeness that looks conditional but is not a hypothetical ("answer in French if possible").
_POLITE_CONDITIONS = re.compile(
    r"\b(?:if possible|if you can|if you could|if you don't mind|if you do not mind"
    r"|if that's ok(?:ay)?|if that is ok(?:ay)?|if that's alright)\b",
    re.IGNORECASE,
)

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n+")

# A sentence that imagines, reports, quotes or asks about words is not the user stating
# something about themselves.
_HYPOTHETICAL = re.compile(
    r"\b(?:if|suppose|supposing|imagine|imagina|pretend|pretending|hypothetically|assume"
    r"|assuming|wish|let's say|lets say|roleplay|role-play|role play|in a story|in the story"
    r"|in the game|character|as if|supposons|imaginons|angenommen|stell dir vor|wenn ich|falls"
    r"|supongamos|si fuera|si yo fuera|si j'etais)\b"
)
_REPORTED = re.compile(
    r"\b(?:said|says|say|saying|told|tell|tells|telling|ask|asks|asked|wrote|writes|quote"
    r"|quoted|translate|translates|translated|translation|translating|traduis|traduisez"
    r"|traduire|traduction|traduce|traducir|ubersetze|ubersetzen|ubersetzung|mean|means"
    r"|meaning|spell|spelled|pronounce|sentence|example|dit|dice|sagt)\b"
)

# Where one sentence holds several statements: "I'm Sam and I'm a developer", "call me Ana and
# please answer in Spanish". A bare comma splits only before a new subject or imperative.
_SUBJECT = (
    r"(?:i|i'm|im|i've|i'd|i'll|my|you|your|he|she|it|they|we|call|keep|be|answer|reply"
    r"|respond|speak|talk|write|stop|don't|dont|do not|use|give|let's|switch|no need)"
)
_CLAUSE_SPLIT = re.compile(
    rf"\s*[,;:]?\s+(?:and|but|so|also|then|plus)\s+(?=(?:{_SUBJECT}|please)\b)"
    rf"|\s*[,;]\s*(?={_SUBJECT}\b)|\s*;\s*|\s+[-\u2013\u2014]\s+"
)

# Words that open a clause without changing what it says ("ok, so, from now on, ...").
_FILLER = re.compile(
    r"^(?:(?:ok|okay|so|and|also|oh|hey there|hey|hi|hello|well|alright|right|now|then|btw"
    r"|by the way|actually|just|please|pls|plz|kindly|from now on|going forward|in the future"
    r"|in future|for now|one more thing|one thing|bonjour|salut|hallo|hola|bitte|por favor"
    r"|s'il te plait|s'il vous plait|desormais|dorenavant|a partir de maintenant|ab jetzt"
    r"|ab sofort|von nun an|von jetzt an|a partir de ahora|de ahora en adelante|yes|yeah|sure"
    r"|thanks|thank you|cool|great|lol|oh and|simply)\b[\s,:!.-]*)+"
)

# A polite request in front of an imperative ("can you ...", "I'd like you to ...").
_REQUEST = re.compile(
    r"^(?:(?:can|could|would|will) you(?: please| kindly| maybe| perhaps)?|would you mind"
    r"|i'd like you to|i would like you to|id like you to|i want you to|i need you to"
    r"|i'd prefer (?:it )?if you|i would prefer (?:it )?if you|i'd rather you"
    r"|i'd appreciate it if you|you should|you must|make sure to|make sure you|try to"
    r"|(?:peux|pourrais)-tu|(?:pouvez|pourriez)-vous|tu peux|vous pouvez|tu pourrais"
    r"|vous pourriez|(?:kannst|konntest|wurdest) du|(?:konnen|konnten|wurden) sie"
    r"|(?:puedes|podrias|podria|puede)(?: por favor)?)\s+"
)

# Words that may end a preference without changing it ("call me Sam please", "... from now on").
TAIL = (
    r"(?:[\s,]+(?:please|pls|plz|from now on|going forward|thanks|thank you|in the future"
    r"|in future|always|only|again|instead|too|as well|for me|for now|with me|to me"
    r"|by default|btw|by the way|ok|okay|anymore|any more|from here on|henceforth"
    r"|s'il te plait|s'il vous plait|svp|stp|merci|desormais|dorenavant|bitte|danke|ab jetzt"
    r"|ab sofort|por favor|gracias|a partir de ahora|de ahora en adelante|mit mir|conmigo"
    r"|avec moi|thx|ty))*[\s.!?:)]*$"
)


@lru_cache(maxsize=4096)
def _fold_char(char: str) -> str:
    base = unicodedata.normalize("NFKD", char)[:1] or char
    lower = base.lower()
    return lower if len(lower) == 1 else base


def fold(text: str) -> str:
    """Lower case with accents removed, one character for one: positions in the folded text are
    positions in the original."""
    return "".join(_fold_char(c) for c in text)


def _drop_delimited(text: str, mark: str, keep: str) -> str:
    parts = text.split(mark)
    if len(parts) < 3:
        return text
    return keep.join(parts[0::2])


def clean(text: str) -> str:
    """The part of a message the rules read: bounded, quotes made plain, code and quoted text
    replaced by a placeholder (what the user quotes is not what the user says)."""
    text = unicodedata.normalize("NFC", text[:MAX_CHARS]).translate(_QUOTES)
    text = _drop_delimited(text, "```", " ")
    text = _drop_delimited(text, "`", " QUOTED ")
    text = _drop_delimited(text, '"', " QUOTED ")
    text = re.sub(r"(?<![\w])'[^'\n]{1,200}'(?![\w])", " QUOTED ", text)
    return _POLITE_CONDITIONS.sub(" ", text)


@dataclass(frozen=True, slots=True)
class Clause:
    """One clause: its original text and its folded copy (same length), with what is known of the
    sentence around it."""

    text: str
    folded: str
    question: bool
    requested: bool  # it began with a polite request ("can you ...") that was stripped

    def original(self, start: int, end: int) -> str:
        """The original text at positions found in the folded copy."""
        return self.text[start:end]


def _strip(text: str, folded: str) -> tuple[str, str]:
    left = len(folded) - len(folded.lstrip())
    right = len(folded.rstrip())
    return text[left:right], folded[left:right]


def _strip_start(text: str, folded: str) -> tuple[str, str, bool]:
    text, folded = _strip(text, folded)
    requested = False
    for _ in range(3):
        before = len(folded)
        match = _FILLER.match(folded)
        if match:
            text, folded = text[match.end() :], folded[match.end() :]
        match = _REQUEST.match(folded)
        if match:
            text, folded = text[match.end() :], folded[match.end() :]
            requested = True
        if len(folded) == before:
            break
    return text, folded, requested


def sentences(text: str) -> Iterator[tuple[str, str, bool]]:
    """The cleaned message's sentences that may state something about the user, as (text,
    folded, is_question); sentences that imagine, report or quote are left out."""
    for raw in _SENTENCE_END.split(clean(text)):
        sentence = raw.strip()
        if not sentence:
            continue
        folded = fold(sentence)
        if _HYPOTHETICAL.search(folded) or _REPORTED.search(folded):
            continue
        question = sentence.endswith("?") or sentence.startswith("¿")
        yield sentence, folded, question


def clauses(text: str) -> Iterator[Clause]:
    """The clauses of the message, each stripped of opening fillers and polite requests."""
    for sentence, folded, question in sentences(text):
        start = 0
        bounds = [m.span() for m in _CLAUSE_SPLIT.finditer(folded)]
        for split_start, split_end in [*bounds, (len(folded), len(folded))]:
            part, part_folded = sentence[start:split_start], folded[start:split_start]
            start = split_end
            part, part_folded, requested = _strip_start(part, part_folded)
            if part_folded.startswith("¿"):
                part, part_folded = part[1:], part_folded[1:]
            if part_folded and len(part_folded) <= MAX_CLAUSE_CHARS:
                yield Clause(part, part_folded, question, requested)
