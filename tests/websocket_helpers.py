"""Helpers for the WebSocket tests: ``serve`` starts the adapter on a free loopback port around
an app on the fake backend (stopped and closed after the test); frames are read with bounds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatcore.adapters.websocket import WebSocketAdapter
from chatcore.app import App
from chatcore.generation.fake import FakeBackend
from tests.conftest import AppFactory, make_settings

TOKENS = '{"secret-1": "alice", "secret-2": "bob"}'
ALICE = {"Authorization": "Bearer secret-1"}
BOB = {"Authorization": "Bearer secret-2"}
WAIT = 15.0
"""Upper bound, in seconds, on any single wait in these tests (they finish far sooner)."""


class GatedBackend(FakeBackend):
    """A fake backend whose ``load`` waits until ``gate`` is set: a model still loading."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = asyncio.Event()

    async def load(self) -> None:
        await self.gate.wait()
        await super().load()


@dataclass
class Served:
    """A running WebSocket adapter and what it runs on."""

    app: App
    adapter: WebSocketAdapter
    task: asyncio.Task[int]
    backend: FakeBackend

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.adapter.port}"

    @property
    def ws_url(self) -> str:
        return f"{self.base}/ws"

    async def stop(self) -> int:
        self.app.request_stop()
        return await asyncio.wait_for(self.task, WAIT)


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(new_app: AppFactory, isolated_env: Path) -> AsyncIterator[Serve]:
    """``await serve(backend=..., wait_ready=True, **websocket_settings)``."""
    running: list[Served] = []

    async def start(
        backend: FakeBackend | None = None, *, wait_ready: bool = True, **section: Any
    ) -> Served:
        backend = backend if backend is not None else FakeBackend()
        options = {"port": 0, "tokens": TOKENS, **section}
        settings = make_settings(isolated_env, adapters={"websocket": options})
        app = await new_app(settings, backend=backend)
        adapter = app.adapter("websocket", announce=False)
        assert isinstance(adapter, WebSocketAdapter)
        task = asyncio.create_task(adapter.run())
        served = Served(app, adapter, task, backend)
        running.append(served)
        await _first(adapter.listening.wait(), task)
        if wait_ready:
            await _first(adapter.hub.ready.wait(), task)
        return served

    try:
        yield start
    finally:
        for served in running:
            served.app.request_stop()
            await asyncio.wait([served.task], timeout=WAIT)
            if not served.task.done():
                served.task.cancel()
                await asyncio.wait([served.task])


async def _first(waiting: Awaitable[Any], task: asyncio.Task[int]) -> None:
    """Wait for ``waiting``; fail if the adapter's task ends first, or after ``WAIT``."""
    waiter = asyncio.ensure_future(waiting)
    done, _ = await asyncio.wait({waiter, task}, timeout=WAIT, return_when="FIRST_COMPLETED")
    if waiter not in done:
        waiter.cancel()
        if task.done():
            task.result()  # raises what the adapter raised
        pytest.fail("the adapter did not get there in time")


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next JSON frame (fails on a close or after ``WAIT``)."""
    message = await ws.receive(timeout=WAIT)
    assert message.type is aiohttp.WSMsgType.TEXT, (message.type, message.data)
    frame = json.loads(message.data)
    assert isinstance(frame, dict)
    return frame


async def connect_ready(
    client: aiohttp.ClientSession, target: Served | str, **kwargs: Any
) -> aiohttp.ClientWebSocketResponse:
    """A connection to a server (or a socket URL), Alice's unless headers are given, past
    its ``ready`` frame."""
    kwargs.setdefault("headers", ALICE)
    ws = await client.ws_connect(target if isinstance(target, str) else target.ws_url, **kwargs)
    frame = await receive(ws)
    assert frame["type"] == "ready", frame
    return ws


async def collect(
    ws: aiohttp.ClientWebSocketResponse, enough: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Frames until ``enough(frames)`` holds (at most 10,000 of them)."""
    frames: list[dict[str, Any]] = []
    for _ in range(10_000):
        frames.append(await receive(ws))
        if enough(frames):
            return frames
    raise AssertionError("too many frames")


async def until_final(ws: aiohttp.ClientWebSocketResponse, id: str) -> list[dict[str, Any]]:
    """Frames up to and including the ``reply`` or ``error`` that ends message ``id``."""
    return await collect(
        ws, lambda frames: frames[-1]["type"] in ("reply", "error") and frames[-1]["id"] == id
    )


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded by ``WAIT``) until ``condition()`` holds."""
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"never happened: {what}")
