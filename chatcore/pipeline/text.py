"""Small text helpers the built-in rewriters share: where code fences are, one character at a
time, and where a sentence ends. Pure functions and a tiny state machine; no chatcore imports.
"""

from __future__ import annotations

import re

TERMINATORS = ".!?…"
"""Characters that end a sentence when whitespace follows."""

_CLOSERS = "\"'”’)]*_"
"""What may follow a terminator and still belong to the sentence: quotes, brackets, emphasis."""

_ABBREVIATIONS = frozenset({"e.g.", "i.e.", "dr.", "mr.", "mrs.", "ms.", "vs.", "st."})

_LIST_NUMBER = re.compile(r"\d{1,3}[.)]")


class FenceTracker:
    """Follows Markdown code fences through a text fed one character at a time.

    A fence is a line that starts (after any indentation) with three or more backticks; it is
    closed by a line holding only at least as many backticks. ``inside`` says whether the next
    character is code. The state changes on the character that ends the opening run of
    backticks, and on the newline that ends a closing fence line, so it depends only on the
    text seen so far: however a text is split, every character gets the same answer.
    """

    __slots__ = ("_closing", "_line_start", "_ticks", "inside", "open_ticks")

    def __init__(self) -> None:
        self.inside = False
        self.open_ticks = 0
        """The length of the backtick run that opened the current fence."""
        self._line_start = True
        self._ticks = 0
        self._closing = False

    def step(self, ch: str) -> None:
        """Move past ``ch``."""
        if self._line_start:
            if ch == "`":
                self._ticks += 1
                return
            if self._ticks == 0 and ch in " \t":
                return
            self._end_run()
        if ch == "\n":
            if self._closing:
                self.inside = False
            self._closing = False
            self._line_start = True
            self._ticks = 0
        elif self._closing and not ch.isspace():
            self._closing = False

    def finish(self) -> None:
        """The text ended: a closing fence on the last line, without its newline, still closes
        (a run of backticks there never opens a fence: there is nothing left to put in it)."""
        if self._line_start and self.inside and self._ticks >= self.open_ticks:
            self._closing = True
        self._line_start, self._ticks = False, 0
        if self._closing:
            self.inside = False
            self._closing = False

    def _end_run(self) -> None:
        ticks, self._ticks, self._line_start = self._ticks, 0, False
        if ticks < 3:
            return
        if not self.inside:
            self.inside = True
            self.open_ticks = ticks
        elif ticks >= self.open_ticks:
            self._closing = True


def ends_sentence(word: str, first_in_line: bool) -> bool:
    """Whether ``word``, followed by whitespace, ends a sentence: it ends with ``.``, ``!``,
    ``?`` or ``…`` (quotes or brackets may follow), and is neither a list number at the start
    of a line (``1.``) nor a common abbreviation (``e.g.``)."""
    core = word.rstrip(_CLOSERS)
    if not core or core[-1] not in TERMINATORS:
        return False
    if first_in_line and _LIST_NUMBER.fullmatch(word):
        return False
    return word.lower() not in _ABBREVIATIONS


_LIST_MARKER = re.compile(r"(\d{1,3}[.)]|[-*•+]|#{1,6})")
_EDGE_PUNCTUATION = "\"'“”‘’()[]{}<>*_.,;:!?…-"


def normalise_word(word: str) -> str:
    """A word as repetition checks compare it: lower case, without the punctuation around it
    (a word of punctuation only stays as it is)."""
    core = word.strip(_EDGE_PUNCTUATION).lower()
    return core or word


def normalise_words(words: list[str]) -> tuple[str, ...]:
    """The words of a sentence or line as compared: list markers at its start and marks with
    neither letters nor digits (``|``, ``---``) dropped."""
    start = 0
    while start < len(words) and _LIST_MARKER.fullmatch(words[start]):
        start += 1
    return tuple(normalise_word(w) for w in words[start:] if any(c.isalnum() for c in w))
