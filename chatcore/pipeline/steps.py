"""What a pipeline step is: the types plugins implement and register through
``register_filters``. A leaf module: it imports only value types.

Two kinds of steps:

- A **detector** finds things in text (a prompt injection, an e-mail address, a card number,
  profanity) and says where: ``find(text) -> [Finding]``. It never decides what happens; the
  pipeline applies the operator's policy for the step and the stage (``[pipeline.steps.NAME]``
  ``input = "block"``, ``output = "redact"``), the same way for every detector:

  - ``block``: the user gets a short refusal naming the category, never the offending text;
    blocked input makes no model call, blocked output stops the reply.
  - ``redact``: each finding is replaced by ``[<category> removed]`` and the text goes on.
  - ``warn``: the text goes on; the finding is still counted and logged.
  - ``off``: the detector is not run at that stage.

  On the input stage a detector sees the whole message, before the prompt, the store or the log
  do. On the output stage the pipeline runs it over the reply as it streams and holds back the
  last ``max_span`` characters (a finding may still be growing there), so nothing it would
  redact or block is ever shown, yet replies still stream.

- A **rewriter** cleans a reply as it streams (repetition, an unfinished last sentence,
  whitespace, unbalanced code fences): ``open(context)`` returns a ``TextFilter`` for one reply
  with the feed/flush hold-back contract of ``chatcore.generation.stops``: ``feed`` returns only
  text that is safe to show now and holds back what the next piece may still change; ``flush``
  releases the rest when the stream ends.

Every finding and every change is counted and logged by category only, through
``StepContext.report``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from chatcore.events import FinishReason, Message
    from chatcore.services import Services

Policy = Literal["block", "redact", "warn", "off"]
Stage = Literal["input", "output"]
Action = Literal["blocked", "redacted", "warned", "changed"]
"""What was done about a finding; ``changed`` is a rewriter's edit."""


class StepSettings(BaseModel):
    """The ``[pipeline.steps.<name>]`` section every step has. A step with options of its own
    registers a subclass (of ``DetectorSettings`` or ``RewriterSettings``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    order: int = Field(100, ge=0, le=10_000)
    """Lower runs first, on the message and on the stream."""


class DetectorSettings(StepSettings):
    input: Policy = "off"
    output: Policy = "off"

    def policy_for(self, stage: Stage, category: str) -> Policy:
        """The policy for one finding of ``category`` at ``stage``: the stage's own here; a
        detector with per-category settings (``pii``) narrows it. The pipeline asks this for
        every finding, and the strongest policy among a text's findings wins."""
        return self.input if stage == "input" else self.output


class RewriterSettings(StepSettings):
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Finding:
    """Something a detector found: its category (``prompt_injection``, ``email``,
    ``card_number``, ...) and where, as ``text[start:end]``."""

    category: str
    start: int
    end: int


class Detector(Protocol):
    """Finds what it looks for in a text; pure and fast (it runs on every message and, on a
    stream, on every piece). Runs bounded, in a worker thread.

    A detector may also have ``hold(text) -> int``: how many trailing characters of a streamed
    text may still become (or give the context of) a finding. The pipeline then holds back
    only that much (at most ``max_span``), so replies stream a few words behind instead of
    ``max_span`` characters behind; without it, ``max_span`` is held."""

    max_span: int
    """The longest text one finding can cover: on a stream this much is held back."""
    reasons: Mapping[str, str]
    """Per category, the few words a refusal gives ("it looks like an attempt to change my
    instructions"); a category not here gets a generic reason."""

    def find(self, text: str) -> Sequence[Finding]: ...


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a rewriter gets besides the text: the message being answered, the app's services,
    and ``report`` to count and log what it did (by category, never with the text)."""

    message: Message
    services: Services
    report: Callable[[str, Action], None]
    tokens_left: Callable[[], int | None] = lambda: None
    """How many more tokens the reply may take before ``generation.max_new_tokens`` cuts it
    (pieces received so far stand in for tokens), None when unknown: a rewriter that must hold
    text back in case of a cut (``unfinished``) holds it only near the end."""


class TextFilter(Protocol):
    """One reply's stream as a rewriter sees it. A filter may also have a ``done`` attribute
    (or property): True once it will show nothing more of this reply (an end-of-turn token, a
    loop the model does not leave); the pipeline then stops generation instead of paying for
    tokens nobody sees."""

    def feed(self, text: str) -> str:
        """Add the next piece; return what can be shown now."""
        ...

    def flush(self, finish_reason: FinishReason) -> str:
        """The stream ended (``stop``, ``length`` or ``cancelled``): return what is left."""
        ...


class Rewriter(Protocol):
    """Cleans reply streams: ``open`` makes the filter for one reply."""

    def open(self, context: StepContext) -> TextFilter: ...


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """``register(DetectorSpec(name, factory, settings=Model, help=...))``;
    ``factory(settings) -> Detector`` is called once at start."""

    name: str
    factory: Callable[[DetectorSettings], Detector]
    settings: type[DetectorSettings] = DetectorSettings
    help: str = ""
    """One line for ``chatcore plugins`` and docs/pipeline.md."""


@dataclass(frozen=True, slots=True)
class RewriterSpec:
    """``register(RewriterSpec(name, factory, settings=Model, help=...))``;
    ``factory(settings) -> Rewriter`` is called once at start."""

    name: str
    factory: Callable[[RewriterSettings], Rewriter]
    settings: type[RewriterSettings] = RewriterSettings
    help: str = ""


class Blocked(Exception):
    """The pipeline refused a message or stopped a reply: ``category`` and the step's
    ``reason``, never the offending text."""

    def __init__(self, step: str, category: str, reason: str) -> None:
        super().__init__(f"{step}: {category}")
        self.step = step
        self.category = category
        self.reason = reason
