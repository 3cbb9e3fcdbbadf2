"""The wire format of OpenAI-compatible chat completions: request bodies, server-sent events,
error bodies and ``Retry-After``. Pure functions, no I/O of their own beyond reading a response.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from chatcore.config import GenerationSettings
from chatcore.context import split_turns
from chatcore.events import ChatMessage, FinishReason, Usage

MAX_SERVER_STOPS = 4
"""The most stop strings the OpenAI API accepts; all of them are applied locally anyway."""
_DETAIL_BYTES = 4096
_CONTEXT_CODES = {"context_length_exceeded", "exceed_context_size_error", "string_above_max_length"}
_CONTEXT_WORDS = re.compile(
    r"context[ _](length|size|window)|maximum context|too many tokens|prompt is too long"
    r"|max_new_tokens` must be",
    re.IGNORECASE,
)


def request_body(
    model: str, messages: Sequence[ChatMessage], options: GenerationSettings
) -> dict[str, Any]:
    """The JSON of a streamed ``/chat/completions`` request for ``options``."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": options.max_new_tokens,
    }
    if options.strategy == "sample":
        body["temperature"] = options.temperature
        body["top_p"] = options.top_p
    else:
        body["temperature"] = 0.0  # greedy: the most likely token every time
    if options.seed >= 0:
        body["seed"] = options.seed
    if options.stop:
        body["stop"] = list(options.stop[:MAX_SERVER_STOPS])
    return body


@dataclass(frozen=True, slots=True)
class ServerError:
    """What a server said when it refused a request."""

    status: int
    message: str
    code: str = ""

    @property
    def context_too_long(self) -> bool:
        """The prompt (with the reply's tokens) exceeds the model's context window."""
        if self.status not in (400, 413, 422):
            return False
        return self.code in _CONTEXT_CODES or bool(_CONTEXT_WORDS.search(self.message))

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}" if self.message else f"HTTP {self.status}"


async def read_server_error(response: aiohttp.ClientResponse) -> ServerError:
    """The status and the server's message of a refused request (its first few KB)."""
    try:
        raw = await response.content.read(_DETAIL_BYTES)
    except (aiohttp.ClientError, TimeoutError):
        raw = b""
    return parse_error(response.status, raw.decode("utf-8", "replace"))


def parse_error(status: int, text: str) -> ServerError:
    """The message and code of an error body: OpenAI's ``{"error": {"message", "code"}}``,
    ``{"error": "..."}`` (Ollama, TGI), ``{"message": ...}``/``{"detail": ...}``, or plain text."""
    message, code = text, ""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            found = error.get("message") or error.get("detail") or ""
            message = found if isinstance(found, str) else json.dumps(_without_inputs(found))
            kind = error.get("code") or error.get("type") or ""
            code = str(kind)
        elif isinstance(error, str):
            message = error
    return ServerError(status, one_line(message), code)


def _without_inputs(detail: object) -> object:
    """A validation error's detail (FastAPI, vLLM: a list of {loc, msg, input, ctx}) without
    what echoes the request: the prompt must not reach the log through an error."""
    if isinstance(detail, list):
        return [_without_inputs(item) for item in detail]
    if isinstance(detail, dict):
        return {k: _without_inputs(v) for k, v in detail.items() if k not in ("input", "ctx")}
    return detail


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, cut to ``limit`` characters (server text goes into log lines)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def retry_after(response: aiohttp.ClientResponse) -> float | None:
    """Seconds the server asks to wait (``Retry-After``: seconds or an HTTP date), if any."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


@dataclass(frozen=True, slots=True)
class Delta:
    """One streamed event, reduced to what chatcore uses."""

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error: str = ""
    """An error the server reported inside the stream."""


DONE = Delta(finish_reason="stop")


async def server_events(response: aiohttp.ClientResponse) -> AsyncGenerator[Delta, None]:
    """The events of a ``text/event-stream`` body, up to ``data: [DONE]`` (yielded as ``DONE``).
    Ends without ``DONE`` when the server closes the stream early; the caller decides."""
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
            continue
        if line or not data:
            continue  # comments, "event:" and "id:" fields; keep-alive blank lines
        payload, data = "\n".join(data), []
        if payload.strip() == "[DONE]":
            yield DONE
            return
        yield parse_event(payload)
    if data:
        payload = "\n".join(data)
        if payload.strip() == "[DONE]":
            yield DONE
        else:
            yield parse_event(payload)


def parse_event(payload: str) -> Delta:
    """One ``data:`` payload of a chat-completion chunk (or a whole non-streamed answer)."""
    try:
        event = json.loads(payload)
    except ValueError:
        # Not its text: it may be model output the output steps would have redacted.
        return Delta(error=f"the server sent an event that is not JSON ({len(payload)} bytes)")
    if not isinstance(event, dict):
        return Delta()
    if "error" in event:
        return Delta(error=str(parse_error(0, json.dumps(event)).message))
    usage = _usage(event.get("usage"))
    choices = event.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    if not isinstance(choice, dict):
        return Delta(usage=usage)
    delta = choice.get("delta") or choice.get("message")  # a whole (non-streamed) answer
    text = delta.get("content") if isinstance(delta, dict) else None
    reason = choice.get("finish_reason")
    finish: FinishReason | None = None
    if isinstance(reason, str) and reason:
        finish = "length" if reason == "length" else "stop"
    return Delta(text=text if isinstance(text, str) else "", finish_reason=finish, usage=usage)


def _usage(value: object) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return Usage(prompt, completion)
    return None


def drop_oldest_turns(messages: Sequence[ChatMessage]) -> list[ChatMessage] | None:
    """``messages`` less the older half of the turns before the new message (system messages
    and the new message kept), or None when there is no history left to drop."""
    head = [m for m in messages if m.role == "system"]
    rest = [m for m in messages if m.role != "system"]
    if len(rest) < 2:
        return None
    history, new = rest[:-1], rest[-1]
    turns = split_turns(history)
    if not turns:
        return None
    kept = turns[math.ceil(len(turns) / 2) :]
    return [*head, *(m for turn in kept for m in turn), new]
