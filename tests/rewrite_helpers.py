"""Running rewriter filters in tests: a report log, splitting a text into pieces, the chain."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from chatcore.events import FinishReason
from chatcore.pipeline.steps import Action, TextFilter


@dataclass
class Reports:
    """A ``StepContext.report`` that remembers what it was told."""

    calls: list[tuple[str, Action]] = field(default_factory=list)

    def __call__(self, category: str, action: Action) -> None:
        self.calls.append((category, action))

    @property
    def categories(self) -> list[str]:
        return [c for c, _ in self.calls]


def split(text: str, cuts: Sequence[int]) -> list[str]:
    """``text`` cut at the given offsets (out-of-range offsets are ignored)."""
    bounds = sorted({0, len(text), *(c for c in cuts if 0 <= c <= len(text))})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def run(filter_: TextFilter, pieces: Sequence[str], reason: FinishReason = "stop") -> str:
    return "".join(filter_.feed(p) for p in pieces) + filter_.flush(reason)


def run_whole(
    make: Callable[[Reports], TextFilter], text: str, reason: FinishReason = "stop"
) -> tuple[str, list[str]]:
    reports = Reports()
    return run(make(reports), [text], reason), reports.categories


class Chain:
    """Filters one after another, as the pipeline runs them: what one releases is fed to the
    next; at the end each one's flush output is fed on before the next is flushed."""

    def __init__(self, filters: Sequence[TextFilter]) -> None:
        self.filters = list(filters)

    def feed(self, text: str) -> str:
        for f in self.filters:
            text = f.feed(text)
        return text

    def flush(self, finish_reason: FinishReason) -> str:
        text = ""
        for f in self.filters:
            text = (f.feed(text) if text else "") + f.flush(finish_reason)
        return text
