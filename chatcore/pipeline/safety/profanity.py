"""The ``profanity`` detector: swear words and slurs from better-profanity's word list, found
on word boundaries with their spans (also spelt f*ck, sh1t, $hit: the library's own letter
substitutions), and a few phrases of abuse aimed at someone ("kill yourself")."""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources

from pydantic import Field

from chatcore.pipeline.safety.spans import resolve_overlaps
from chatcore.pipeline.safety.tails import last_tokens
from chatcore.pipeline.steps import DetectorSettings, DetectorSpec, Finding, Policy

PROFANITY = "profanity"
ABUSE = "abuse"

# better-profanity 0.7's substitutions (Profanity.CHARS_MAPPING): each letter may be written as
# any of these.
CHARS_MAPPING: dict[str, str] = {
    "a": "a@*4",
    "i": "i*l1",
    "o": "o*0@",
    "u": "u*v",
    "v": "v*u",
    "l": "l1",
    "e": "e*3",
    "s": "s$5",
    "t": "t7",
}

_EVERYDAY = """
    anal anus areole arian aryan asanchez kinkyjesus len bondage breasts crotch doofus dopey
    drunk dummy enlargement erect erection erotic extacy extasy facial fat flange fondle foobar
    gay gays gai gae gey gigolo glans god gonad gonads gringo hell hemp heroin herp herpes hiv
    hitler hooch hookah homey hump hymen inbred incest jerk junkie junky kill labia lech leper
    lesbians lmao lmfao loin loins lube lust lusting lusty maxi masochist menses menstruate
    menstruation meth molest murder naked napalm nazi nazism nimrod ninny nipple nipples nude
    omg opiate opium oral orally organ ovary ovum ovums paddy pawn pcp pee penetrate penetration
    penial penile penis perversion peyote pms poop pot potty prostitute prude pubic pubis queer
    racy rape raped rapist rectal rectum rectus reich revue rum rump sadism sadist sandbar
    scantily schizo screw screwed screwing seaman seamen seduce semen sex sexual slave sleaze
    sleazy slope sniper snuff sodom souse soused sperm steamy stoned strip stroke stupid suck
    sucked sucking tampon tawdry teat teste testes testicle testis testical thrust thug tinkle
    toke toots tramp transsexual trashy tush ugly undies unwed urinal urine uterus uzi valium
    viagra virgin vixen vodka vomit voyeur vulgar vulva vagina wad wang weed weirdo whiz willy
    willies womb woody xx xxx cowgirl cowgirls pollock hoar snatch knob nob dink muff ganja
    reefer shag dong massa guido kkk klan mams titi pasty pastie moron dyke horniest horny
    hooker hardon pimp sissy playboy smut smutty
"""
EVERYDAY_WORDS = frozenset(_EVERYDAY.split()) | frozenset(
    {"cow girl", "cow girls", "strip club", "deep throat", "booty call"}
)
"""Words on better-profanity's list that are everyday, medical or technical words ("kill the
process", "strip whitespace", "organ donor", "god", "hell", Python's ``len``): left out unless
``strict``."""

_ABUSE = re.compile(
    r"\b(?:kill|hang|shoot|off)\s+yoursel(?:f|ves)\b|\bkys\b|\bgo\s+(?:and\s+)?die\b|"
    r"\bi\s+hope\s+(?:you|u)\s+(?:\w+\s+)?(?:die|get cancer|get raped|rot)\b|"
    r"\b(?:you|u)(?:'re|\s+are|\s+r)\s+(?:\w+\s+)?(?:a\s+)?(?:worthless|pathetic|disgusting|"
    r"useless)\s+(?:piece of \w+|waste of (?:space|oxygen|air)|(?:\w+\s+)?(?:idiot|moron|"
    r"loser|trash|garbage|scum|freak))\b|\bnobody (?:loves|likes|wants) (?:you|u)\b",
    re.IGNORECASE,
)


class ProfanitySettings(DetectorSettings):
    """Counted on input (a user's own words are theirs), replaced in replies."""

    order: int = Field(140, ge=0, le=10_000)
    input: Policy = "warn"
    output: Policy = "redact"
    strict: bool = False
    """Use better-profanity's whole list, everyday words like "kill" and "god" included."""
    extra_words: tuple[str, ...] = Field(default=())
    """More words to find (lower case; a space matches any separator)."""
    allowed_words: tuple[str, ...] = Field(default=())
    """Words of the list not to find, besides the everyday ones."""


def load_wordlist() -> list[str]:
    """better-profanity's shipped word list, lower case."""
    source = resources.files("better_profanity").joinpath("profanity_wordlist.txt")
    return [line.strip().lower() for line in source.read_text("utf-8").splitlines() if line.strip()]


def _char_pattern(char: str) -> str:
    variants = CHARS_MAPPING.get(char)
    if variants is None:
        return r"[\s_.\-]*" if char in " _-." else re.escape(char)
    return "[" + "".join(re.escape(v) for v in variants) + "]"


_Trie = dict[str, "_Trie"]


def _trie_pattern(words: list[str]) -> str:
    """One pattern for all the words, as a trie so that matching stays linear in the text
    whatever the list's size."""
    trie: _Trie = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: _Trie) -> str:
        branches = [
            _char_pattern(char) + emit(child) for char, child in sorted(node.items()) if char
        ]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return emit(trie)


class ProfanityDetector:
    """Finds listed words on word boundaries, and abuse phrases."""

    def __init__(
        self, extra_words: tuple[str, ...] = (), allowed: frozenset[str] = EVERYDAY_WORDS
    ) -> None:
        self.reasons: Mapping[str, str] = {
            PROFANITY: "it contains profanity",
            ABUSE: "it contains abuse aimed at someone",
        }
        words = sorted({w for w in load_wordlist() + list(extra_words) if w not in allowed})
        self._words = re.compile(rf"(?<![^\W_]){_trie_pattern(words)}(?![^\W_])", re.IGNORECASE)
        self.max_span: int = max(len(w) for w in words) * 2 + 40

    def hold(self, text: str) -> int:
        """On a stream: hold back the last eight words (a listed word may still be growing,
        and an abuse phrase, "you are a worthless waste of space", is up to eight words long),
        so the rest streams."""
        return last_tokens(text, 8, limit=self.max_span)

    @classmethod
    def from_settings(cls, settings: DetectorSettings) -> ProfanityDetector:
        if not isinstance(settings, ProfanitySettings):
            return cls()
        allowed = frozenset() if settings.strict else EVERYDAY_WORDS
        return cls(
            tuple(w.lower() for w in settings.extra_words),
            allowed | {w.lower() for w in settings.allowed_words},
        )

    def find(self, text: str) -> list[Finding]:
        found = [Finding(ABUSE, m.start(), m.end()) for m in _ABUSE.finditer(text)]
        for match in self._words.finditer(text):
            word = match.group()
            letters = sum(c.isalpha() for c in word)
            # Substitutions alone ("717", "**") are numbers and markup, not words.
            if letters >= 2 and letters * 2 >= len(word.replace(" ", "")):
                found.append(Finding(PROFANITY, match.start(), match.end()))
        return resolve_overlaps(found, (ABUSE, PROFANITY))


SPEC = DetectorSpec(
    name="profanity",
    factory=ProfanityDetector.from_settings,
    settings=ProfanitySettings,
    help="profanity and slurs (better-profanity's list, with f*ck-style spellings) and abuse",
)
