"""Value types of generation: chat messages in, chunks out, and the backend's contract.

A leaf module (it imports only ``chatcore.events``): backends, the context builder and the
engine all speak these types.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from chatcore.events import ChatMessage, FinishReason, Role, Usage

__all__ = [
    "INTERRUPTED_MARKER",
    "Backend",
    "ChatMessage",
    "ChatTokenizer",
    "Chunk",
    "GenerationError",
    "Role",
    "StreamInterruptedError",
    "Unsupported",
]

if TYPE_CHECKING:
    from chatcore.config import GenerationSettings


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of generated text. The last chunk of a stream has ``finish_reason`` set."""

    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


class GenerationError(Exception):
    """A backend could not generate; the message says what went wrong and what to do."""


INTERRUPTED_MARKER = " […]"
"""What a front end may append to a reply whose stream broke off mid-way, so it reads as cut."""


class StreamInterruptedError(GenerationError):
    """The reply broke off after it had begun (a remote server dropped the stream or fell
    silent): the chunks already streamed are ``partial``, to be kept and shown as cut
    (``INTERRUPTED_MARKER``), never retried, since the user has already seen them."""

    finish_reason = "interrupted"

    def __init__(self, message: str, partial: str, usage: Usage) -> None:
        super().__init__(message)
        self.partial = partial
        self.usage = usage


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A generation setting a backend cannot honour, and why (one line, for the operator)."""

    setting: str
    """Its name in ``[generation]``, e.g. ``"top_k"``."""
    reason: str


class ModelNotFoundError(GenerationError):
    """The configured model is not where the configuration says."""


@runtime_checkable
class ChatTokenizer(Protocol):
    """Counts tokens of a chat prompt exactly as the backend will see it."""

    @property
    def context_window(self) -> int:
        """The most tokens (prompt plus reply) the model can attend to."""
        ...

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of ``messages`` rendered with the chat template, generation prompt included."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Turns chat messages plus generation options into an async stream of text chunks.

    ``load`` is called once before the first ``stream`` and may be slow (it runs heavy work off
    the event loop). Closing the stream early (``aclose``, or cancelling its consumer) stops the
    generation promptly.
    """

    name: str

    async def load(self) -> None:
        """Make the model ready; idempotent."""
        ...

    @property
    def tokenizer(self) -> ChatTokenizer:
        """The tokenizer prompts are budgeted with; valid after ``load``."""
        ...

    def stream(
        self, messages: Sequence[ChatMessage], options: GenerationSettings
    ) -> AsyncIterator[Chunk]:
        """Generate a reply to ``messages``; the last chunk carries the finish reason."""
        ...

    def unsupported(self, options: GenerationSettings) -> list[Unsupported]:
        """The settings of ``options`` this backend cannot honour (empty: it honours them all).
        Checked at start (``chatcore.generation.capabilities``), so nothing is silently
        ignored; a backend that does not define it is trusted to honour everything."""
        ...

    async def close(self) -> None:
        """Release the model and any worker threads."""
        ...
