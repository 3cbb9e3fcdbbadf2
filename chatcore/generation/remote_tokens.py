"""Token budgeting for a model on another machine: its tokenizer from local files when the
operator gives one, otherwise a conservative estimate from the text's size. Never the network.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chatcore.generation.types import ChatMessage, ChatTokenizer, GenerationError

log = logging.getLogger(__name__)

DEFAULT_REMOTE_WINDOW = 4096
"""Context window assumed when neither ``context.window`` nor the tokenizer's files say."""
ASCII_BYTES_PER_TOKEN = 3.0
"""Tokenizers of served models average 4 bytes of English per token or more; 3 over-counts."""
OTHER_BYTES_PER_TOKEN = 2.0
"""UTF-8 bytes per token of other scripts (2 to 4 bytes a character): about one token for a
Cyrillic letter, 1.5 for a Chinese character, 2 for an emoji."""
SAFETY_MARGIN = 1.15
"""The estimate is raised by this factor, for text that tokenizes worse than average (code)."""
MESSAGE_OVERHEAD = 8
"""Tokens a chat template adds around one message (role markers, separators), at most."""
GENERATION_PROMPT = 8
"""Tokens a chat template adds to open the assistant's turn, at most."""
_UNKNOWN_LENGTH = 10_000_000
"""``model_max_length`` at or above this is transformers' "unknown" placeholder."""


class EstimatedTokenizer:
    """A ``ChatTokenizer`` that estimates from UTF-8 size: ASCII bytes / 3 plus other bytes / 2
    per message, plus a template overhead, raised by ``SAFETY_MARGIN``. Over-counts on
    purpose (fewer turns fit than could); a server that still finds the prompt too long is
    answered by the backend's one trimmed retry. docs/openai.md has measured ratios."""

    def __init__(self, context_window: int) -> None:
        self._context_window = context_window

    @property
    def context_window(self) -> int:
        return self._context_window

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        raw = sum(estimate_text(m.content) + MESSAGE_OVERHEAD for m in messages)
        return math.ceil((raw + GENERATION_PROMPT) * SAFETY_MARGIN)


def estimate_text(text: str) -> float:
    """Tokens of ``text`` by its UTF-8 size, before the safety margin."""
    data = text.encode()
    ascii_bytes = len(text.encode("ascii", "ignore"))
    other = len(data) - ascii_bytes
    return ascii_bytes / ASCII_BYTES_PER_TOKEN + other / OTHER_BYTES_PER_TOKEN


class FileTokenizer:
    """A ``ChatTokenizer`` on a ``tokenizer.json`` (the ``tokenizers`` library) without a chat
    template: exact tokens of each message's text, plus the template overhead estimate."""

    def __init__(self, path: Path, context_window: int) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self._context_window = context_window

    @property
    def context_window(self) -> int:
        return self._context_window

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        texts = [m.content for m in messages]
        encoded = self._tokenizer.encode_batch(texts, add_special_tokens=False) if texts else []
        tokens = sum(len(e.ids) + MESSAGE_OVERHEAD for e in encoded)
        return tokens + GENERATION_PROMPT


def load_remote_tokenizer(path: str, window: int) -> ChatTokenizer:
    """The tokenizer prompts are budgeted with (slow: call it off the event loop).

    ``path`` empty: an estimate. A folder with a chat template: exact counts through
    transformers, the template included (``LocalTokenizer``). A ``tokenizer.json``, or a folder
    holding one without a template: exact text tokens plus the overhead estimate. ``window``
    is ``context.window``; 0 takes the model's length from the folder's files, else
    ``DEFAULT_REMOTE_WINDOW``."""
    if not path:
        return EstimatedTokenizer(window or _default_window("no openai.tokenizer is set"))
    location = Path(path).expanduser()
    if not location.exists():
        raise GenerationError(
            f"openai.tokenizer = {path!r}: {location} does not exist; set it to a local Hugging "
            "Face tokenizer folder or tokenizer.json of the served model, or leave it empty "
            "for an estimate"
        )
    folder = location if location.is_dir() else location.parent
    window = window or _window_from(folder) or _default_window(f"{folder} does not say")
    try:
        if location.is_dir() and _has_chat_template(location):
            from transformers import AutoTokenizer

            from chatcore.generation.local import LocalTokenizer

            hf = AutoTokenizer.from_pretrained(location, local_files_only=True)
            return LocalTokenizer(hf, window)
        file = location / "tokenizer.json" if location.is_dir() else location
        return FileTokenizer(file, window)
    except Exception as error:
        raise GenerationError(
            f"openai.tokenizer = {path!r}: cannot load a tokenizer from it "
            f"({type(error).__name__}: {error}); give a Hugging Face tokenizer folder or a "
            "tokenizer.json, or leave it empty for an estimate"
        ) from error


def _default_window(why: str) -> int:
    log.warning(
        "assuming a %d-token context window for the remote model (%s); set context.window to "
        "the server's context length",
        DEFAULT_REMOTE_WINDOW,
        why,
    )
    return DEFAULT_REMOTE_WINDOW


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _window_from(folder: Path) -> int:
    """The model's context length as its files state it (``config.json``, then
    ``tokenizer_config.json``), or 0."""
    for name, key in (
        ("config.json", "max_position_embeddings"),
        ("tokenizer_config.json", "model_max_length"),
    ):
        value = _read_json(folder / name).get(key)
        if isinstance(value, int | float) and 0 < value < _UNKNOWN_LENGTH:
            return int(value)
    return 0


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    return bool(_read_json(folder / "tokenizer_config.json").get("chat_template"))
