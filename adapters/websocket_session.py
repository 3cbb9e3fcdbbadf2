"""One WebSocket connection speaking chatcore's JSON protocol (docs/websocket.md), and the
``Hub`` all connections of a server share: readiness, limits, metrics, the open sessions.

Each ``message`` frame becomes a ``Message`` whose reply streams back as ``chunk`` frames and
one ``reply`` or ``error`` frame, tagged with the client's id; ``cancel`` stops a reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from chatcore.adapter_api import ChatService
from chatcore.events import Message, Notice, Reply, ReplyChunk, ReplyError, ReplyEvent
from chatcore.metrics import Metrics, ReplyTracker

from .websocket_limits import Limits, TokenBucket
from .websocket_settings import WebSocketSettings

log = logging.getLogger("chatcore.adapters.websocket")

PLATFORM = "websocket"
DEFAULT_CONVERSATION = "default"
LOCAL_USER = "local"
"""The one user of a server with no tokens (it listens on loopback only)."""
CLOSE_SECONDS = 2.0
"""How long a close handshake may take before the connection is dropped."""
MAX_REJECTED_IN_A_ROW = 100
"""Frames over the rate limit in a row after which the connection is closed (1008)."""
_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,64}$")

STOPPED = "The reply was stopped before it finished."
NOTICES = {
    "bad_json": "Frames must be JSON objects with a type, such as "
    '{"type": "message", "text": "hello"}.',
    "bad_frame": "A message frame needs text (a string); id and conversation, when given, are "
    "1 to 64 letters, digits or . _ : @ -.",
    "binary_not_supported": "Send JSON as text frames; binary frames are not supported.",
    "unknown_type": "Unknown frame type; the types are message and cancel.",
    "duplicate_id": "A reply to a message with this id is still in progress; use a new id.",
    "too_many_pending": "Too many replies in progress on this connection; wait for one to end.",
    "not_ready": "The model is still loading; wait for the ready frame and send again.",
    "shutting_down": "The server is shutting down; reconnect in a moment.",
    "server_full": "The server has too many connections; try again later.",
    "too_many_connections": "Too many connections from your address; close one and retry.",
}


def notice_for_rate(seconds: float) -> str:
    return f"You are sending too fast; wait {max(seconds, 0.1):.1f} s before sending more."


class Hub:
    """What the connections of one server share."""

    def __init__(
        self,
        name: str,
        settings: WebSocketSettings,
        chat: ChatService,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.settings = settings
        self.chat = chat
        self.metrics = metrics
        self.users = settings.users
        self.clock = clock
        self.limits = Limits(
            max_connections=settings.max_connections,
            max_connections_per_ip=settings.max_connections_per_ip,
            messages_per_minute_per_ip=settings.messages_per_minute_per_ip,
            auth_failures_per_minute_per_ip=settings.auth_failures_per_minute_per_ip,
            clock=clock,
        )
        self.ready = asyncio.Event()
        self.stopping = False
        self.sessions: set[Session] = set()

    def set_ready(self) -> None:
        """The model is loaded: tell every open connection."""
        self.ready.set()
        for session in list(self.sessions):
            session.announce_ready()

    def pending(self) -> list[asyncio.Task[None]]:
        """The replies in progress on every connection."""
        return [p.task for s in self.sessions for p in s.pending.values()]

    async def drain(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the replies in progress to end."""
        tasks = self.pending()
        if tasks:
            await asyncio.wait(tasks, timeout=seconds)

    async def close_all(self, code: int, reason: str) -> None:
        """Close every connection with ``code``."""
        sessions = list(self.sessions)
        await asyncio.gather(*(s.close(code, reason) for s in sessions), return_exceptions=True)


@dataclass(eq=False)
class _Pending:
    """A reply in progress."""

    client_id: str
    conversation: str
    message: Message
    task: asyncio.Task[None] = field(init=False)
    started: bool = False
    """Its task began to run: from then on, stopping it means cancelling the task."""
    stopped_by: str | None = None
    """Why we stopped it: ``"client"`` (a cancel frame) or ``"gone"`` (the socket closed)."""
    final_sent: bool = False
    chunks: int = 0
    outcome: str = "no answer"

    def stop(self, reason: str) -> None:
        """Stop the reply. A task cancelled before its first step would never run its own
        clean-up, so one that has not started is only marked: it ends as soon as it starts."""
        if self.stopped_by is None:
            self.stopped_by = reason
            if self.started:
                self.task.cancel()


class _Gone(Exception):
    """The connection closed while a frame was being sent."""


class Session:
    """One open WebSocket: reads frames, answers them, streams replies back."""

    def __init__(self, hub: Hub, ws: web.WebSocketResponse, user: str, ip: str) -> None:
        self.hub = hub
        self.ws = ws
        self.user = user
        self.ip = ip
        self.id = uuid.uuid4().hex[:8]
        self.pending: dict[str, _Pending] = {}
        self.messages = 0
        self._bucket = TokenBucket(hub.settings.messages_per_minute, hub.clock)
        self._rejected_in_a_row = 0
        self._ready_sent = False
        self._background: set[asyncio.Task[Any]] = set()

    # -- the connection ------------------------------------------------------------------------

    async def serve(self) -> None:
        """Answer frames until the client leaves or the server closes the connection."""
        hub = self.hub
        started = time.monotonic()
        hub.sessions.add(self)
        hub.metrics.connections.labels(hub.name).inc()
        log.debug("connection %s opened from %s as %s", self.id, self.ip, self.user)
        if hub.ready.is_set():
            self.announce_ready()
        try:
            async for frame in self.ws:
                if frame.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self._on_frame(frame.data)
                elif frame.type is WSMsgType.ERROR:
                    break  # aiohttp closed it (1009 for a frame over max_message_bytes)
                if self.ws.closed:
                    break
        finally:
            await self._stop_all("gone")
            hub.sessions.discard(self)
            hub.metrics.connections.labels(hub.name).dec()
            background = list(self._background)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            log.info(
                "connection %s from %s as %s closed after %.1f s: %d messages, close code %s",
                self.id,
                self.ip,
                self.user,
                time.monotonic() - started,
                self.messages,
                self.ws.close_code,
            )

    async def close(self, code: int, reason: str) -> None:
        with suppress(Exception):
            await self.ws.close(code=code, message=reason.encode())

    def announce_ready(self) -> None:
        if self._ready_sent or self.ws.closed:
            return
        self._ready_sent = True
        frame = {
            "type": "ready",
            "user": self.user,
            "max_message_bytes": self.hub.settings.max_message_bytes,
            "commands": [{"name": c.name, "help": c.help} for c in self.hub.chat.commands()],
        }
        task = asyncio.create_task(self._send_quietly(frame))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- inbound frames ------------------------------------------------------------------------

    async def _on_frame(self, data: str | bytes) -> None:
        """One data frame: every frame counts against the rate limits, whatever it holds."""
        frame = _parse(data) if isinstance(data, str) else None
        raw_id = frame.get("id") if frame is not None else None
        client_id = raw_id if isinstance(raw_id, str) and _ID.match(raw_id) else None
        wait = self._take_rate()
        if wait:
            await self._refuse(client_id, None, "rate_limited", retry_after=wait)
            return
        self._rejected_in_a_row = 0
        if isinstance(data, bytes):
            await self._refuse(None, None, "binary_not_supported")
        elif frame is None:
            await self._refuse(None, None, "bad_json")
        elif frame.get("type") == "message":
            await self._on_message(frame, client_id)
        elif frame.get("type") == "cancel":
            self._on_cancel(frame)
        else:
            await self._refuse(client_id, None, "unknown_type")

    def _take_rate(self) -> float:
        """0 when this frame is within the limits, else the seconds to wait."""
        if not self._bucket.take():
            return max(self._bucket.retry_after(), 0.001)
        return self.hub.limits.take_message(self.ip)

    async def _on_message(self, frame: dict[str, Any], client_id: str | None) -> None:
        text = frame.get("text")
        conversation = frame.get("conversation", DEFAULT_CONVERSATION)
        raw_id = frame.get("id")
        if (
            not isinstance(text, str)
            or not isinstance(conversation, str)
            or not _ID.match(conversation)
            or (raw_id is not None and client_id is None)
        ):
            await self._refuse(client_id, None, "bad_frame")
            return
        client_id = client_id or uuid.uuid4().hex
        hub = self.hub
        problem = (
            "shutting_down"
            if hub.stopping
            else "not_ready"
            if not hub.ready.is_set()
            else "duplicate_id"
            if client_id in self.pending
            else "too_many_pending"
            if len(self.pending) >= hub.settings.max_pending
            else None
        )
        if problem is not None:
            await self._refuse(client_id, conversation, problem)
            return
        self.messages += 1
        message = Message(
            text=text,
            user=self.user,
            channel=conversation,
            platform=PLATFORM,
            user_name=self.user,
        )
        pending = _Pending(client_id, conversation, message)
        pending.task = asyncio.create_task(self._answer(pending))
        self.pending[client_id] = pending

    def _on_cancel(self, frame: dict[str, Any]) -> None:
        """Stop the reply to ``id``, or every reply of this connection without one. A reply
        that already ended (or an unknown id) is no error: the two may cross on the wire."""
        target = frame.get("id")
        chosen = list(self.pending.values())
        if target is not None:
            chosen = [p for p in chosen if p.client_id == target]
        for pending in chosen:
            pending.stop("client")

    # -- one reply -----------------------------------------------------------------------------

    async def _answer(self, pending: _Pending) -> None:
        """Stream the reply to one message; exactly one ``reply`` or ``error`` frame ends it
        unless the client is gone."""
        pending.started = True
        started = time.monotonic()
        message = pending.message
        try:
            with self.hub.metrics.track(self.hub.name) as tracker:
                try:
                    if pending.stopped_by is None:  # else stopped before it began
                        await self._stream(pending, tracker)
                except asyncio.CancelledError:
                    if pending.stopped_by is None:
                        raise  # not ours: the server is being torn down
                    task = asyncio.current_task()
                    if task is not None:
                        task.uncancel()
                except _Gone:
                    pending.outcome = "client gone"
                except Exception:
                    reference = uuid.uuid4().hex[:8]
                    log.exception("reply to message %s failed (ref %s)", message.id, reference)
                    pending.outcome = f"error internal_error (ref {reference})"
                    text = f"Something went wrong (ref {reference}); it was logged."
                    await self._end_with(
                        pending, tracker, ReplyError(message.id, "internal_error", text)
                    )
                if pending.stopped_by is not None and not pending.final_sent:
                    pending.outcome = f"stopped ({pending.stopped_by})"
                    if pending.stopped_by == "client":
                        await self._end_with(
                            pending, tracker, ReplyError(message.id, "cancelled", STOPPED)
                        )
        finally:
            self.pending.pop(pending.client_id, None)
            log.info(
                "websocket message %s (client id %s, connection %s) in %s: %s, %d chunks, %.2f s",
                message.id,
                pending.client_id,
                self.id,
                message.conversation,
                pending.outcome,
                pending.chunks,
                time.monotonic() - started,
            )

    async def _stream(self, pending: _Pending, tracker: ReplyTracker) -> None:
        """Send the reply's events as frames, as they come."""
        async with aclosing(self.hub.chat.send(pending.message)) as events:
            async for event in events:
                tracker.observe(event)
                pending.chunks += isinstance(event, ReplyChunk)
                if isinstance(event, Reply | ReplyError):
                    pending.final_sent = True
                    pending.outcome = _outcome(event)
                await self._send(self._frame(pending, event))

    async def _end_with(self, pending: _Pending, tracker: ReplyTracker, error: ReplyError) -> None:
        """End a reply that has no final frame yet with ``error`` (if the client is there)."""
        if pending.final_sent:
            return
        pending.final_sent = True
        tracker.observe_error(error.code)
        with suppress(_Gone):
            await self._send(self._frame(pending, error))

    @staticmethod
    def _frame(pending: _Pending, event: ReplyEvent) -> dict[str, Any]:
        base = {"id": pending.client_id, "conversation": pending.conversation}
        if isinstance(event, ReplyChunk):
            return {"type": "chunk", **base, "index": event.index, "text": event.text}
        if isinstance(event, Reply):
            usage = event.usage
            return {
                "type": "reply",
                **base,
                "text": event.text,
                "finish_reason": event.finish_reason,
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                },
            }
        if isinstance(event, Notice):
            return {"type": "notice", **base, "text": event.text}
        return {"type": "error", **base, "code": event.code, "text": event.text}

    async def _stop_all(self, reason: str) -> None:
        """Cancel every reply in progress (their generation stops) and wait for them."""
        tasks = []
        for pending in list(self.pending.values()):
            pending.stop(reason)
            tasks.append(pending.task)
        if tasks:
            await asyncio.wait(tasks)

    # -- outbound frames -----------------------------------------------------------------------

    async def _send(self, frame: dict[str, Any]) -> None:
        """Send one frame; ``_Gone`` when the connection is closed or closing."""
        if self.ws.closed:
            raise _Gone
        try:
            await self.ws.send_str(json.dumps(frame))
        except ConnectionError as error:  # aiohttp's ClientConnectionResetError is one
            raise _Gone from error

    async def _send_quietly(self, frame: dict[str, Any]) -> None:
        with suppress(_Gone):
            await self._send(frame)

    async def _refuse(
        self,
        client_id: str | None,
        conversation: str | None,
        code: str,
        *,
        retry_after: float | None = None,
    ) -> None:
        """Answer a frame that is not taken with an ``error`` frame; the connection stays."""
        self.hub.metrics.error(self.hub.name, code)
        frame: dict[str, Any] = {
            "type": "error",
            "id": client_id,
            "conversation": conversation,
            "code": code,
        }
        if retry_after is not None:
            frame["text"] = notice_for_rate(retry_after)
            frame["retry_after"] = round(retry_after, 3)
        else:
            frame["text"] = NOTICES[code]
        log.info(
            "connection %s (%s as %s): refused a frame (id %s): %s",
            self.id,
            self.ip,
            self.user,
            client_id,
            code,
        )
        await self._send_quietly(frame)
        if code != "rate_limited":
            return
        self._rejected_in_a_row += 1
        if self._rejected_in_a_row >= MAX_REJECTED_IN_A_ROW:
            log.warning(
                "connection %s (%s as %s): %d frames over the rate limit in a row; closing",
                self.id,
                self.ip,
                self.user,
                MAX_REJECTED_IN_A_ROW,
            )
            await self.close(WSCloseCode.POLICY_VIOLATION, "too many frames over the limit")


def _parse(data: str) -> dict[str, Any] | None:
    """A frame's JSON object, or None when it is not one."""
    try:
        frame = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested too deep ("[[[[...")
        return None
    return frame if isinstance(frame, dict) else None


def _outcome(event: Reply | ReplyError) -> str:
    if isinstance(event, Reply):
        return f"replied ({event.finish_reason})"
    return f"error {event.code}"
