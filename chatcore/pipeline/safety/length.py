"""The ``length`` detector: a message longer than the operator allows, in characters or in
lines. It marks everything past the limit, so ``block`` refuses the message and ``redact``
cuts it there."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from chatcore.pipeline.steps import DetectorSettings, DetectorSpec, Finding, Policy

TOO_LONG = "message_too_long"


class LengthSettings(DetectorSettings):
    """Checked on input only: a reply's length is ``generation.max_new_tokens``'s business,
    and on a stream the limit cannot be told from a window of the text."""

    order: int = Field(110, ge=0, le=10_000)
    input: Policy = "block"
    output: Policy = "off"
    max_chars: int = Field(8000, ge=1)
    """Most characters in one message."""
    max_lines: int = Field(400, ge=1)
    """Most lines in one message."""


class LengthDetector:
    """One finding from the first character past either limit to the end of the text."""

    def __init__(self, max_chars: int = 8000, max_lines: int = 400) -> None:
        self.max_span: int = 1
        self.reasons: Mapping[str, str] = {TOO_LONG: "the message is too long"}
        self.max_chars = max_chars
        self.max_lines = max_lines

    @classmethod
    def from_settings(cls, settings: DetectorSettings) -> LengthDetector:
        if isinstance(settings, LengthSettings):
            return cls(settings.max_chars, settings.max_lines)
        return cls()

    def find(self, text: str) -> list[Finding]:
        cut = self.max_chars if len(text) > self.max_chars else len(text)
        newline = -1
        for _ in range(self.max_lines):
            newline = text.find("\n", newline + 1, cut)
            if newline < 0:
                break
        else:
            # max_lines newlines seen before the cut: a line past the limit starts after the
            # last one, unless nothing follows it.
            if newline + 1 < len(text):
                cut = min(cut, newline)
        if cut >= len(text):
            return []
        return [Finding(TOO_LONG, cut, len(text))]


SPEC = DetectorSpec(
    name="length",
    factory=LengthDetector.from_settings,
    settings=LengthSettings,
    help="messages longer than the limits (characters, lines)",
)
