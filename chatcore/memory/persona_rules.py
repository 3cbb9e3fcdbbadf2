"""The rules that read the user's preferred tone and their role (occupation) in one clause, in
English with the common French, German and Spanish wordings; see ``preference_rules``.
"""

from __future__ import annotations

import re

from chatcore.memory.lexicon import ROLE_BAD_MODIFIERS, ROLE_NOUNS, ROLE_TRANSLATIONS, TECH_SPELLING
from chatcore.memory.preference_rules import TAIL_ONLY, Rule, Value, const, rule
from chatcore.memory.utterance import TAIL, Clause

# -- tone -----------------------------------------------------------------------------------

_TONES = {
    "formal": "formal",
    "more formal": "formal",
    "professional": "formal",
    "polite": "formal",
    "casual": "casual",
    "informal": "casual",
    "relaxed": "casual",
    "laid-back": "casual",
    "laid back": "casual",
    "chill": "casual",
    "less formal": "casual",
    "less casual": "formal",
    "friendly": "friendly",
    "friendlier": "friendly",
    "warm": "friendly",
    "warmer": "friendly",
    "playful": "playful",
    "funny": "playful",
    "funnier": "playful",
    "humorous": "playful",
    "witty": "playful",
    "direct": "direct",
    "blunt": "direct",
    "blunter": "direct",
    "straightforward": "direct",
    "frank": "direct",
}
_TONE = "(?P<tone>" + "|".join(sorted(map(re.escape, _TONES), key=len, reverse=True)) + r")\b"
_TONE_ADVERBS = {
    "formally": "formal",
    "professionally": "formal",
    "casually": "casual",
    "informally": "casual",
    "playfully": "playful",
    "directly": "direct",
    "bluntly": "direct",
}
_DEGREE = r"(?:(?:a bit|a little|slightly|much|way|more|a lot|far|bit|somewhat) )*"


def _tone(match: re.Match[str], clause: Clause) -> Value | None:
    return (_TONES[match["tone"]], None)


def _tone_adverb(match: re.Match[str], clause: Clause) -> Value | None:
    return (_TONE_ADVERBS[match["adverb"]], None)


def _untone(match: re.Match[str], clause: Clause) -> Value | None:
    tone = _TONES[match["tone"]]
    # The opposite of formal is casual, and the other way round; other tones are just undone.
    return {"formal": ("casual", None), "casual": ("formal", None)}.get(tone, (None, tone))


TONE_RULES: list[Rule] = [
    rule(
        "tone",
        rf"^be {_DEGREE}{_TONE}(?: with me| to me| when you (?:talk|speak|answer|reply) to me)?"
        + TAIL,
        _tone,
    ),
    rule("tone", rf"^you can be {_DEGREE}{_TONE}(?: with me| to me)?" + TAIL, _tone),
    rule(
        "tone",
        rf"^(?:use|adopt|take|keep|try|go for) (?:a |an )?{_DEGREE}{_TONE} (?:tone|style|register"
        r"|voice)(?: with me| when you (?:talk|speak|answer|reply) to me)?" + TAIL,
        _tone,
    ),
    rule(
        "tone",
        r"^(?:talk|speak|write|answer|reply|chat|address me)(?: to me| with me)? (?:more )?"
        r"(?P<adverb>formally|professionally|casually|informally|playfully|directly|bluntly)"
        + TAIL,
        _tone_adverb,
    ),
    rule(
        "tone",
        r"^(?:(?:don't|dont|do not) be|stop being|(?:there's |there is )?no need to be"
        r"|you (?:don't|dont|do not) (?:need|have) to be) (?:so |that |too )?" + _TONE + TAIL,
        _untone,
    ),
    rule("tone", r"^(?:you can )?drop the formalities" + TAIL, const("casual")),
    rule(
        "tone",
        r"^(?:go back to|return to|use|back to) your (?:normal|usual|default|regular)"
        r" (?:tone|style|voice)" + TAIL,
        const(None),
    ),
    rule(
        "tone",
        r"^(?:add|use|put) (?:some |more |a bit of |a little )?(?:humou?r|jokes|fun)"
        r"(?: (?:to|in|into) your (?:answers|replies|responses))?" + TAIL,
        const("playful"),
    ),
    rule("tone", r"^(?:make|tell) more jokes" + TAIL, const("playful")),
    # French, German, Spanish: the familiar and the polite "you"
    rule(
        "tone", r"^(?:tutoie[- ]moi|(?:tu peux|on peut) (?:me|se) tutoyer)" + TAIL, const("casual")
    ),
    rule(
        "tone",
        r"^(?:vouvoie[- ]moi|vouvoyez[- ]moi|vous pouvez me vouvoyer)" + TAIL,
        const("formal"),
    ),
    rule(
        "tone",
        r"^(?:du kannst mich duzen|duz(?:e)? mich|wir konnen uns duzen|lass uns duzen)" + TAIL,
        const("casual"),
    ),
    rule("tone", r"^(?:siez(?:e)? mich|siezen sie mich)" + TAIL, const("formal")),
    rule(
        "tone", r"^(?:tuteame|puedes tutearme|hablame de tu|tratame de tu)" + TAIL, const("casual")
    ),
    rule("tone", r"^(?:hablame|tratame|trateme|hableme) de usted" + TAIL, const("formal")),
]

# -- role -----------------------------------------------------------------------------------

_ROLE_WORD = re.compile(r"[a-z0-9][a-z0-9+#-]*")
_ROLE_FOLLOWERS = frozenset(
    [
        "at",
        "in",
        "for",
        "with",
        "from",
        "by",
        "working",
        "and",
        "specialising",
        "specializing",
        "based",
        "since",
    ]
)


def parse_role(clause: Clause, start: int) -> str | None:
    """The occupation written at ``start`` (after "a"/"an"): up to three modifiers and a known
    head noun ("senior backend engineer"), or None."""
    words: list[tuple[int, int]] = []
    pos = start
    while len(words) < 6:
        match = _ROLE_WORD.match(clause.folded, pos)
        if not match:
            break
        words.append(match.span())
        pos = match.end() + 1
        if clause.folded[match.end() : pos] != " ":
            break
    lows = [clause.folded[a:b] for a, b in words]
    head = next((i for i, low in enumerate(lows) if low in ROLE_NOUNS), None)
    if head is None or head > 3 or any(low in ROLE_BAD_MODIFIERS for low in lows[:head]):
        return None
    while head + 1 < len(lows) and lows[head + 1] in ROLE_NOUNS:
        head += 1
    end = words[head][1]
    rest = clause.folded[end:]
    after = rest.split(maxsplit=1)[0] if rest.strip() else ""
    followed = not rest.strip() or rest.lstrip()[0] in ",.!;:)" or after in _ROLE_FOLLOWERS
    if "?" in rest or not (followed or TAIL_ONLY.match(rest)):
        return None
    original = [clause.text[a:b] for a, b in words[: head + 1]]
    return " ".join(TECH_SPELLING.get(word, word) if word.islower() else word for word in original)


def _role(match: re.Match[str], clause: Clause) -> Value | None:
    role = parse_role(clause, match.end())
    return None if role is None else (role, None)


def _unrole(match: re.Match[str], clause: Clause) -> Value | None:
    role = parse_role(clause, match.end())
    return None if role is None else (None, role)


def _unrole_anymore(match: re.Match[str], clause: Clause) -> Value | None:
    if not re.search(r"\b(?:anymore|any more|no more)\b", clause.folded):
        return None
    return _unrole(match, clause)


def _translated_role(match: re.Match[str], clause: Clause) -> Value | None:
    role = ROLE_TRANSLATIONS.get(match["role"])
    qualifier = match.groupdict().get("qualifier")
    if role is None or (qualifier and qualifier not in TECH_SPELLING):
        return None
    return (f"{TECH_SPELLING[qualifier]} {role}" if qualifier else role, None)


ROLE_RULES: list[Rule] = [
    rule("role", r"^(?:i'm|i am) an? ", _role),
    rule("role", r"^i (?:work|am working|'m working) as an? ", _role),
    rule("role", r"^(?:i'm|i am) no longer an? ", _unrole),
    rule("role", r"^(?:i'm|i am) not an? ", _unrole_anymore),
    rule(
        "role",
        r"^(?:je suis|je travaille comme) (?:un |une )?(?P<role>[a-z]+)"
        r"(?: (?P<qualifier>[a-z+#-]+))?" + TAIL,
        _translated_role,
    ),
    rule(
        "role",
        r"^ich (?:bin|arbeite als) (?:ein |eine )?(?P<role>[a-zß]+)" + TAIL,
        _translated_role,
    ),
    rule("role", r"^(?:soy|trabajo como) (?:un |una )?(?P<role>[a-z]+)" + TAIL, _translated_role),
]
