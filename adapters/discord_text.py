"""Cutting reply text into Discord messages (at most 2,000 characters each) cleanly: at a line
end or a space, never inside a code block's line; a code block that is cut is closed and reopened.

Pure functions on strings, used by the Discord adapter for whole replies and while streaming.
"""

from __future__ import annotations

import bisect
import re

LIMIT = 2000
"""The most characters Discord takes in one message."""
FENCE = "```"
_CLOSE = "\n" + FENCE
_LANG = re.compile(r"[\w+#.-]{1,20}")
"""A code block's language tag (``py``, ``c++``, ``objective-c``) as it is carried over to the
reopened block; anything else after the fence is left where it was."""
MIN_LIMIT = 100
"""Below this a reopened fence and its closing could leave no room for text."""


def split_message(text: str, limit: int = LIMIT) -> list[str]:
    """``text`` as messages of at most ``limit`` characters each, blank ones left out: each cut
    at the last line end that fits (or the last space outside code when that leaves the message
    more than half empty), inside a code block only at a line end unless one line alone is too
    long; a code block that is cut is closed at the end of one message and reopened, with its
    language, at the start of the next."""
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        head, rest = split_once(rest, limit)
        if head.strip():
            parts.append(head)
    if rest.strip():
        parts.append(rest)
    return parts


def split_once(text: str, limit: int = LIMIT) -> tuple[str, str]:
    """The first message of ``text`` (at most ``limit`` characters) and what is left for the
    next ones; ``(text, "")`` when it fits. ``split_message`` is this, repeated."""
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT}, not {limit}")
    if len(text) <= limit:
        return text, ""
    fences = _fences(text, limit + 1)
    start = _content_start(text)
    cut, separator = _best_cut(text, limit, fences, start)
    head, rest = text[:cut], text[cut + separator :]
    lang = _open_block(text, fences, cut)
    if lang is None:
        return head, rest
    closing = FENCE if head.endswith("\n") else _CLOSE
    return head + closing, f"{FENCE}{lang}\n{rest}"


def close_code_block(text: str) -> str:
    """``text`` with a code block it leaves open closed (a reply cut short, or stopped)."""
    fences = _fences(text, len(text))
    if _open_block(text, fences, len(text)) is None:
        return text
    return text + (FENCE if text.endswith("\n") else _CLOSE)


def _fences(text: str, end: int) -> list[int]:
    """Where each ``` starts in ``text[:end]``, read left to right as Discord reads them (every
    one opens or closes a block)."""
    found: list[int] = []
    at = text.find(FENCE)
    while at != -1 and at < end:
        found.append(at)
        at = text.find(FENCE, at + len(FENCE))
    return found


def _content_start(text: str) -> int:
    """Where the text proper starts: after a leading fence line (three backticks and a
    language), so that no cut leaves an empty code block behind."""
    if not text.startswith(FENCE):
        return 0
    line_end = text.find("\n")
    tag = text[len(FENCE) : line_end] if line_end != -1 else ""
    return line_end + 1 if _LANG.fullmatch(tag) or tag == "" else len(FENCE)


def _open_block(text: str, fences: list[int], cut: int) -> str | None:
    """The language ("" for none) of the code block open at ``cut``, or None outside code."""
    closed = bisect.bisect_right(fences, cut - len(FENCE))
    if closed % 2 == 0:
        return None
    opener = fences[closed - 1] + len(FENCE)
    line_end = text.find("\n", opener)
    tag = text[opener:line_end] if line_end != -1 else ""
    return tag if _LANG.fullmatch(tag) else ""


def _fits(text: str, limit: int, fences: list[int], cut: int) -> bool:
    """Whether the message ending at ``cut`` fits, with a closing fence when it needs one."""
    closing = len(_CLOSE) if _open_block(text, fences, cut) is not None else 0
    return cut + closing <= limit


def _best_cut(text: str, limit: int, fences: list[int], start: int) -> tuple[int, int]:
    """Where the first message ends, and the length of the separator dropped there (the line
    break or space cut at; none for a cut through a word)."""
    line_cut = _last_cut(text, limit, fences, start, "\n", in_code=True)
    if line_cut is not None and (line_cut >= limit // 2 or _inside(fences, line_cut)):
        return line_cut, 1
    space_cuts = (_last_cut(text, limit, fences, start, sep, in_code=False) for sep in " \t")
    choices = [c for c in (line_cut, *space_cuts) if c is not None]
    if choices:
        return max(choices), 1
    # One word or one code line longer than a message: cut it where it must be cut, but never
    # through a fence's three backticks.
    cut = limit - len(_CLOSE)
    inside_marker = [f for f in fences if f < cut < f + len(FENCE)]
    return (inside_marker[0] if inside_marker else cut), 0


def _inside(fences: list[int], cut: int) -> bool:
    return bisect.bisect_right(fences, cut - len(FENCE)) % 2 == 1


def _last_cut(
    text: str, limit: int, fences: list[int], start: int, separator: str, in_code: bool
) -> int | None:
    """The last position of ``separator`` after ``start`` where a message can end and fit;
    positions inside a code block count only when ``in_code``."""
    at = text.rfind(separator, start + 1, limit + 1)
    while at != -1:
        inside = _inside(fences, at)
        if (
            (in_code or not inside)
            and not (inside and _opens_block(text, at))
            and _fits(text, limit, fences, at)
        ):
            return at
        at = text.rfind(separator, start + 1, at)
    return None


def _opens_block(text: str, at: int) -> bool:
    """Whether the line ending at ``at`` (inside a block) is the block's opening fence: a cut
    there would leave an empty code block behind."""
    line_start = text.rfind("\n", 0, at) + 1
    return text.startswith(FENCE, line_start)
