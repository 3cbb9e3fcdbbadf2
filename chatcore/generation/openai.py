"""The ``openai`` backend: any OpenAI-compatible ``/v1/chat/completions`` server, streamed
(vLLM, llama.cpp's server, TGI, Ollama, hosted APIs).

A request that fails before the reply's first token is retried with backoff (429 and 5xx, after
the server's ``Retry-After`` when it gives one; connection failures). Once the reply has begun
nothing is retried: a stream that breaks ends in ``StreamInterruptedError`` holding the partial
text. A server that finds the prompt too long gets it once more without the older half of the
history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp

from chatcore.config import GenerationSettings, OpenAISettings, Settings
from chatcore.events import FinishReason, Usage
from chatcore.generation.openai_wire import (
    DONE,
    ServerError,
    drop_oldest_turns,
    parse_event,
    read_server_error,
    request_body,
    retry_after,
    server_events,
)
from chatcore.generation.remote_tokens import load_remote_tokenizer
from chatcore.generation.stops import StopStringFilter
from chatcore.generation.types import (
    ChatMessage,
    ChatTokenizer,
    Chunk,
    GenerationError,
    StreamInterruptedError,
    Unsupported,
)

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})
"""Statuses worth another try: the server is busy, restarting, or failed once."""
JITTER = 0.25
"""Backoff waits are stretched by up to this share at random, so many bots do not retry at once."""


class _Retryable(GenerationError):
    """A failure before the first token that another try may not meet."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait
        """Seconds the server asked to wait (``Retry-After``), if it did."""


class _ContextTooLong(GenerationError):
    """The server says the prompt does not fit the model's context window."""


class _Refused(GenerationError):
    """The server refused the request for good (a wrong key, an unknown model or path)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Broken(GenerationError):
    """The stream broke while it was being read (dropped, silent too long, or an error event)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class OpenAIBackend:
    """A ``Backend`` on an OpenAI-compatible server; prompts are budgeted with a local tokenizer
    (``openai.tokenizer``) or a conservative estimate (``chatcore.generation.remote_tokens``)."""

    name = "openai"

    def __init__(self, settings: OpenAISettings, *, window: int = 0, sleep: Sleep | None = None):
        """``window`` is ``context.window`` (0: from the tokenizer's files, else 4096);
        ``sleep`` waits between retries (tests pass one that records the waits)."""
        self.settings = settings
        self.window = window
        self.model = settings.model
        """The model requests name: the configured one, or the one the server lists."""
        self._sleep: Sleep = sleep or asyncio.sleep
        self._session: aiohttp.ClientSession | None = None
        self._tokenizer: ChatTokenizer | None = None
        self._load_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIBackend:
        return cls(settings.openai, window=settings.context.window)

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    # -- lifecycle -------------------------------------------------------------------------

    async def load(self) -> None:
        """Load the tokenizer (local files only) and ask the server which models it serves:
        an unreachable server, a refused key or an unknown model stop the start here."""
        async with self._load_lock:
            if self._tokenizer is not None:
                return
            tokenizer = await asyncio.to_thread(
                load_remote_tokenizer, self.settings.tokenizer, self.window
            )
            if self._session is None:
                timeout = aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=self.settings.connect_timeout,
                    sock_read=self.settings.read_timeout,
                )
                self._session = aiohttp.ClientSession(timeout=timeout)
            self.model = await self._resolve_model()
            self._tokenizer = tokenizer
            log.info("openai backend: model %r at %s", self.model, self.base_url)

    @property
    def tokenizer(self) -> ChatTokenizer:
        if self._tokenizer is None:
            raise GenerationError("the openai backend is not loaded; await load() first")
        return self._tokenizer

    def unsupported(self, options: GenerationSettings) -> list[Unsupported]:
        """Beam search, top-k and a repetition penalty: the chat-completions API has none."""
        found = []
        if options.strategy == "beam":
            found.append(
                Unsupported(
                    "strategy",
                    'the chat-completions API has no beam search; use "greedy" or "sample"',
                )
            )
        if options.strategy == "sample" and options.top_k:
            found.append(
                Unsupported("top_k", "the chat-completions API has no top-k; set it to 0 (off)")
            )
        if options.repetition_penalty != 1.0:
            found.append(
                Unsupported(
                    "repetition_penalty",
                    "the chat-completions API has no repetition penalty; set it to 1.0 (off)",
                )
            )
        return found

    async def close(self) -> None:
        """Close the HTTP session (streams still open end with a connection error)."""
        session, self._session = self._session, None
        self._tokenizer = None
        if session is not None:
            await session.close()

    # -- generation ------------------------------------------------------------------------

    async def stream(
        self, messages: Sequence[ChatMessage], options: GenerationSettings
    ) -> AsyncGenerator[Chunk, None]:
        """Stream the reply; ``aclose`` (or cancelling the consumer) closes the HTTP response,
        which stops the generation on servers that watch for it."""
        tokenizer = self.tokenizer
        prompt = list(messages)
        failures, trimmed = 0, False
        stops = StopStringFilter(options.stop)
        shown: list[str] = []
        pieces = 0
        finish: FinishReason | None = None
        usage: Usage | None = None
        probing = probed = False
        while True:
            finish, usage = None, None  # each try starts afresh (nothing was shown yet)
            seen = 0
            try:
                body = request_body(self.model, prompt, options)
                if probing:  # once: the same request unstreamed, to get the server's answer
                    body["stream"] = False
                    body.pop("stream_options", None)
                response = await self._send("/chat/completions", body)
                try:
                    async with contextlib.aclosing(self._events(response, probing)) as events:
                        async for delta in events:
                            seen += 1
                            if delta.error:
                                raise _Broken(
                                    f"the model server reported an error: {delta.error}",
                                    retryable=False,
                                )
                            if delta.text:
                                pieces += 1
                                text = stops.feed(delta.text)
                                if text:
                                    shown.append(text)
                                    yield Chunk(text)
                                if stops.stopped:
                                    finish = "stop"
                                    break
                            usage = delta.usage or usage
                            if delta is DONE:
                                finish = finish or "stop"
                            elif delta.finish_reason is not None:
                                finish = delta.finish_reason
                    if finish is None:
                        raise _Broken(
                            f"the model server at {self.base_url} closed the stream before the "
                            "reply finished",
                            retryable=True,
                        )
                finally:
                    response.close()  # at once, also when the consumer went away
            except _ContextTooLong as error:
                probing = False
                shorter = None if trimmed else drop_oldest_turns(prompt)
                if shorter is None:
                    how = (
                        "also without the older half of the history"
                        if trimmed
                        else "with no history"
                    )
                    raise GenerationError(
                        f"{error}, {how}; set context.window to the server's context length "
                        "(or less), lower generation.max_new_tokens or shorten "
                        "context.system_prompt"
                    ) from error
                log.warning(
                    "%s; retrying once without the %d oldest messages (set context.window to "
                    "the server's context length to avoid this)",
                    error,
                    len(prompt) - len(shorter),
                )
                prompt, trimmed = shorter, True
                continue
            except _Broken as error:
                if finish is not None:
                    break  # the reply had finished; only the end of the stream was lost
                if pieces:
                    raise StreamInterruptedError(
                        f"{error} after {sum(map(len, shown))} characters of the reply; the "
                        "partial reply was kept",
                        "".join(shown),
                        Usage(0, pieces),
                    ) from error
                if not error.retryable:
                    raise
                if not seen and not probed:
                    # Some servers (llama.cpp's) answer a request they cannot stream, a prompt
                    # over their context say, by closing the stream at once: ask once without
                    # streaming, which gives their error (or the whole answer).
                    log.warning("%s without a word; asking once without streaming", error)
                    probing = probed = True
                    continue
                probing = False
                failures = await self._before_retry(failures, _Retryable(str(error)))
                continue
            except _Retryable as error:
                failures = await self._before_retry(failures, error)
                continue
            break
        rest = stops.flush()
        if rest:
            yield Chunk(rest)
        if finish is None:  # pragma: no cover - the loop leaves only with a finish reason
            raise GenerationError("the openai backend lost track of the reply")
        if usage is None:
            counted = await asyncio.to_thread(tokenizer.count_tokens, prompt)
            usage = Usage(counted, pieces)
        yield Chunk("", finish_reason=finish, usage=usage)

    # -- HTTP ------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        key = self.settings.api_key.get_secret_value()
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def _send(self, path: str, body: dict[str, Any] | None) -> aiohttp.ClientResponse:
        """One request: a 200 response (the caller closes it), or an error saying what to
        check; ``_Retryable`` when another try may succeed."""
        session = self._session
        if session is None:
            raise GenerationError("the openai backend is closed")
        url = self.base_url + path
        method = "GET" if body is None else "POST"
        try:
            response = await session.request(method, url, json=body, headers=self._headers())
        except aiohttp.SocketTimeoutError as error:
            raise GenerationError(self._silent_message()) from error
        except (aiohttp.ClientConnectionError, TimeoutError) as error:
            raise _Retryable(
                f"cannot reach the model server at {self.base_url} ({type(error).__name__}: "
                f"{error}); check openai.base_url and that the server is running"
            ) from error
        if response.status == 200:
            return response
        try:
            problem = await read_server_error(response)
            wait = retry_after(response)
        finally:
            response.close()
        raise self._refusal(problem, path, wait)

    def _refusal(self, problem: ServerError, path: str, wait: float | None) -> GenerationError:
        """The error for a server's refusal, saying what to check."""
        where = f"the model server at {self.base_url}"
        if problem.context_too_long:
            return _ContextTooLong(f"{where} finds the prompt too long ({problem})")
        if problem.status in RETRYABLE:
            return _Retryable(f"{where} failed ({problem})", wait)
        if problem.status in (401, 403):
            if self.settings.api_key.get_secret_value():
                return _Refused(
                    f"{where} refused the API key ({problem}); check CHATCORE_OPENAI__API_KEY",
                    problem.status,
                )
            return _Refused(
                f"{where} wants an API key ({problem}); set CHATCORE_OPENAI__API_KEY",
                problem.status,
            )
        if problem.status == 404:
            return _Refused(
                f"{where} does not know the model {self.model!r} or the path {path} "
                f"({problem}); check openai.model (the server's name for the model) and "
                "openai.base_url (it usually ends in /v1)",
                problem.status,
            )
        return _Refused(f"{where} rejected the request ({problem})", problem.status)

    def _silent_message(self) -> str:
        return (
            f"the model server at {self.base_url} sent nothing for "
            f"{self.settings.read_timeout:g} s (openai.read_timeout); it may be overloaded, or "
            "the model slow to start a reply: raise openai.read_timeout"
        )

    async def _events(
        self, response: aiohttp.ClientResponse, whole: bool
    ) -> AsyncGenerator[Any, None]:
        """The reply's events: the stream's, or the one answer of an unstreamed request."""
        if not whole:
            async with contextlib.aclosing(self._read(response)) as events:
                async for delta in events:
                    yield delta
            return
        delta = parse_event(await response.text())
        yield delta
        if delta.finish_reason is None and not delta.error:
            yield DONE

    async def _read(self, response: aiohttp.ClientResponse) -> AsyncGenerator[Any, None]:
        """The response's events; a broken stream raises ``_Broken``."""
        try:
            async with contextlib.aclosing(server_events(response)) as events:
                async for delta in events:
                    yield delta
        except aiohttp.SocketTimeoutError as error:
            raise _Broken(self._silent_message(), retryable=False) from error
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise _Broken(
                f"the model server at {self.base_url} dropped the stream "
                f"({type(error).__name__}: {error})",
                retryable=True,
            ) from error

    async def _before_retry(self, failures: int, error: _Retryable) -> int:
        """Wait before the next try, or raise when no try is left or the wait is too long;
        returns the failures so far."""
        failures += 1
        limit = self.settings.retries
        if failures > limit:
            tries = "once" if limit == 0 else f"{limit + 1} times"
            raise GenerationError(f"{error} (tried {tries}, openai.retries = {limit})") from error
        if error.wait is not None:
            wait = error.wait
            if wait > self.settings.max_retry_wait:
                raise GenerationError(
                    f"{error} and asks to wait {wait:g} s, more than openai.max_retry_wait = "
                    f"{self.settings.max_retry_wait:g}; try again later"
                ) from error
        else:
            wait = self.settings.retry_backoff * 2 ** (failures - 1)
            wait = min(wait * (1 + JITTER * random.random()), self.settings.max_retry_wait)
        log.warning("%s; retry %d of %d in %.1f s", error, failures, limit, wait)
        await self._sleep(wait)
        return failures

    async def _resolve_model(self) -> str:
        """Check the server answers and accepts the key (``GET /models``); the model to use:
        the configured one, or the only one the server lists."""
        failures = 0
        while True:
            try:
                response = await self._send("/models", None)
                try:
                    listed = await response.json(content_type=None)
                finally:
                    response.close()
                break
            except _Retryable as error:
                failures = await self._before_retry(failures, error)
            except _Refused as error:
                if error.status not in (404, 405):
                    raise
                listed = None  # the server has no model list: trust the configuration
                break
            except (aiohttp.ClientError, ValueError):
                listed = None
                break
        data = listed.get("data") if isinstance(listed, dict) else None
        names: list[str] = [
            m["id"] for m in data or [] if isinstance(m, dict) and isinstance(m.get("id"), str)
        ]
        if self.settings.model:
            if names and self.settings.model not in names:
                log.warning(
                    "the model server at %s does not list openai.model = %r (it lists %s); "
                    "requests may fail with HTTP 404",
                    self.base_url,
                    self.settings.model,
                    ", ".join(names[:10]),
                )
            return self.settings.model
        if len(names) == 1:
            return names[0]
        offered = f"it lists {', '.join(names[:10])}" if names else "it lists none"
        raise GenerationError(
            f"openai.model is not set and the model server at {self.base_url} does not serve "
            f"exactly one model ({offered}); set openai.model"
        )
