"""The ``repetition`` rewriter: drops the degenerate repetition small models fall into on long
answers (a sentence said again, the same few sentences over and over, "the the the").

It reads a reply as units: a sentence, a line, or a run-on stretch cut at ``max_unit_chars``.
Three rules, none of which touches text inside a code fence:

- **word loop**: within a unit, the same one to eight words four times in a row ("the the the
  the", "of the world of the world ...") keep their first copy; further copies are dropped.
- **unit loop**: a unit that repeats the one just before it, or a block of up to
  ``max_period`` units that repeats the block before it, is dropped, and so is every unit that
  goes on with the loop. A cycle of fewer than three words ("Yes." "No!") may appear three
  times before it counts as a loop.
- **repeated sentence**: a sentence of five words or more that says (exactly or nearly) what a
  recent sentence said is dropped. Whole lines are spared this rule, so a poem's refrain or a
  list's similar items stay; they only go when they repeat back to back.

"Nearly" compares the words (lower case, without punctuation or a list marker in front); two
units of six words or more match when their similarity is at least ``similarity`` (at least 0.9
for the repeated-sentence rule, which has no loop to back it).

Replies still stream. A unit's words are released as they come while it cannot be a repeat:
while no recent unit starts with the same words, nor (for a near match) with the same first
word and all but two of the words so far. From the moment it could be a repeat, the unit is
held, with any units held before it, until it is decided. A released unit is kept whatever
follows, so a near repeat is only caught when it starts with the first word of the unit it
repeats and adds at most two words to it before its last. Within a released unit, only the
words that could go on with a word loop are held.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import TYPE_CHECKING

from pydantic import Field

from chatcore.pipeline.steps import Action, RewriterSettings, StepContext
from chatcore.pipeline.text import (
    TERMINATORS,
    FenceTracker,
    ends_sentence,
    normalise_word,
    normalise_words,
)

if TYPE_CHECKING:
    from chatcore.events import FinishReason

Report = Callable[[str, Action], None]

_SPACE = " \t\r\n\f\v"
_MAX_GRAM = 8
"""The longest run of words a word loop repeats."""
_GRAM_COPIES = 4
_SHORT_CYCLE_WORDS = 3
"""A cycle of fewer words than this must appear ``_SHORT_CYCLE_COPIES`` times to be a loop."""
_SHORT_CYCLE_COPIES = 4
_SENTENCE_WORDS = 5
"""The fewest words a sentence needs for the repeated-sentence rule."""
_NEAR_WORDS = 6
"""The fewest words two units need to match nearly rather than exactly."""
_NEAR_EXTRA_WORDS = 2
"""A unit that starts with a recent unit's first word stays a possible near repeat of it while
at most this many of its words so far are not in that unit (in order)."""
_SENTENCE_SIMILARITY = 0.9
"""The least similarity for the repeated-sentence rule, which has no loop to back it."""
_WINDOW = 32
"""How many recent units a sentence is compared with."""
_REPEATS_IN_A_ROW = 2
"""This many repeated sentences with nothing new between them count as a loop."""


class RepetitionSettings(RewriterSettings):
    order: int = Field(20, ge=0, le=10_000)
    max_period: int = Field(6, ge=1, le=16)
    """The longest block of units (sentences or lines) a loop may repeat; also how many units
    may be held back while a repeat is not yet certain."""
    similarity: float = Field(0.85, ge=0.5, le=1.0)
    """How alike (0.5 to 1, 1 = the same words) two units must be to count as one repeated."""
    max_unit_chars: int = Field(400, ge=40, le=10_000)
    """A sentence without an end this long is treated as complete: the most of one unit held
    back while it could be a repeat."""


@dataclass(frozen=True, slots=True)
class _Unit:
    text: str
    """As written, with the whitespace before it."""
    words: tuple[str, ...]
    whole_line: bool


class _Candidate:
    """A recent unit that the unit being read may still turn out to repeat."""

    __slots__ = ("exact", "row", "words")

    def __init__(self, words: tuple[str, ...]) -> None:
        self.words = words
        self.exact = True
        """The words read so far begin ``words``."""
        self.row: list[int] | None = [0] * (len(words) + 1) if len(words) >= _NEAR_WORDS else None
        """While a near match is possible: ``row[j]`` is the longest common subsequence of the
        words read so far and ``words[:j]``."""

    def add(self, index: int, word: str, similarity: float) -> bool:
        """Take the unit's next word; whether it may still repeat this one."""
        words = self.words
        self.exact = self.exact and index < len(words) and words[index] == word
        row = self.row
        if row is not None and (index > 0 or words[0] == word):
            new = [0]
            for j, seen in enumerate(words):
                new.append(row[j] + 1 if seen == word else max(row[j + 1], new[j]))
            # Past the second bound no ending could reach ``similarity``; the first keeps a new
            # sentence that merely starts with the same word from being held long.
            unmatched = index + 1 - new[-1]
            near = unmatched <= _NEAR_EXTRA_WORDS
            near = near and unmatched * similarity <= 2 * len(words) * (1 - similarity)
            self.row = new if near else None
        else:
            self.row = None
        return self.exact or self.row is not None


STOP_AFTER_LOOPING = 24
"""Pieces (about tokens) a reply may go on looping before ``done`` says to stop generating."""


class RepetitionFilter:
    """One reply's stream through the repetition rules (see the module docstring).

    ``looping`` is True while the reply is inside a detected loop, or after two sentences in a
    row were dropped as said before: its text is being dropped. The caller may end generation
    then, as nothing more of this reply would be shown until the model breaks out. It turns
    False as soon as a unit is released as new.
    """

    def __init__(
        self,
        report: Report,
        *,
        max_period: int = 6,
        similarity: float = 0.85,
        max_unit_chars: int = 400,
    ) -> None:
        self._report = report
        self._max_period = max_period
        self._similarity = similarity
        self._max_unit_chars = max_unit_chars
        self._fences = FenceTracker()
        self._out: list[str] = []
        # The unit being read: its kept text, raw and normalised words, where each word ends.
        self._sep = ""
        self._word = ""
        self._unit = ""
        self._raw: list[str] = []
        self._words: list[str] = []
        self._ends: list[int] = []
        self._unit_starts_line = True
        self._words_in_line = 0
        # How much of the unit is released, whether it is released (kept whatever comes), and
        # the recent units it may still repeat, with how many of its words they have seen.
        self._shown = 0
        self._committed = False
        self._candidates: list[_Candidate] | None = None
        self._candidate_words = 0
        # A word loop: the words repeated, and which of them comes next.
        self._gram: tuple[str, ...] = ()
        self._gram_next = 0
        # Units kept so far, units held as a possible repeat, and a confirmed unit loop.
        self._history: deque[tuple[str, ...]] = deque(maxlen=_WINDOW)
        self._pending: list[_Unit] = []
        self._run_period = 0
        self._run_needed = 0
        self._cycle: list[tuple[str, ...]] = []
        self._cycle_next = 0
        self._repeats_in_row = 0
        """Sentences dropped as said before, since the last one kept."""
        self._ending = False
        """The stream ended: a last unit that begins the loop's next unit is part of it."""
        self._looping_feeds = 0
        """Pieces fed in a row after which ``looping`` was True."""

    @property
    def looping(self) -> bool:
        return bool(self._gram or self._cycle) or self._repeats_in_row >= _REPEATS_IN_A_ROW

    @property
    def done(self) -> bool:
        """Still looping after ``STOP_AFTER_LOOPING`` pieces in a row: the model is not leaving
        the loop, so generation may stop (nothing of it would be shown)."""
        return self._looping_feeds >= STOP_AFTER_LOOPING

    @property
    def held(self) -> str:
        """The text fed but not yet released or dropped."""
        unit = self._unit[self._shown :]
        return "".join(u.text for u in self._pending) + unit + self._sep + self._word

    def feed(self, text: str) -> str:
        out = self._feed(text)
        self._looping_feeds = self._looping_feeds + 1 if self.looping else 0
        return out

    def _feed(self, text: str) -> str:
        for ch in text:
            was_code = self._fences.inside
            self._fences.step(ch)
            if was_code or self._fences.inside:
                self._enter_code(ch)
            elif ch in _SPACE:
                if self._word:
                    self._take_word(line_end=ch == "\n")
                elif ch == "\n" and self._words:
                    self._end_unit(line_end=True)
                self._sep += ch
                if ch == "\n":
                    self._words_in_line = 0
            else:
                self._word += ch
                if len(self._word) >= self._max_unit_chars:
                    self._take_word(line_end=False)
        out, self._out = "".join(self._out), []
        return out

    def flush(self, finish_reason: FinishReason) -> str:
        self._ending = True
        if self._word:
            self._take_word(line_end=True)
        elif self._words:
            self._end_unit(line_end=True)
        self._release_pending()
        self._out.append(self._sep)
        self._sep = ""
        out, self._out = "".join(self._out), []
        return out

    # -- words ----------------------------------------------------------------------------

    def _take_word(self, line_end: bool) -> None:
        word, sep = self._word, self._sep
        self._word = self._sep = ""
        first_in_line = self._words_in_line == 0
        self._words_in_line += 1
        norm = normalise_word(word)
        ends = ends_sentence(word, first_in_line)
        if self._gram and norm == self._gram[self._gram_next]:
            self._gram_next = (self._gram_next + 1) % len(self._gram)
            if ends:
                self._keep_end_mark(word)
        else:
            self._gram = ()
            if not self._words:
                self._unit_starts_line = first_in_line
            self._unit += sep + word
            self._raw.append(word)
            self._words.append(norm)
            self._ends.append(len(self._unit))
            self._check_word_loop(word if ends else "")
        if line_end or ends or len(self._unit) >= self._max_unit_chars:
            self._end_unit(line_end)
        else:
            self._release_words()

    def _check_word_loop(self, ending_word: str) -> None:
        words = self._words
        for size in range(1, _MAX_GRAM + 1):
            span = size * _GRAM_COPIES
            if len(words) < span:
                return
            tail = words[-span:]
            if all(tail[i] == tail[i - size] for i in range(size, span)) and any(
                c.isalpha() for w in tail[:size] for c in w
            ):
                keep = len(words) - span + size
                self._gram = tuple(tail[:size])
                self._gram_next = 0
                self._unit = self._unit[: self._ends[keep - 1]]
                del self._raw[keep:], self._words[keep:], self._ends[keep:]
                self._candidates = None
                if ending_word:
                    self._keep_end_mark(ending_word)
                self._report("loop", "changed")
                return

    def _keep_end_mark(self, word: str) -> None:
        """A dropped word ended the sentence: the kept part keeps its full stop."""
        mark = word[len(word.rstrip(TERMINATORS + "\"'”’)]*_")) :]
        if self._words and self._unit.rstrip("\"'”’)]*_")[-1:] not in TERMINATORS:
            self._unit += mark

    def _loop_tail(self) -> int:
        """How many of the last words could still become copies in a word loop (and so be
        dropped): for each loop size, the words that repeat the ones ``size`` before them."""
        words, n, most = self._words, len(self._words), 0
        for size in range(1, _MAX_GRAM + 1):
            run = 0
            while run < min(n - size, (_GRAM_COPIES - 1) * size) and (
                words[n - 1 - run] == words[n - 1 - run - size]
            ):
                run += 1
            if run > most and any(c.isalpha() for w in words[n - run - size : n - run] for c in w):
                most = run
        return most

    # -- units ----------------------------------------------------------------------------

    def _release_words(self) -> None:
        """Release the unit's words so far, unless the unit could still be a repeat; keep back
        those that could go on with a word loop."""
        if not self._committed:
            if self._could_repeat():
                return
            self._commit()
        keep = len(self._words) - self._loop_tail()
        if keep > 0 and self._ends[keep - 1] > self._shown:
            self._out.append(self._unit[self._shown : self._ends[keep - 1]])
            self._shown = self._ends[keep - 1]

    def _could_repeat(self) -> bool:
        """Whether the words so far begin a unit that the rules below may drop: one that starts
        like a recent unit. History does not change while such a unit is read."""
        words = normalise_words(self._raw)
        if self._candidates is None:
            self._candidates = [_Candidate(u) for u in dict.fromkeys(self._history)]
            self._candidate_words = 0
        for index in range(self._candidate_words, len(words)):
            self._candidates = [
                c for c in self._candidates if c.add(index, words[index], self._similarity)
            ]
        self._candidate_words = len(words)
        return bool(self._candidates)

    def _commit(self) -> None:
        """The unit being read is new: it is kept, which breaks any loop or possible repeat."""
        self._committed = True
        self._candidates = None
        self._cycle = []
        self._release_pending()
        self._repeats_in_row = 0

    def _end_unit(self, line_end: bool) -> None:
        text, raw = self._unit, self._raw
        starts_line = self._unit_starts_line
        shown, committed = self._shown, self._committed
        self._reset_unit()
        if not raw:
            return
        if committed:
            words = normalise_words(raw)
            if words:
                self._history.append(words)
            self._out.append(text[shown:])
            return
        self._consider(_Unit(text, normalise_words(raw), starts_line and line_end))

    def _reset_unit(self) -> None:
        self._unit, self._raw, self._words, self._ends = "", [], [], []
        self._shown = 0
        self._committed = False
        self._candidates = None

    def _consider(self, unit: _Unit) -> None:
        if not unit.words:
            self._release_pending()
            self._out.append(unit.text)
            return
        if self._cycle:
            expected = self._cycle[self._cycle_next]
            if self._match(unit.words, expected) or (
                self._ending and expected[: len(unit.words)] == unit.words
            ):
                self._cycle_next = (self._cycle_next + 1) % len(self._cycle)
                return
            self._cycle = []
        if self._pending:
            if self._match(unit.words, self._history[-self._run_period]):
                self._hold(unit)
                return
            self._release_pending()
        for period in range(1, min(self._max_period, len(self._history)) + 1):
            if self._match(unit.words, self._history[-period]):
                cycle = list(self._history)[-period:]
                short = sum(len(w) for w in cycle) < _SHORT_CYCLE_WORDS
                copies = _SHORT_CYCLE_COPIES if short else 2
                self._run_period = period
                self._run_needed = (copies - 1) * period
                self._hold(unit)
                return
        self._settle(unit)

    def _settle(self, unit: _Unit) -> None:
        """Keep ``unit`` unless it is a sentence said before."""
        if (
            not unit.whole_line
            and len(unit.words) >= _SENTENCE_WORDS
            and any(self._match(unit.words, seen, strict=True) for seen in self._history)
        ):
            self._report("repeated_sentence", "changed")
            self._repeats_in_row += 1
            return
        self._repeats_in_row = 0
        self._history.append(unit.words)
        self._out.append(unit.text)

    def _hold(self, unit: _Unit) -> None:
        """Hold ``unit`` as part of a possible repeat; drop the repeat once it is complete."""
        self._pending.append(unit)
        self._history.append(unit.words)
        if len(self._pending) < self._run_needed:
            return
        held = len(self._pending)
        for _ in range(held):
            self._history.pop()
        self._cycle = list(self._history)[-self._run_period :]
        self._cycle_next = held % self._run_period
        self._pending = []
        self._report("loop", "changed")

    def _release_pending(self) -> None:
        """The held units are no loop after all; each is still checked as a sentence."""
        pending, self._pending = self._pending, []
        for _ in pending:
            self._history.pop()
        for unit in pending:
            self._settle(unit)

    def _match(self, a: tuple[str, ...], b: tuple[str, ...], strict: bool = False) -> bool:
        """Whether two units say the same; ``strict`` for a sentence outside a loop, where a
        near match must be closer."""
        if a == b:
            return True
        similarity = max(self._similarity, _SENTENCE_SIMILARITY) if strict else self._similarity
        shorter, longer = sorted((len(a), len(b)))
        if shorter < _NEAR_WORDS or 2 * shorter < similarity * (shorter + longer):
            return False
        return SequenceMatcher(None, a, b, autojunk=False).ratio() >= similarity

    # -- code -----------------------------------------------------------------------------

    def _enter_code(self, ch: str) -> None:
        """Code is never changed, and it breaks any repeat: release all, forget the history."""
        self._release_pending()
        self._out.append(self._unit[self._shown :] + self._sep + self._word + ch)
        self._reset_unit()
        self._sep = self._word = ""
        self._words_in_line = 0
        self._gram = ()
        self._cycle = []
        self._repeats_in_row = 0
        self._history.clear()


class Repetition:
    def __init__(self, settings: RepetitionSettings) -> None:
        self.settings = settings

    def open(self, context: StepContext) -> RepetitionFilter:
        s = self.settings
        return RepetitionFilter(
            context.report,
            max_period=s.max_period,
            similarity=s.similarity,
            max_unit_chars=s.max_unit_chars,
        )
