"""The ``injection`` detector: prompt-injection and jailbreak attempts in a user's message
(instruction overrides, role-play overrides, system-prompt extraction, fake role markers), also
when written in disguise: look-alike letters, l33t, sp-a-ced letters, ROT13, reversed, or
encoded as base64, hex, URL escapes or binary that decode to such instructions."""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from pydantic import Field

from chatcore.pipeline.safety.injection_rules import (
    CJK_RULES,
    DECODE_AND_OBEY,
    EXTRACTION,
    JAILBREAK,
    OVERRIDE,
    RULES,
    Rule,
    is_negated,
    is_owner_speaking,
)
from chatcore.pipeline.safety.spans import resolve_overlaps
from chatcore.pipeline.steps import DetectorSettings, DetectorSpec, Finding, Policy

CATEGORIES = (OVERRIDE, JAILBREAK, EXTRACTION)
MAX_BLOB = 1024
"""Longest encoded blob that is decoded; also the longest finding, so the stream hold-back."""


REASONS = {
    OVERRIDE: "it looks like an attempt to change my instructions",
    JAILBREAK: "it looks like an attempt to switch off my rules",
    EXTRACTION: "it asks for my hidden instructions",
}


class InjectionSettings(DetectorSettings):
    """Refused on input by default; replies are not checked (a model quoting an attack is not
    one)."""

    order: int = Field(120, ge=0, le=10_000)
    input: Policy = "block"
    output: Policy = "off"
    decode: bool = True
    """Also read ROT13, reversed text and base64/hex/URL/binary blobs."""
    min_blob: int = Field(16, ge=8, le=256)
    """Shortest base64 or hex blob worth decoding, in characters."""


@dataclass(frozen=True, slots=True)
class _View:
    """The text as a rule sees it after undoing one disguise; ``origin[i]`` is where the
    view's character ``i`` came from (``None``: same place)."""

    text: str
    origin: list[int] | None = None
    reversed: bool = False

    def span(self, start: int, end: int, length: int) -> tuple[int, int]:
        if self.reversed:
            return length - end, length - start
        if self.origin is None:
            return start, end
        return self.origin[start], self.origin[end - 1] + 1


# Latin look-alikes from Cyrillic and Greek, and characters that hide between letters.
_CONFUSABLES = str.maketrans(
    "аеорсухіѕјԁɡοαεινρτκмнтвАЕОРСХІЅЈΑΕΙΟΡΤΚМНТВ",
    "aeopcyxisjdgoaeivptkmhtbAEOPCXISJAEIOPTKMHTB",
)
_INVISIBLE = frozenset("\u00ad\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\ufeff")
_LEET = str.maketrans("013457@$|!", "oieastasii")
_LEET_WORD = re.compile(r"[a-z][013457@$|!]+[a-z]|\b[013457][a-z]{2}", re.IGNORECASE)
# Letters split by one separator each: "i g n o r e", "I-G-N-O-R-E", "i.g.n.o.r.e".
_SPACED = re.compile(r"(?<![\w])(?:[^\W\d_][ .\-_*/|]){4,}[^\W\d_](?![\w])")
_CODE_HINT = re.compile(
    r"rot[ -]?13|caesar|cipher|backwards?|revers|decod|decrypt|unscramble", re.IGNORECASE
)
_ENGLISH_WORDS = """the a an and or to of in on is are was be you your i me my it this that for with
what how can do not"""
_ENGLISH = frozenset(_ENGLISH_WORDS.split())
_WINDOW = 400
"""In a long text a rule runs only this far either side of its needles."""

_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,1024}={0,2}(?![A-Za-z0-9+/=_-])")
_HEX = re.compile(
    r"(?<![0-9A-Fa-f])(?:(?:\\x|0x)?[0-9A-Fa-f]{2}(?:[\s:,]{0,2})){8,512}(?![0-9A-Za-z])"
)
_URL_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2}[\w.+-]{0,3}){6,}")
_BINARY = re.compile(r"(?<![01])(?:[01]{8}\s?){6,128}(?![01])")


def _normalized(text: str) -> _View | None:
    """NFKC, look-alike letters made Latin, invisible characters dropped, and single letters
    with separators between them joined; ``None`` when that changes nothing."""
    if text.isascii() and not _SPACED.search(text):
        return None
    chars: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        if char in _INVISIBLE:
            continue
        folded = char if char.isascii() else unicodedata.normalize("NFKC", char)
        for piece in folded.translate(_CONFUSABLES):
            chars.append(piece)
            origin.append(index)
    joined = "".join(chars)
    spaced = list(_SPACED.finditer(joined))
    if spaced:
        keep = [True] * len(joined)
        for match in spaced:
            for offset in range(match.start() + 1, match.end(), 2):
                keep[offset] = False
        chars = [c for c, k in zip(chars, keep, strict=True) if k]
        origin = [o for o, k in zip(origin, keep, strict=True) if k]
        joined = "".join(chars)
    if joined == text:
        return None
    return _View(joined, origin)


def _decode_blob(blob: str) -> str | None:
    """The text a base64, hex, URL-escaped or binary blob stands for, when it is mostly
    printable words; otherwise ``None``."""
    raw: bytes | None = None
    compact = re.sub(r"\s|\\x|0x|[:,]", "", blob)
    if re.fullmatch(r"[01]+", compact) and len(compact) % 8 == 0:
        raw = int(compact, 2).to_bytes(len(compact) // 8, "big")
    elif re.fullmatch(r"[0-9A-Fa-f]+", compact) and len(compact) % 2 == 0:
        raw = binascii.unhexlify(compact)
    elif "%" in blob:
        return unquote(blob)
    if raw is None:
        padded = blob + "=" * (-len(blob) % 4)
        try:
            alphabet = "-_" if ("-" in blob or "_" in blob) else "+/"
            raw = base64.b64decode(padded, altchars=alphabet.encode(), validate=True)
        except (binascii.Error, ValueError):
            return None
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    printable = sum(c.isprintable() or c.isspace() for c in decoded)
    if not decoded or printable < 0.9 * len(decoded) or " " not in decoded:
        return None
    return decoded


class InjectionDetector:
    """Finds prompt-injection and jailbreak attempts by phrase rules."""

    def __init__(self, decode: bool = True, min_blob: int = 16) -> None:
        self.max_span: int = MAX_BLOB
        self.reasons: Mapping[str, str] = REASONS
        self._decode = decode
        self._min_blob = min_blob

    @classmethod
    def from_settings(cls, settings: DetectorSettings) -> InjectionDetector:
        if isinstance(settings, InjectionSettings):
            return cls(decode=settings.decode, min_blob=settings.min_blob)
        return cls()

    def find(self, text: str) -> list[Finding]:
        findings = [
            Finding(category, *view.span(start, end, len(text)))
            for view in self._views(text)
            for category, start, end in _match_rules(view.text)
        ]
        if self._decode:
            findings.extend(self._find_encoded(text))
            findings.extend(
                Finding(OVERRIDE, m.start(), m.end()) for m in DECODE_AND_OBEY.finditer(text)
            )
        return resolve_overlaps(findings, CATEGORIES)

    def _views(self, text: str) -> Iterator[_View]:
        yield _View(text)
        normalized = _normalized(text)
        base = normalized or _View(text)
        if normalized is not None:
            yield normalized
        if _LEET_WORD.search(base.text):
            yield _View(base.text.translate(_LEET), base.origin)
        if self._decode and (_CODE_HINT.search(text) or not _looks_english(text)):
            yield _View(codecs.encode(base.text, "rot13"), base.origin)
            if base.origin is None:
                yield _View(text[::-1], reversed=True)

    def _find_encoded(self, text: str) -> list[Finding]:
        found = []
        for pattern in (_BASE64, _HEX, _URL_ESCAPES, _BINARY):
            for match in pattern.finditer(text):
                blob = match.group().strip()
                if len(blob) < self._min_blob:
                    continue
                decoded = _decode_blob(blob)
                if decoded is None:
                    continue
                hit = next(iter(_match_rules(decoded)), None)
                if hit is None and _LEET_WORD.search(decoded):
                    hit = next(iter(_match_rules(decoded.translate(_LEET))), None)
                if hit is not None:
                    found.append(Finding(hit[0], match.start(), match.start() + len(blob)))
        return found


def _finditer(rule: Rule, text: str, lowered: str) -> Iterator[re.Match[str]]:
    """The rule's matches; in a long text only near its needles, where a match can be."""
    if len(text) <= 4 * _WINDOW or not rule.needles:
        yield from rule.pattern.finditer(text)
        return
    spots = sorted(found for needle in rule.needles for found in _positions(lowered, needle))
    start = end = -1
    for spot in [*spots, None]:
        if spot is not None and spot - _WINDOW <= end:
            end = spot + _WINDOW
            continue
        if end > 0:
            yield from rule.pattern.finditer(text, max(0, start), min(len(text), end))
        if spot is not None:
            start, end = spot - _WINDOW, spot + _WINDOW


def _positions(text: str, needle: str) -> Iterator[int]:
    index = text.find(needle)
    while index >= 0:
        yield index
        index = text.find(needle, index + 1)


def _looks_english(text: str) -> bool:
    """Whether one word in ten or more is a common English word: text that is not may be in
    ROT13 or reversed (or another language, which costs a few more rule runs)."""
    words = re.findall(r"[a-z']+", text.lower())
    return len(words) >= 3 and sum(w in _ENGLISH for w in words) * 10 >= len(words)


def _match_rules(text: str) -> Iterator[tuple[str, int, int]]:
    """Every rule's matches in ``text`` as (category, start, end), less those negated ("don't
    ignore ...") or about the user's own words ("ignore my previous instructions")."""
    lowered = text.lower()
    for rule in RULES if text.isascii() else (*RULES, *CJK_RULES):
        if rule.needles and not any(needle in lowered for needle in rule.needles):
            continue
        for match in _finditer(rule, text, lowered):
            if is_negated(text, match.start()):
                continue
            if rule.owner_check and is_owner_speaking(
                match.group(), text[match.end() : match.end() + 40]
            ):
                continue
            yield rule.category, match.start(), match.end()


SPEC = DetectorSpec(
    name="injection",
    factory=InjectionDetector.from_settings,
    settings=InjectionSettings,
    help="prompt-injection and jailbreak attempts: overrides, role-play, prompt extraction",
)
