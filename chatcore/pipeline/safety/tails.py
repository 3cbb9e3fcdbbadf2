"""How much of a streamed reply's end a detector must still hold back: the trailing words that
may yet become (or carry the context of) a finding. A detector's ``hold(text)`` uses these, so
that a reply streams a few words behind instead of ``max_span`` characters behind."""

from __future__ import annotations

import re
from collections.abc import Callable

_TOKEN = re.compile(r"\S+")


def trailing_tokens(text: str, wanted: Callable[[str], bool], *, limit: int, gap: int = 2) -> int:
    """The length of the shortest end of ``text`` that holds every trailing token ``wanted``
    says may be part of a finding, walking back while at most ``gap`` unwanted tokens come in a
    row; the last token is always held when the text does not end in a space (it may still
    grow). Never more than ``limit`` characters."""
    tokens = list(_TOKEN.finditer(text))
    keep_from: int | None = None
    unwanted = 0
    for index in range(len(tokens) - 1, -1, -1):
        token = tokens[index]
        if len(text) - token.start() > limit:
            break
        growing = index == len(tokens) - 1 and token.end() == len(text)
        if growing or wanted(token.group()):
            keep_from, unwanted = token.start(), 0
        else:
            unwanted += 1
            if unwanted > gap:
                break
    return 0 if keep_from is None else len(text) - keep_from


def last_tokens(text: str, count: int, *, limit: int) -> int:
    """The length of the end of ``text`` that holds its last ``count`` tokens (and what
    follows them), at most ``limit`` characters."""
    tokens = list(_TOKEN.finditer(text))
    if not tokens:
        return 0
    start = tokens[max(0, len(tokens) - count)].start()
    return min(limit, len(text) - start)
