"""The built-in post-processing rewriters: echoed role markers, whitespace, unclosed code fences
and an unfinished last sentence (repetition lives in ``chatcore.pipeline.repetition``).

Each is a ``Rewriter`` with a ``RewriterSpec`` (``REWRITERS`` lists them in the recommended
order) and a stream filter with the feed/flush hold-back contract: a filter holds back only what
the next piece may still change, so the same text gives the same result however it is split.
None of them changes text inside a code fence.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from pydantic import Field

from chatcore.pipeline.repetition import Repetition, RepetitionSettings
from chatcore.pipeline.steps import (
    Action,
    RewriterSettings,
    RewriterSpec,
    StepContext,
)
from chatcore.pipeline.text import FenceTracker, ends_sentence

if TYPE_CHECKING:
    from chatcore.events import FinishReason

Report = Callable[[str, Action], None]

_S = TypeVar("_S", bound=RewriterSettings)


def settings_as(settings: RewriterSettings, model: type[_S]) -> _S:
    """``settings`` as the rewriter's own settings model (a plain ``RewriterSettings`` gets the
    model's defaults for the options it lacks)."""
    if isinstance(settings, model):
        return settings
    return model.model_validate(settings.model_dump(exclude_unset=True))


# -- role markers ---------------------------------------------------------------------------

_START_MARKERS = (
    "<|im_start|>assistant",
    "<|im_start|>user",
    "<|im_start|>system",
    "<|im_start|>",
    "<|im_end|>",
    "assistant:",
    "user:",
    "system:",
    "### response:",
    "### assistant:",
    "### answer:",
)
"""Markers stripped at the start of a reply (compared in lower case), longest match first."""

_TOKEN = re.compile(r"<\|[A-Za-z0-9_]{1,24}\|>")
_TOKEN_PREFIX = re.compile(r"<(\|([A-Za-z0-9_]{0,24}\|?)?)?")
_END_TOKENS = frozenset({"im_end", "im_start", "endoftext", "eot_id", "end"})
"""Special tokens that end a turn: text after one belongs to a turn the model made up."""


class RoleMarkerSettings(RewriterSettings):
    order: int = Field(10, ge=0, le=10_000)
    cut_at_end_token: bool = True
    """End the reply at an end-of-turn token (``<|im_end|>``, ``<|im_start|>``, ...); when
    false the token is only removed."""


class RoleMarkerFilter:
    """Strips role markers the model echoes: ``Assistant:``, ``User:``, ``System:``,
    ``### Response:`` and ``<|im_start|>assistant`` at the start of the reply, and special
    tokens (``<|...|>``) anywhere outside code; an end-of-turn token ends the reply and sets
    ``ended``, which the caller may use to stop generating. Holds back at most a marker."""

    def __init__(self, report: Report, *, cut_at_end_token: bool = True) -> None:
        self.ended = False
        self._report = report
        self._cut = cut_at_end_token
        self._start: str | None = ""
        """What is held at the start of the reply; None once the body began."""
        self._stripped = False
        self._token = ""
        self._fences = FenceTracker()

    @property
    def done(self) -> bool:
        """After an end-of-turn token nothing more is shown: generation may stop."""
        return self.ended

    def feed(self, text: str) -> str:
        if self.ended:
            return ""
        if self._start is not None:
            self._start += text
            body = self._read_start(final=False)
            if body is None:
                return ""
            text = body
        return self._body(text)

    def flush(self, finish_reason: FinishReason) -> str:
        if self.ended:
            return ""
        out = ""
        if self._start is not None:
            out = self._body(self._read_start(final=True) or "")
        out, self._token = out + self._token, ""
        return out

    def _read_start(self, final: bool) -> str | None:
        """Strip markers from the start; None while what is held may still become one."""
        while True:
            text = self._start or ""
            rest = text.lstrip()
            low = rest.lower()
            if not final and (
                not rest or any(len(low) < len(m) and m.startswith(low) for m in _START_MARKERS)
            ):
                return None
            marker = max((m for m in _START_MARKERS if low.startswith(m)), key=len, default="")
            if not marker:
                break
            self._start = rest[len(marker) :]
            self._stripped = True
            self._report("role_marker", "changed")
        self._start = None
        return text.lstrip() if self._stripped else text

    def _body(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            if self.ended:
                break
            was_code = self._fences.inside
            self._fences.step(ch)
            if was_code or self._fences.inside:
                # A fence opens only at a line start, where no token can be held.
                out.append(ch)
                continue
            if self._token:
                candidate = self._token + ch
                if _TOKEN.fullmatch(candidate):
                    self._token = ""
                    self._on_token(candidate[2:-2].lower())
                    continue
                if _TOKEN_PREFIX.fullmatch(candidate):
                    self._token = candidate
                    continue
                out.append(self._token)
                self._token = ""
            if ch == "<":
                self._token = ch
            else:
                out.append(ch)
        return "".join(out)

    def _on_token(self, name: str) -> None:
        if self._cut and name in _END_TOKENS:
            self.ended = True
            self._report("end_of_turn", "changed")
        else:
            self._report("role_marker", "changed")


class RoleMarkers:
    def __init__(self, settings: RoleMarkerSettings) -> None:
        self.settings = settings

    def open(self, context: StepContext) -> RoleMarkerFilter:
        return RoleMarkerFilter(context.report, cut_at_end_token=self.settings.cut_at_end_token)


# -- whitespace -----------------------------------------------------------------------------

_SPACE = " \t\r\n\f\v"


class WhitespaceSettings(RewriterSettings):
    order: int = Field(30, ge=0, le=10_000)


class WhitespaceFilter:
    """Outside code fences: drops whitespace before the first word of the reply and after its
    last, spaces at the end of a line, and blank lines beyond one in a row. Inner spaces and the
    indentation of a line are kept. Holds back only a run of whitespace."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self._fences = FenceTracker()
        self._run = ""
        self._started = False
        self._changed = False
        self._newlines = 0
        """How many newlines the text shown so far ends with (after a code fence)."""

    def feed(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            was_code = self._fences.inside
            self._fences.step(ch)
            if was_code or self._fences.inside:
                out.append(ch)
                self._started = True
                self._newlines = self._newlines + 1 if ch == "\n" else 0
            elif ch in _SPACE:
                self._run += ch
            else:
                out.append(self._settle_run())
                out.append(ch)
                self._started = True
                self._newlines = 0
        return "".join(out)

    def flush(self, finish_reason: FinishReason) -> str:
        if self._run:
            self._run = ""
            self._changed = True
        if self._changed:
            self._report("whitespace", "changed")
        return ""

    def _settle_run(self) -> str:
        run, self._run = self._run, ""
        if not self._started:
            settled = ""
        elif "\n" not in run:
            settled = run
        else:
            # A closing fence's own newline counts towards the two allowed in a row.
            newlines = max(1, min(run.count("\n"), 2 - self._newlines))
            settled = "\n" * newlines + run[run.rfind("\n") + 1 :]
        self._changed = self._changed or settled != run
        return settled


class Whitespace:
    def __init__(self, settings: WhitespaceSettings) -> None:
        self.settings = settings

    def open(self, context: StepContext) -> WhitespaceFilter:
        return WhitespaceFilter(context.report)


# -- code fences ----------------------------------------------------------------------------


class CodeFenceSettings(RewriterSettings):
    order: int = Field(40, ge=0, le=10_000)


class CodeFenceFilter:
    """Closes a code fence the reply left open, with as many backticks as opened it. Holds
    nothing back."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self._fences = FenceTracker()
        self._last = ""

    def feed(self, text: str) -> str:
        for ch in text:
            self._fences.step(ch)
        self._last = text[-1:] or self._last
        return text

    def flush(self, finish_reason: FinishReason) -> str:
        self._fences.finish()
        if not self._fences.inside:
            return ""
        self._report("unclosed_fence", "changed")
        return ("" if self._last == "\n" else "\n") + "`" * self._fences.open_ticks


class CodeFences:
    def __init__(self, settings: CodeFenceSettings) -> None:
        self.settings = settings

    def open(self, context: StepContext) -> CodeFenceFilter:
        return CodeFenceFilter(context.report)


# -- unfinished last sentence ---------------------------------------------------------------


class UnfinishedSettings(RewriterSettings):
    order: int = Field(50, ge=0, le=10_000)
    mark: str = Field("…", max_length=8)
    """Added to a cut sentence that is kept: all the reply has, or already partly shown."""
    hold_within: int = Field(64, ge=0, le=100_000)
    """The current sentence is held back only while the reply has at most this many tokens
    left before ``generation.max_new_tokens``: earlier, text streams as it comes."""


class UnfinishedFilter:
    """When the token limit cut the reply (``flush("length")``), drops the unfinished last
    sentence or line; keeps it, with ``mark`` added, when nothing else was shown. Never cuts
    inside a code fence.

    It holds back the current sentence (or line) only near the end: while ``tokens_left()``
    is at most ``hold_within`` (or unknown, None), so that the rest of a reply streams. A
    sentence that was already partly shown when the cut came cannot be taken back: it gets
    ``mark`` instead."""

    def __init__(
        self,
        report: Report,
        *,
        mark: str = "…",
        tokens_left: Callable[[], int | None] = lambda: None,
        hold_within: int = 64,
    ) -> None:
        self._report = report
        self._mark = mark
        self._tokens_left = tokens_left
        self._hold_within = hold_within
        self._fences = FenceTracker()
        self._held = ""
        self._word = ""
        self._words_in_line = 0
        self._shown = False
        self._partly_shown = False
        """Some of the current sentence went out before holding began."""

    def feed(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            was_code = self._fences.inside
            self._fences.step(ch)
            if was_code or self._fences.inside:
                out.append(self._held + ch)
                self._held = self._word = ""
                self._words_in_line = 0
            elif ch in _SPACE:
                if ch == "\n" or (
                    self._word and ends_sentence(self._word, self._words_in_line == 0)
                ):
                    out.append(self._held)
                    self._held = ""
                    self._partly_shown = False
                self._held += ch
                if self._word:
                    self._words_in_line += 1
                    self._word = ""
                if ch == "\n":
                    self._words_in_line = 0
            else:
                self._held += ch
                self._word += ch
        if self._held and not self._holding():
            out.append(self._held)
            self._partly_shown = self._partly_shown or bool(self._held.strip())
            self._held = ""
        released = "".join(out)
        self._shown = self._shown or bool(released.strip())
        return released

    def _holding(self) -> bool:
        left = self._tokens_left()
        return left is None or left <= self._hold_within

    def flush(self, finish_reason: FinishReason) -> str:
        held, word = self._held, self._word
        self._held = self._word = ""
        if (
            finish_reason != "length"
            or self._fences.inside
            or not (held.strip() or self._partly_shown)
            or (word and ends_sentence(word, self._words_in_line == 0))
        ):
            return held
        self._report("unfinished_sentence", "changed")
        if self._partly_shown:
            return held.rstrip() + self._mark
        return "" if self._shown else held.rstrip() + self._mark


class Unfinished:
    def __init__(self, settings: UnfinishedSettings) -> None:
        self.settings = settings

    def open(self, context: StepContext) -> UnfinishedFilter:
        return UnfinishedFilter(
            context.report,
            mark=self.settings.mark,
            tokens_left=context.tokens_left,
            hold_within=self.settings.hold_within,
        )


# -- specs ----------------------------------------------------------------------------------


def _role_markers(settings: RewriterSettings) -> RoleMarkers:
    return RoleMarkers(settings_as(settings, RoleMarkerSettings))


def _repetition(settings: RewriterSettings) -> Repetition:
    return Repetition(settings_as(settings, RepetitionSettings))


def _whitespace(settings: RewriterSettings) -> Whitespace:
    return Whitespace(settings_as(settings, WhitespaceSettings))


def _code_fences(settings: RewriterSettings) -> CodeFences:
    return CodeFences(settings_as(settings, CodeFenceSettings))


def _unfinished(settings: RewriterSettings) -> Unfinished:
    return Unfinished(settings_as(settings, UnfinishedSettings))


REWRITERS = (
    RewriterSpec(
        "role_markers",
        _role_markers,
        RoleMarkerSettings,
        "strip echoed role markers and special tokens; end the reply at an end-of-turn token",
    ),
    RewriterSpec(
        "repetition",
        _repetition,
        RepetitionSettings,
        "drop repeated sentences and loops of words or sentences",
    ),
    RewriterSpec(
        "whitespace",
        _whitespace,
        WhitespaceSettings,
        "trim trailing spaces, extra blank lines and leading or trailing whitespace",
    ),
    RewriterSpec(
        "code_fences",
        _code_fences,
        CodeFenceSettings,
        "close a code fence the reply left open",
    ),
    RewriterSpec(
        "unfinished",
        _unfinished,
        UnfinishedSettings,
        "drop the unfinished last sentence of a reply cut by the token limit",
    ),
)
"""The built-in rewriters, in the recommended order (also their default ``order``)."""
