"""The ``repetition`` rewriter: drops the degenerate repetition small models fall into on long
answers (a sentence said again, the same few sentences over and over, "the the the").

It reads a reply as units: a sentence, a line, or a run-on stretch cut at ``max_unit_chars``.
Three rules, none of which touches text inside a code fence:

- **word loop**: within a unit, the same one to eight words four times in a row ("the the the
  the", "of the world of the world ...") keep their first copy; further copies are dropped.
- **unit loop**: a unit that repeats the one just before it, or a block of up to
  ``max_period`` units that repeats the block before it, is dropped, and so is every unit that
  goes on with the loop. A cycle of fewer than three words ("Yes." "No!") may appear three
  times before it counts as a loop. Units that might start such a repeat are held back until
  the repeat is complete (dropped) or broken (released).
- **repeated sentence**: a sentence of five words or more that says (exactly or nearly) what a
  recent sentence said is dropped. Whole lines are spared this rule, so a poem's refrain or a
  list's similar items stay; they only go when they repeat back to back.

"Nearly" compares the words (lower case, without punctuation or a list marker in front); two
units of six words or more match when their similarity is at least ``similarity`` (at least 0.9
for the repeated-sentence rule, which has no loop to back it).
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
_SENTENCE_SIMILARITY = 0.9
"""The least similarity for the repeated-sentence rule, which has no loop to back it."""
_WINDOW = 32
_REPEATS_IN_A_ROW = 2
"""This many repeated sentences with nothing new between them count as a loop."""
"""How many recent units a sentence is compared with."""


class RepetitionSettings(RewriterSettings):
    order: int = Field(20, ge=0, le=10_000)
    max_period: int = Field(6, ge=1, le=16)
    """The longest block of units (sentences or lines) a loop may repeat; also how many units
    may be held back while a repeat is not yet certain."""
    similarity: float = Field(0.85, ge=0.5, le=1.0)
    """How alike (0.5 to 1, 1 = the same words) two units must be to count as one repeated."""
    max_unit_chars: int = Field(400, ge=40, le=10_000)
    """A sentence without an end this long is treated as complete: the most held back at once
    for a unit that is not a candidate repeat."""


@dataclass(frozen=True, slots=True)
class _Unit:
    text: str
    """As written, with the whitespace before it."""
    words: tuple[str, ...]
    whole_line: bool


class RepetitionFilter:
    """One reply's stream through the repetition rules (see the module docstring).

    ``looping`` is True while the reply is inside a detected loop, or after two sentences in a
    row were dropped as said before: its text is being dropped. The caller may end generation
    then, as nothing more of this reply would be shown until the model breaks out.
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

    @property
    def looping(self) -> bool:
        return bool(self._gram or self._cycle) or self._repeats_in_row >= _REPEATS_IN_A_ROW

    @property
    def held(self) -> str:
        """The text fed but not yet released or dropped."""
        return "".join(u.text for u in self._pending) + self._unit + self._sep + self._word

    def feed(self, text: str) -> str:
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
                if ending_word:
                    self._keep_end_mark(ending_word)
                self._report("loop", "changed")
                return

    def _keep_end_mark(self, word: str) -> None:
        """A dropped word ended the sentence: the kept part keeps its full stop."""
        mark = word[len(word.rstrip(TERMINATORS + "\"'”’)]*_")) :]
        if self._words and self._unit.rstrip("\"'”’)]*_")[-1:] not in TERMINATORS:
            self._unit += mark

    # -- units ----------------------------------------------------------------------------

    def _end_unit(self, line_end: bool) -> None:
        text, raw = self._unit, self._raw
        starts_line = self._unit_starts_line
        self._unit, self._raw, self._words, self._ends = "", [], [], []
        if not raw:
            return
        self._consider(_Unit(text, normalise_words(raw), starts_line and line_end))

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
        self._out.append(self._unit + self._sep + self._word + ch)
        self._unit, self._raw, self._words, self._ends = "", [], [], []
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
