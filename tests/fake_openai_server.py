"""A fake OpenAI-compatible server on loopback: streamed chat completions as server-sent
events, scripted per request (replies, errors, drops, silences), recording what it was asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SILENCE_CAP = 10.0
"""Longest a scripted silence lasts (it ends early when the server closes)."""


@dataclass
class Stream:
    """A 200 streamed reply: ``pieces`` as content deltas, then the finish reason and usage.

    ``drop_after``: abort the connection after that many pieces (no finish, no [DONE]).
    ``silent_after``: stop sending (hold the connection open) after that many pieces.
    ``endless``: keep sending pieces (bounded) until the client goes away."""

    pieces: list[str]
    finish: str | None = "stop"
    usage: tuple[int, int] | None = None
    drop_after: int | None = None
    silent_after: int | None = None
    error_after: int | None = None
    endless: bool = False
    done: bool = True


@dataclass
class Fail:
    """A refused request: a status, an OpenAI-style error body and headers."""

    status: int
    message: str = "failed"
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    """One request the server got."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


Scripted = Stream | Fail


class FakeOpenAIServer:
    """Serves ``/v1/chat/completions`` and ``/v1/models``. With nothing scripted it echoes
    "You said: <last user message>" word by word, with usage."""

    def __init__(self, models: list[str] | None = None, *, key: str = "") -> None:
        self.models = ["fake-model"] if models is None else models
        self.key = key
        """When set, requests without ``Authorization: Bearer <key>`` get 401."""
        self.models_status = 200
        self.requests: list[Received] = []
        self.script: deque[Scripted] = deque()
        self.disconnected = asyncio.Event()
        """Set when a client went away while a reply was streaming."""
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def enqueue(self, *items: Scripted) -> None:
        self.script.extend(items)

    @property
    def chats(self) -> list[Received]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/v1"
        return self.base_url

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        return not self.key or request.headers.get("Authorization") == f"Bearer {self.key}"

    async def _models(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Received(request.path, dict(request.headers), {}))
        if not self._authorized(request):
            return _error(Fail(401, "Incorrect API key provided", "invalid_api_key"))
        if self.models_status != 200:
            return _error(Fail(self.models_status, "not here"))
        return web.json_response({"object": "list", "data": [{"id": m} for m in self.models]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Received(request.path, dict(request.headers), body))
        if not self._authorized(request):
            return _error(Fail(401, "Incorrect API key provided", "invalid_api_key"))
        if self.models and body.get("model") not in self.models:
            return _error(Fail(404, f"The model `{body.get('model')}` does not exist"))
        item = self.script.popleft() if self.script else _echo(body)
        if isinstance(item, Fail):
            return _error(item)
        return await self._stream(request, item)

    async def _stream(self, request: web.Request, item: Stream) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        pieces = item.pieces * 1000 if item.endless else item.pieces
        try:
            await _send(response, {"choices": [{"delta": {"role": "assistant"}, "index": 0}]})
            for index, piece in enumerate(pieces):
                if index == item.drop_after:
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                if index == item.silent_after:
                    await _wait(self._closing, SILENCE_CAP)
                    return response
                if index == item.error_after:
                    await _send(response, {"error": {"message": "the engine crashed"}})
                    return response
                delta = {"choices": [{"delta": {"content": piece}, "index": 0}]}
                await _send(response, delta)
                if item.endless:
                    await asyncio.sleep(0.01)
            if item.silent_after is not None and item.silent_after >= len(pieces):
                await _wait(self._closing, SILENCE_CAP)
                return response
            if item.drop_after is not None and item.drop_after >= len(pieces):
                assert request.transport is not None
                request.transport.abort()
                return response
            final = {"choices": [{"delta": {}, "index": 0, "finish_reason": item.finish}]}
            await _send(response, final)
            if item.usage is not None:
                prompt, completion = item.usage
                usage = {"prompt_tokens": prompt, "completion_tokens": completion}
                await _send(response, {"choices": [], "usage": usage})
            if item.done:
                await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            self.disconnected.set()
        return response


async def _send(response: web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(event)}\n\n".encode())


async def _wait(event: asyncio.Event, cap: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), cap)


def _error(fail: Fail) -> web.Response:
    error: dict[str, Any] = {"message": fail.message, "type": "error"}
    if fail.code is not None:
        error["code"] = fail.code
    return web.json_response({"error": error}, status=fail.status, headers=fail.headers)


def _echo(body: dict[str, Any]) -> Stream:
    messages = body.get("messages") or []
    last = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    words = f"You said: {last}".split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    return Stream(pieces, usage=(7, len(pieces)))
