"""The ``pii`` detector: personal data and secrets in a message or a reply (e-mail addresses,
phone numbers, Luhn-checked card numbers, IP addresses, API keys and passwords), by regular
expressions checked afterwards, so that dates, prices, versions and order numbers pass."""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from chatcore.pipeline.safety.spans import resolve_overlaps
from chatcore.pipeline.safety.tails import trailing_tokens
from chatcore.pipeline.steps import DetectorSettings, DetectorSpec, Finding, Policy, Stage

PiiCategory = Literal["email", "phone", "card_number", "ip_address", "secret"]
CATEGORIES: tuple[PiiCategory, ...] = ("secret", "card_number", "email", "ip_address", "phone")
"""Every category, strongest claim first: where two overlap, the earlier one wins."""

_STRENGTH: dict[Policy, int] = {"off": 0, "warn": 1, "redact": 2, "block": 3}


class PiiCategories(BaseModel):
    """Per category, the most that is done about it (``[pipeline.steps.pii.categories]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: Policy = "warn"
    phone: Policy = "warn"
    card_number: Policy = "redact"
    ip_address: Policy = "warn"
    secret: Policy = "redact"


class PiiSettings(DetectorSettings):
    """A finding gets the milder of its stage's policy and its category's: ``input``/``output``
    say how far the step may go at each stage, ``categories`` how far for each kind of data.
    A category set to ``off`` is not looked for at all."""

    order: int = Field(130, ge=0, le=10_000)
    input: Policy = "redact"
    output: Policy = "redact"
    categories: PiiCategories = PiiCategories()

    def policy_for(self, stage: Stage, category: str) -> Policy:
        stage_policy = super().policy_for(stage, category)
        category_policy: Policy = getattr(self.categories, category, stage_policy)
        return min(stage_policy, category_policy, key=_STRENGTH.__getitem__)


# An e-mail address: a dot-atom local part, a domain of labels and a letter-only top level.
_EMAIL = re.compile(
    r"(?<![\w.%+@'-])[A-Za-z0-9_%+-]+(?:['.][A-Za-z0-9_%+-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w@-]|\.\w)"
)
# File names like icon@2x.png look like addresses; these top levels are file types.
_FILE_SUFFIXES = frozenset(
    {"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff", "pdf", "txt"}
    | {"log", "js", "css", "ts", "md", "json", "yaml", "yml"}
)

# 13 to 19 digits, maybe grouped by spaces or dashes.
_CARD = re.compile(r"(?<![\w.,/-])\d(?:[ -]?\d){12,18}(?![\w/]|[.,-]\d)")

_IPV4 = re.compile(
    r"(?<![\w.-])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?![\w-]|\.\d)"
)
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%\w+)?(?![\w:])")
_VERSION_BEFORE = re.compile(r"\b(?:v|version|release|build|ver\.?)\s*$", re.IGNORECASE)

# A phone number candidate: an optional + or 00, then digit groups with separators.
_PHONE = re.compile(
    r"(?<![\w+#/.,:=$€£-])(?:\+\s?|\b|(?=\())\(?\d[\d()]*(?:(?:[ ./-]|\)\s?|\s?\()\d[\d()]*){0,7}"
    r"(?![\w/:@]|[.,-]\d)"
)
_PHONE_CONTEXT = re.compile(
    r"\b(?:call(?:ing)?|phone|tel|telephone|mobile|cell|whats ?app|signal|sms|text(?:ing)? me|"
    r"fax|ring|dial|reach (?:me|us|him|her)|hotline|number|landline|contact|tel[ée]fono|"
    r"telefone?|t[ée]l|num[ée]ro|nummer|m[óo]vil|portable|handy|cellulare|celular)\b|\bph\b",
    re.IGNORECASE,
)
_NOT_PHONE_CONTEXT = re.compile(
    r"\b(?:order|invoice|ticket|tracking|ref(?:erence)?|case|id|account|acct|serial|sku|isbn|"
    r"iban|po|confirmation|booking|transaction|txn|part|model|item|batch|lot|receipt|claim|"
    r"policy|patient|customer|member|employee|student|version|build|issue|pr|commit|zip|"
    r"postcode|code|pin|otp)\b\s*(?:no\.?|number|#|nr\.?|id)?\s*[:#]?\s*$",
    re.IGNORECASE,
)

_SECRET_PREFIXED = re.compile(
    r"(?<![\w-])(?:"
    r"sk-(?:proj-|ant-(?:api\d\d-)?|live-|test-)?[A-Za-z0-9_-]{20,180}"
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,120}"
    r"|gh[pousr]_[A-Za-z0-9]{30,80}"
    r"|github_pat_[A-Za-z0-9_]{22,120}"
    r"|glpat-[A-Za-z0-9_-]{20,60}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,120}"
    r"|(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|hf_[A-Za-z0-9]{30,60}"
    r"|eyJ[A-Za-z0-9_-]{10,200}\.eyJ[A-Za-z0-9_-]{10,600}\.[A-Za-z0-9_-]{10,400}"
    r")(?![\w-])"
)
# A value after a word that says it is a secret: "api_key = ...", "my password is ...".
_SECRET_KEYWORD = re.compile(
    r"\b(?:api[_ -]?key|apikey|access[_ -]?key|secret(?:[_ -]?key)?|client[_ -]?secret|"
    r"(?:auth|access|bearer|api|refresh|bot|session)?[_ -]?token|password|passwd|pwd|"
    r"pass ?phrase|passcode|credentials?)s?\b"
    r"(?:\s+(?:is|was|for [\w .-]{1,30}? is|=|:))?\s*[:=]?\s*[\"'`]?"
    r"(?P<value>(?:(?!&\w+=)[^\s\"'`,;]){6,128})",
    re.IGNORECASE,
)
_PASSWORD_WORD = re.compile(r"pass|pwd|phrase|code", re.IGNORECASE)

PII_MAX_SPAN = 400
"""The longest finding (a long token, an e-mail address at its 254-character limit) plus the
words before it that the checks read; on a stream this much is held back."""


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum that card numbers carry."""
    if not digits.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card_prefix_valid(digits: str) -> bool:
    """Issuer prefixes in use: Visa 4, Mastercard 51-55 and 2221-2720, Amex 34/37, Discover,
    Diners, JCB, UnionPay and Maestro (30-39, 50, 56-69)."""
    first = digits[0]
    if first == "4":
        return True
    two = int(digits[:2])
    if first == "2":
        return 2221 <= int(digits[:4]) <= 2720
    return first == "3" or two == 50 or 51 <= two <= 69


def _card_groups_valid(candidate: str) -> bool:
    """Either one run of digits, or groups with one kind of separator the way cards are
    printed (4-4-4-4, 4-6-5 for Amex, ...): no group shorter than 3 except a last one."""
    separators = set(re.findall(r"[ -]", candidate))
    if not separators:
        return True
    if len(separators) > 1:
        return False
    groups = re.split(r"[ -]", candidate)
    return all(3 <= len(g) <= 6 for g in groups[:-1]) and 1 <= len(groups[-1]) <= 6


def _shannon_bits(value: str) -> float:
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def _looks_secret(value: str, password: bool) -> bool:
    """A value that is not an ordinary word: letters mixed with digits or symbols, or long and
    random. After a password word a shorter mixed value counts too."""
    if value.lower() in {"required", "invalid", "expired", "missing", "incorrect", "changed"}:
        return False
    has_letter = any(c.isalpha() for c in value)
    has_other = any(not c.isalpha() for c in value)
    if re.fullmatch(r"[\d.,:/-]+", value) or re.fullmatch(r"https?:.*|<.*>|\$\{?\w+\}?", value):
        return False
    if has_letter and has_other:
        return len(value) >= (6 if password else 12) and _shannon_bits(value) >= 2.5
    return len(value) >= 20 and _shannon_bits(value) >= 3.5


REASONS = {
    "email": "it contains an e-mail address",
    "phone": "it contains a phone number",
    "card_number": "it contains a payment card number",
    "ip_address": "it contains an IP address",
    "secret": "it contains what looks like a password or an API key",
}


# A word that may be part of personal data (digits, an @, a key-like mix) or the context word
# before it ("password:", "call"); used to hold a reply's end back while it streams.
_PII_LIKE = re.compile(r"[\d@]|^[\w-]*[_-][\w-]*$|^\W+$")
_CONTEXT_WORD = re.compile(
    r"(?i)^\W*(pass(word|wd|phrase)?|pwd|pin|secret|token|key|api[_-]?key|auth\w*|bearer|"
    r"credentials?|call|phone|tel|mobile|cell|whatsapp|fax|number|n[oº°]|e-?mail|mail|ip)\W*$"
)


def _may_be_pii(token: str) -> bool:
    return bool(_PII_LIKE.search(token) or _CONTEXT_WORD.match(token))


class PiiDetector:
    """Finds personal data and secrets; ``categories`` limits what is looked for."""

    def __init__(self, categories: Sequence[str] = CATEGORIES) -> None:
        self.max_span: int = PII_MAX_SPAN
        self.reasons: Mapping[str, str] = REASONS
        finders: dict[str, Callable[[str], list[Finding]]] = {
            "secret": _find_secrets,
            "card_number": _find_cards,
            "email": _find_emails,
            "ip_address": _find_ips,
            "phone": _find_phones,
        }
        self._finders = [finders[c] for c in CATEGORIES if c in categories]

    def hold(self, text: str) -> int:
        """On a stream: hold back the trailing words that may be (or introduce) personal data,
        with up to two other words between them, so the rest streams (``max_span`` at most)."""
        return trailing_tokens(text, _may_be_pii, limit=self.max_span)

    @classmethod
    def from_settings(cls, settings: DetectorSettings) -> PiiDetector:
        """The detector for a ``[pipeline.steps.pii]`` section: categories whose policy is
        ``off`` at both stages are not looked for."""
        wanted = [
            c
            for c in CATEGORIES
            if settings.policy_for("input", c) != "off" or settings.policy_for("output", c) != "off"
        ]
        return cls(wanted)

    def find(self, text: str) -> list[Finding]:
        findings: list[Finding] = []
        for finder in self._finders:
            findings.extend(finder(text))
        return resolve_overlaps(findings, CATEGORIES)


def _find_emails(text: str) -> list[Finding]:
    if "@" not in text:
        return []
    found = []
    for match in _EMAIL.finditer(text):
        local, _, domain = match.group().partition("@")
        if len(local) > 64 or len(match.group()) > 254:
            continue
        if domain.rsplit(".", 1)[-1].lower() in _FILE_SUFFIXES:
            continue
        found.append(Finding("email", match.start(), match.end()))
    return found


def _find_cards(text: str) -> list[Finding]:
    found = []
    for match in _CARD.finditer(text):
        candidate = match.group()
        digits = candidate.replace(" ", "").replace("-", "")
        if (
            13 <= len(digits) <= 19
            and _card_prefix_valid(digits)
            and _card_groups_valid(candidate)
            and luhn_valid(digits)
        ):
            found.append(Finding("card_number", match.start(), match.end()))
    return found


def _find_ips(text: str) -> list[Finding]:
    found = []
    if "." in text:
        for match in _IPV4.finditer(text):
            if _VERSION_BEFORE.search(text, max(0, match.start() - 12), match.start()):
                continue
            found.append(Finding("ip_address", match.start(), match.end()))
    if "::" in text or text.count(":") >= 5:
        for match in _IPV6.finditer(text):
            candidate = match.group().split("%")[0]
            if not any(c.isdigit() for c in candidate) or len(candidate) < 3:
                continue
            try:
                ipaddress.IPv6Address(candidate)
            except ValueError:
                continue
            found.append(Finding("ip_address", match.start(), match.end()))
    return found


def _phone_shape(candidate: str, context: bool) -> bool:
    """Whether digit groups look like a phone number written by a person, not a date, a
    version, an amount or an order number. ``context``: a word like "call" or "phone" is near."""
    international = candidate.startswith("+") or (
        candidate.startswith("00") and candidate[2:3] != "0"
    )
    digits = re.sub(r"\D", "", candidate)
    separators = set(re.findall(r"[ ./-]", candidate))
    groups = [g for g in re.split(r"[ ./()-]+", candidate) if g]
    if ("." in separators or "/" in separators) and len(separators) > 1:
        return False
    if "/" in separators and not (len(groups) == 2 and groups[0].startswith("0")):
        return False  # only the German 030/1234567; others are dates or fractions
    if candidate.count("(") != candidate.count(")"):
        return False
    if international:
        if not 8 <= len(digits) <= 15:
            return False
        return len(groups) > 1 or context or candidate.startswith("+")
    if len(groups) == 1:
        return context and 7 <= len(digits) <= 12 and not digits.startswith(("19", "20"))
    if re.fullmatch(r"(?:1[ .-]?)?\(?[2-9]\d\d\)?[ .-]?\d{3}[ .-]\d{4}", candidate):
        return True  # North American: (555) 123-4567, 555.123.4567, 1-555-123-4567
    if "." in separators and not all(len(g) == 2 for g in groups[1:]) and not context:
        return False  # dots otherwise only in the French 01.23.45.67.89 style
    sizes = [len(g) for g in groups]
    if digits.startswith("0") and 10 <= len(digits) <= 12 and max(sizes) <= 8:
        return min(sizes[1:]) >= 2
    return context and 7 <= len(digits) <= 12 and min(sizes) >= 2 and max(sizes) <= 5


def _find_phones(text: str) -> list[Finding]:
    found = []
    for match in _PHONE.finditer(text):
        candidate = match.group().rstrip(" (")
        while candidate.endswith(")") and candidate.count(")") > candidate.count("("):
            candidate = candidate[:-1]
        start = match.start()
        if candidate.startswith("(") and candidate.count("(") > candidate.count(")"):
            candidate, start = candidate[1:], start + 1
        before = text[max(0, start - 40) : start]
        if _NOT_PHONE_CONTEXT.search(before):
            continue
        context = bool(_PHONE_CONTEXT.search(before))
        if _phone_shape(candidate.strip(), context):
            found.append(Finding("phone", start, start + len(candidate)))
    return found


def _find_secrets(text: str) -> list[Finding]:
    found = [Finding("secret", m.start(), m.end()) for m in _SECRET_PREFIXED.finditer(text)]
    for match in _SECRET_KEYWORD.finditer(text):
        value = match.group("value").rstrip(".,)?")
        password = bool(
            _PASSWORD_WORD.search(match.group()[: match.start("value") - match.start()])
        )
        if _looks_secret(value, password):
            start = match.start("value")
            found.append(Finding("secret", start, start + len(value)))
    return found


SPEC = DetectorSpec(
    name="pii",
    factory=PiiDetector.from_settings,
    settings=PiiSettings,
    help="personal data and secrets: e-mail, phone, card numbers, IP addresses, API keys",
)
