"""A fake Discord on 127.0.0.1 for the Discord adapter's tests: the REST routes and the gateway
that discord.py uses, small and readable, recording everything the client does.

REST: login, message send/edit, typing, slash-command sync, interaction responses, a channel,
a channel's messages (its history), 429s and other errors on demand. Gateway (JSON, zlib-stream
when asked): HELLO, IDENTIFY → READY + GUILD_CREATE, heartbeat ACK, RESUME (missed events
replayed) → RESUMED, and what tests inject: dispatches, forced closes, RECONNECT (op 7),
INVALID_SESSION (op 9). A message posted while no client is connected is kept in its channel's
history (and for a RESUME), but a new session (IDENTIFY) does not get it: as on Discord, only
reading the history finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import WSMsgType, web

T = TypeVar("T")

TOKEN = "fake-token"
BOT_ID = 100000000000000001
APP_ID = BOT_ID
GUILD_ID = 200000000000000001
CHANNEL_ID = 300000000000000001
OTHER_CHANNEL_ID = 300000000000000002
DM_CHANNEL_ID = 300000000000000009
USER_ID = 400000000000000001
OTHER_BOT_ID = 400000000000000002
API = "/api/v10"
MESSAGE_CONTENT = 1 << 15


def now() -> str:
    return datetime.now(UTC).isoformat()


def user(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    return {
        "id": str(user_id),
        "username": name,
        "discriminator": "0",
        "global_name": name,
        "avatar": None,
        "bot": bot,
    }


BOT = user(BOT_ID, "chatbot", bot=True)
ALICE = user(USER_ID, "alice")
OTHER_BOT = user(OTHER_BOT_ID, "otherbot", bot=True)


def text_channel(channel_id: int, name: str, guild_id: int = GUILD_ID) -> dict[str, Any]:
    return {
        "id": str(channel_id),
        "type": 0,
        "guild_id": str(guild_id),
        "name": name,
        "position": 0,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": None,
    }


def thread(thread_id: int, owner_id: int, parent_id: int = CHANNEL_ID) -> dict[str, Any]:
    return {
        "id": str(thread_id),
        "type": 11,
        "guild_id": str(GUILD_ID),
        "parent_id": str(parent_id),
        "owner_id": str(owner_id),
        "name": f"thread {thread_id}",
        "message_count": 0,
        "member_count": 1,
        "rate_limit_per_user": 0,
        "thread_metadata": {
            "archived": False,
            "auto_archive_duration": 1440,
            "archive_timestamp": now(),
            "locked": False,
        },
    }


def guild(guild_id: int = GUILD_ID, threads: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    return {
        "id": str(guild_id),
        "name": "Test server",
        "icon": None,
        "owner_id": str(USER_ID),
        "unavailable": False,
        "large": False,
        "member_count": 2,
        "features": [],
        "emojis": [],
        "stickers": [],
        "roles": [
            {
                "id": str(guild_id),
                "name": "@everyone",
                "permissions": "0",
                "position": 0,
                "color": 0,
                "hoist": False,
                "managed": False,
                "mentionable": False,
            }
        ],
        "channels": [
            text_channel(CHANNEL_ID, "general", guild_id),
            text_channel(OTHER_CHANNEL_ID, "random", guild_id),
        ],
        "threads": list(threads),
        "members": [],
        "voice_states": [],
        "presences": [],
    }


def message(
    message_id: int,
    content: str,
    *,
    author: dict[str, Any] = ALICE,
    channel_id: int = CHANNEL_ID,
    guild_id: int | None = GUILD_ID,
    mentions: Iterable[dict[str, Any]] = (),
    mention_everyone: bool = False,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(message_id),
        "channel_id": str(channel_id),
        "author": author,
        "content": content,
        "timestamp": now(),
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": mention_everyone,
        "mentions": list(mentions),
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": False,
        "type": 0,
        "flags": 0,
    }
    if guild_id is not None:
        data["guild_id"] = str(guild_id)
    return data


@dataclass
class Request:
    """One REST request as the fake received it, and the status it answered."""

    method: str
    path: str
    body: Any
    status: int
    at: float
    """When it arrived (the event loop's clock)."""


@dataclass
class Failure:
    """An injected answer: the next ``times`` requests matching ``method`` and ``path`` (a
    regular expression on the path after /api/v10) get ``status`` instead of being served."""

    method: str
    path: str
    status: int
    retry_after: float
    times: int


@dataclass
class _Connection:
    ws: web.WebSocketResponse
    compress: bool
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    deflate: Any = field(default_factory=zlib.compressobj)

    async def send(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload)
        async with self.lock:  # one zlib stream: frames go out in the order compressed
            if self.compress:
                raw = self.deflate.compress(data.encode()) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
                await self.ws.send_bytes(raw)
            else:
                await self.ws.send_str(data)


class FakeDiscord:
    """``async with FakeDiscord() as discord:``; point the adapter at ``api_base`` and
    ``gateway_url``. ``messages`` holds what the bot posted (by id, with every version of its
    text); ``requests`` every REST call; ``gateway_ops`` every opcode the client sent."""

    def __init__(
        self,
        *,
        guilds: Iterable[dict[str, Any]] = (),
        echo: bool = True,
        message_content: bool = True,
    ) -> None:
        self.guilds = list(guilds) or [guild()]
        self.echo = echo
        """Dispatch the bot's own messages back to it, as Discord does."""
        self.message_content = message_content
        """Whether the application may have the Message Content intent (the portal's switch)."""
        self.requests: list[Request] = []
        self.messages: dict[int, dict[str, Any]] = {}
        self.history: dict[int, list[dict[str, Any]]] = {}
        """Per channel, the messages posted there (users' and the bot's), oldest first."""
        self.threads: dict[int, dict[str, Any]] = {}
        """The threads the bot started, by id (in the next GUILD_CREATE, as on Discord)."""
        self.commands: list[dict[str, Any]] = []
        self.gateway_ops: list[int] = []
        self.identifies = 0
        self.resumes = 0
        self._ids = itertools.count(900000000000000001)
        self._failures: list[Failure] = []
        self._changed = asyncio.Event()
        self._live: _Connection | None = None
        self._session = ""
        self._seq = 0
        self._events: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> FakeDiscord:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", API + "/{path:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._live is not None:
            await self._live.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}{API}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    def settings(self, **extra: object) -> dict[str, object]:
        """The adapter section that points at this fake."""
        return {"api_base": self.api_base, "gateway_url": self.gateway_url, **extra}

    # -- what tests look at ---------------------------------------------------------------

    async def wait_until(self, check: Callable[[], T], what: str, seconds: float = 15) -> T:
        """``check()`` once it is truthy; fails the test after ``seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            self._changed.clear()
            result = check()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def connected(self, identifies: int = 1) -> None:
        """Wait until the client has identified ``identifies`` times and is live."""
        await self.wait_until(
            lambda: self.identifies >= identifies and self._live is not None, "the gateway"
        )

    def calls(self, method: str, pattern: str, status: int | None = None) -> list[Request]:
        """The requests to paths matching ``pattern`` (a regular expression)."""
        return [
            r
            for r in self.requests
            if r.method == method
            and re.fullmatch(pattern, r.path)
            and (status is None or r.status == status)
        ]

    def replies_to(self, message_id: int) -> list[dict[str, Any]]:
        """The bot's messages that answer message ``message_id``, and those that follow them
        (a long reply's later parts), in order."""
        found: list[dict[str, Any]] = []
        for posted in self.messages.values():
            ref = posted.get("message_reference") or {}
            answers = str(ref.get("message_id")) == str(message_id)
            follows = found and posted["channel_id"] == found[0]["channel_id"] and not ref
            if answers or follows:
                found.append(posted)
        return found

    def sent_events(self) -> list[dict[str, Any]]:
        """The dispatches of the current gateway session, in order."""
        return list(self._events)

    def fail_next(
        self, method: str, path: str, status: int = 429, retry_after: float = 0.1, times: int = 1
    ) -> None:
        self._failures.append(Failure(method, path, status, retry_after, times))

    # -- what tests do on the gateway -----------------------------------------------------

    async def dispatch(self, event: str, data: dict[str, Any]) -> int:
        """Send a dispatch (op 0) with the next sequence number; kept for a RESUME's replay
        when no client is connected. Returns its sequence number."""
        self._seq += 1
        frame = {"op": 0, "t": event, "s": self._seq, "d": data}
        self._events.append(frame)
        if self._live is not None:
            await self._live.send(frame)
        return self._seq

    async def post(self, content: str, **fields: Any) -> int:
        """A user posts a message (MESSAGE_CREATE); returns its id."""
        message_id = next(self._ids)
        data = message(message_id, content, **fields)
        self.history.setdefault(int(data["channel_id"]), []).append(data)
        await self.dispatch("MESSAGE_CREATE", data)
        return message_id

    async def slash(
        self, name: str, text: str = "", *, channel_id: int = CHANNEL_ID, who: Any = ALICE
    ) -> str:
        """A user runs ``/name text`` (INTERACTION_CREATE); returns the interaction's token."""
        token = f"itoken-{uuid.uuid4().hex[:8]}"
        options = [{"name": "text", "type": 3, "value": text}] if text else []
        data = {
            "id": str(next(self._ids)),
            "application_id": str(APP_ID),
            "type": 2,
            "token": token,
            "version": 1,
            "data": {"id": str(next(self._ids)), "name": name, "type": 1, "options": options},
            "guild_id": str(GUILD_ID),
            "channel_id": str(channel_id),
            "channel": text_channel(channel_id, "general"),
            "member": {
                "user": who,
                "roles": [],
                "joined_at": now(),
                "deaf": False,
                "mute": False,
                "permissions": "0",
                "flags": 0,
            },
            "app_permissions": "0",
            "locale": "en-US",
            "guild_locale": "en-US",
            "attachment_size_limit": 8388608,
            "entitlements": [],
            "authorizing_integration_owners": {},
            "context": 0,
        }
        await self.dispatch("INTERACTION_CREATE", data)
        return token

    async def force_close(self, code: int = 4000) -> None:
        """Drop the gateway connection, as a network failure or Discord would."""
        live, self._live = self._live, None
        if live is not None:
            await live.ws.close(code=code)

    async def send_op(self, op: int, data: Any = None) -> None:
        """Send an opcode (7 RECONNECT, 9 INVALID_SESSION) on the live connection."""
        live = self._live
        assert live is not None, "no client is connected"
        if op == 9 and data is False:
            self._session = ""  # the session is gone: only a new IDENTIFY helps
        if op in (7, 9):
            self._live = None
        await live.send({"op": op, "d": data})

    # -- the gateway ----------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        assert request.query.get("encoding") == "json", request.query
        connection = _Connection(ws, compress=request.query.get("compress") == "zlib-stream")
        await connection.send({"op": 10, "d": {"heartbeat_interval": 45000}})
        async for frame in ws:
            if frame.type is not WSMsgType.TEXT:
                continue
            payload = json.loads(frame.data)
            self.gateway_ops.append(payload["op"])
            if payload["op"] == 1:
                await connection.send({"op": 11})
            elif payload["op"] == 2:
                await self._identify(connection, payload["d"])
            elif payload["op"] == 6:
                await self._resume(connection, payload["d"])
            self._changed.set()
        if self._live is connection:
            self._live = None
        self._changed.set()
        return ws

    async def _identify(self, connection: _Connection, data: dict[str, Any]) -> None:
        if data.get("token") != TOKEN:
            await connection.ws.close(code=4004, message=b"Authentication failed.")
            return
        if data.get("intents", 0) & MESSAGE_CONTENT and not self.message_content:
            await connection.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        self.identifies += 1
        self._session, self._seq, self._events = uuid.uuid4().hex, 0, []
        self._live = connection
        ready = {
            "v": 10,
            "user": BOT,
            "guilds": [{"id": g["id"], "unavailable": True} for g in self.guilds],
            "session_id": self._session,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(APP_ID), "flags": 0},
        }
        await self.dispatch("READY", ready)
        for data_ in self.guilds:
            started = [t for t in self.threads.values() if t["guild_id"] == data_["id"]]
            await self.dispatch("GUILD_CREATE", {**data_, "threads": data_["threads"] + started})

    async def _resume(self, connection: _Connection, data: dict[str, Any]) -> None:
        if not self._session or data.get("session_id") != self._session:
            await connection.send({"op": 9, "d": False})
            return
        self.resumes += 1
        for frame in self._events:
            if frame["s"] > (data.get("seq") or 0):
                await connection.send(frame)
        self._live = connection
        await self.dispatch("RESUMED", {})

    # -- REST -----------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        at = asyncio.get_running_loop().time()
        path = "/" + request.match_info["path"]
        body = await request.json() if request.can_read_body else None
        response = self._injected(request.method, path) or await self._serve(request, path, body)
        self.requests.append(Request(request.method, path, body, response.status, at))
        self._changed.set()
        return response

    def _injected(self, method: str, path: str) -> web.Response | None:
        for failure in self._failures:
            if failure.times and failure.method == method and re.fullmatch(failure.path, path):
                failure.times -= 1
                body = {"message": "You are being rate limited.", "code": 0}
                if failure.status == 429:
                    body.update(retry_after=failure.retry_after, **{"global": False})
                return _json(
                    body,
                    status=failure.status,
                    headers={"Via": "1.1 fake-discord", "Retry-After": str(failure.retry_after)},
                )
        return None

    async def _serve(self, request: web.Request, path: str, body: Any) -> web.Response:
        by_token_in_path = path.startswith(("/interactions/", "/webhooks/"))
        if not by_token_in_path and request.headers.get("Authorization") != f"Bot {TOKEN}":
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        method = request.method
        if method == "GET" and path == "/users/@me":
            return _json(BOT)
        if method == "GET" and path == "/oauth2/applications/@me":
            return _json(_application())
        if method == "GET" and path in ("/gateway", "/gateway/bot"):
            limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
            return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})
        if method == "PUT" and (match := re.fullmatch(r"/applications/\d+/commands", path)):
            self.commands = [
                {**command, "id": str(next(self._ids)), "application_id": str(APP_ID)}
                for command in body
            ]
            return _json(self.commands)
        if method == "POST" and (match := re.fullmatch(r"/channels/(\d+)/typing", path)):
            return web.Response(status=204)
        if method == "POST" and (
            match := re.fullmatch(r"/channels/(\d+)/messages/(\d+)/threads", path)
        ):
            started = {**thread(int(match[2]), BOT_ID, int(match[1])), "name": body["name"]}
            self.threads[int(started["id"])] = started
            await self.dispatch("THREAD_CREATE", {**started, "newly_created": True})
            return _json(started)
        if method == "GET" and (match := re.fullmatch(r"/channels/(\d+)", path)):
            found = self._channel(int(match[1]))
            if found is None:
                return _json({"message": "Unknown Channel", "code": 10003}, status=404)
            return _json(found)
        if method == "GET" and (match := re.fullmatch(r"/channels/(\d+)/messages", path)):
            return self._read_history(int(match[1]), request.query)
        if method == "POST" and (match := re.fullmatch(r"/channels/(\d+)/messages", path)):
            return _json(await self._create(int(match[1]), body))
        if method == "PATCH" and (match := re.fullmatch(r"/channels/\d+/messages/(\d+)", path)):
            return _json(self._edit(int(match[1]), body))
        if method == "POST" and (match := re.fullmatch(r"/interactions/(\d+)/(.+)/callback", path)):
            return _json(self._interaction_response(match[1], match[2], body))
        if method == "PATCH" and (
            match := re.fullmatch(r"/webhooks/\d+/(.+)/messages/@original", path)
        ):
            return _json(self._edit_original(match[1], body))
        if method == "POST" and (match := re.fullmatch(r"/webhooks/\d+/(.+)", path)):
            flags = (body or {}).get("flags", 0)
            return _json(self._store(CHANNEL_ID, body["content"], flags, match[1]))
        return _json({"message": f"fake: no route {method} {path}"}, status=404)

    def _store(self, channel_id: int, content: str, flags: int = 0, token: str = "") -> Any:
        message_id = next(self._ids)
        guild_id = None if channel_id == DM_CHANNEL_ID else GUILD_ID
        data = message(message_id, content, author=BOT, channel_id=channel_id, guild_id=guild_id)
        data.update(flags=flags, versions=[content], interaction_token=token)
        self.messages[message_id] = data
        return data

    def _channel(self, channel_id: int) -> dict[str, Any] | None:
        """A channel as ``GET /channels/{id}`` shows it: a server's channel or thread, a thread
        the bot started, or the direct-message channel with Alice."""
        if channel_id == DM_CHANNEL_ID:
            return {"id": str(DM_CHANNEL_ID), "type": 1, "recipients": [ALICE]}
        for data in self.guilds:
            for found in [*data["channels"], *data["threads"]]:
                if int(found["id"]) == channel_id:
                    return {**found, "guild_id": data["id"]}
        return self.threads.get(channel_id)

    def _read_history(self, channel_id: int, query: Any) -> web.Response:
        """``GET /channels/{id}/messages``: as Discord, ``limit`` (1 to 100, default 50) messages
        newest first: with ``after``, the ones right after that id; with ``before``, the ones
        right before it; else the newest. (discord.py reverses an ``after`` page for
        ``oldest_first`` and goes on after the page's first, newest, message.)"""
        limit = int(query.get("limit", 50))
        if not 1 <= limit <= 100 or "around" in query:
            return _json({"message": "fake: limit 1 to 100, no around", "code": 50035}, status=400)
        posted = sorted(self.history.get(channel_id, []), key=lambda m: int(m["id"]))
        if "after" in query:
            page = [m for m in posted if int(m["id"]) > int(query["after"])][:limit]
        elif "before" in query:
            page = [m for m in posted if int(m["id"]) < int(query["before"])][-limit:]
        else:
            page = posted[-limit:]
        hidden = ("versions", "interaction_token")
        return _json([{k: v for k, v in m.items() if k not in hidden} for m in reversed(page)])

    async def _create(self, channel_id: int, body: dict[str, Any]) -> Any:
        data = self._store(channel_id, body["content"])
        self.history.setdefault(channel_id, []).append(data)
        if body.get("message_reference"):
            data["message_reference"] = body["message_reference"]
        if self.echo:
            await self.dispatch(
                "MESSAGE_CREATE", {k: v for k, v in data.items() if k != "versions"}
            )
        return data

    def _edit(self, message_id: int, body: dict[str, Any]) -> Any:
        data = self.messages[message_id]
        data["content"] = body["content"]
        data["edited_timestamp"] = now()
        data["versions"].append(body["content"])
        return data

    def _interaction_response(self, interaction_id: str, token: str, body: Any) -> Any:
        flags = (body.get("data") or {}).get("flags", 0)
        content = (body.get("data") or {}).get("content", "")
        self._store(CHANNEL_ID, content, flags, token)
        return {
            "interaction": {
                "id": interaction_id,
                "type": 2,
                "response_message_loading": body["type"] == 5,
                "response_message_ephemeral": bool(flags & 64),
            },
            "resource": {"type": body["type"]},
        }

    def _edit_original(self, token: str, body: dict[str, Any]) -> Any:
        original = next(m for m in self.messages.values() if m["interaction_token"] == token)
        return self._edit(int(original["id"]), body)

    def interaction_messages(self, token: str) -> list[dict[str, Any]]:
        """What the bot answered to the interaction with ``token``, in order."""
        return [m for m in self.messages.values() if m["interaction_token"] == token]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON as Discord sends it: discord.py reads a body as JSON only when the content type is
    exactly ``application/json`` (aiohttp's ``json_response`` adds a charset)."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def _application() -> dict[str, Any]:
    return {
        "id": str(APP_ID),
        "name": "chatbot",
        "description": "",
        "icon": None,
        "bot_public": True,
        "bot_require_code_grant": False,
        "owner": ALICE,
        "verify_key": "0" * 64,
        "flags": 0,
        "summary": "",
        "team": None,
        "rpc_origins": [],
    }
