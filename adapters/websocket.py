"""The WebSocket adapter (``chatcore serve``): an aiohttp server with the chat at ``/ws``, the web
page at ``/``, and ``/healthz``, ``/readyz`` and ``/metrics`` for operators.

It only translates between JSON frames and chat events (``websocket_session``); this module
checks who connects (tokens, origins, loopback), serves the page, and starts and stops the server.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from importlib import resources
from typing import Any

import yarl
from aiohttp import WSCloseCode, web
from aiohttp.abc import AbstractAccessLogger

from chatcore import hookimpl
from chatcore.adapter_api import AdapterContext, AdapterStartError

from .websocket_limits import client_address
from .websocket_session import (
    CLOSE_SECONDS,
    LOCAL_USER,
    NOTICES,
    Hub,
    Session,
)
from .websocket_settings import WebSocketSettings, is_loopback, normalize_origin

log = logging.getLogger("chatcore.adapters.websocket")
access_log = logging.getLogger("chatcore.adapters.websocket.access")

HUB = web.AppKey("hub", Hub)
DRAIN_SECONDS = 2.0
"""At shutdown, how long replies in flight get to show how they ended before sockets close."""
FORGET_EVERY = 60.0
"""Seconds between sweeps of the per-address limit state."""

STATIC_FILES = {
    "index.html": "text/html",
    "chat.css": "text/css",
    "chat.js": "text/javascript",
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


# -- the aiohttp application ---------------------------------------------------------------------


def create_web_app(hub: Hub) -> web.Application:
    """The aiohttp application of one server around ``hub``."""
    middlewares = [] if hub.users else [_local_only]
    app = web.Application(middlewares=middlewares)
    app[HUB] = hub
    pages = {name: _read_static(name) for name in STATIC_FILES}
    app.router.add_get("/", _page(pages["index.html"], STATIC_FILES["index.html"]))
    for name in ("chat.css", "chat.js"):
        app.router.add_get(f"/static/{name}", _page(pages[name], STATIC_FILES[name]))
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/whoami", _whoami)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.cleanup_ctx.append(_forget_idle_addresses)
    return app


def _read_static(name: str) -> bytes:
    return resources.files("chatcore.adapters").joinpath("static", name).read_bytes()


def _page(body: bytes, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=body, content_type=content_type, charset="utf-8", headers=PAGE_HEADERS
        )

    return handler


async def _forget_idle_addresses(app: web.Application) -> AsyncIterator[None]:
    """A background sweep, cancelled and awaited on shutdown, that keeps the per-address
    state as small as the clients that are active."""
    limits = app[HUB].limits

    async def sweep() -> None:
        while True:
            await asyncio.sleep(FORGET_EVERY)
            limits.forget_idle()

    task = asyncio.create_task(sweep())
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


@web.middleware
async def _local_only(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """With no tokens the server is for this machine only: refuse requests addressed to any
    other name, so that a web page cannot reach it by pointing its own domain at 127.0.0.1."""
    host = yarl.URL(f"//{request.host}").host or ""
    if not is_loopback(host):
        request.app[HUB].metrics.error(request.app[HUB].name, "not_local")
        raise web.HTTPForbidden(
            text="This chat has no tokens configured and serves only this machine: open it "
            "as http://127.0.0.1 or http://localhost.\n"
        )
    return await handler(request)


def _client_ip(request: web.Request) -> str:
    hub = request.app[HUB]
    forwarded = request.headers.get("X-Forwarded-For")
    return client_address(request.remote, forwarded, hub.settings.trusted_proxies)


def _presented_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token") or None


def _authenticate(request: web.Request, ip: str) -> str:
    """The user id of the request's token (``LOCAL_USER`` with no tokens configured); an
    HTTP error when it has none or a wrong one, or has failed too often."""
    hub = request.app[HUB]
    if not hub.users:
        return LOCAL_USER
    if not hub.limits.login_allowed(ip):
        hub.metrics.error(hub.name, "too_many_auth_failures")
        log.warning("login refused from %s: too many failed logins", ip)
        raise web.HTTPTooManyRequests(
            text="Too many failed logins from your address; wait a minute.\n",
            headers={"Retry-After": "60"},
        )
    presented = _presented_token(request)
    user = None
    if presented is not None:
        given = presented.encode()
        for token, owner in hub.users.items():  # compare with every token, in constant time
            if hmac.compare_digest(given, token.encode()):
                user = owner
    if user is None:
        hub.limits.login_failed(ip)
        hub.metrics.error(hub.name, "unauthorized")
        log.info("login refused from %s: %s token", ip, "no" if presented is None else "a wrong")
        raise web.HTTPUnauthorized(
            text="A valid token is needed: send `Authorization: Bearer TOKEN` or ?token=TOKEN.\n",
            headers={"WWW-Authenticate": 'Bearer realm="chatcore"'},
        )
    return user


def origin_allowed(origin: str | None, host: str, allowed: tuple[str, ...]) -> bool:
    """Whether a browser page from ``origin`` may open the socket: the page's own origin (the
    ``Host`` it was served as), one in ``allowed``, or any with ``*``. No ``Origin`` header
    means no browser: tokens decide."""
    if origin is None:
        return True
    if "*" in allowed:
        return True
    try:
        normalized = normalize_origin(origin)
    except ValueError:
        return False  # "null" (a file or a sandboxed frame) and anything odd
    if normalized in allowed:
        return True
    page = yarl.URL(normalized)
    served_as = yarl.URL(f"//{host}")
    return (page.host, page.explicit_port) == (served_as.host, served_as.explicit_port)


async def _websocket(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    ip = _client_ip(request)
    origin = request.headers.get("Origin")
    if not origin_allowed(origin, request.host, hub.settings.allowed_origins):
        hub.metrics.error(hub.name, "origin_rejected")
        log.info("connection refused from %s: origin %r is not allowed", ip, origin)
        raise web.HTTPForbidden(
            text="This page's origin may not open the chat; see allowed_origins.\n"
        )
    user = _authenticate(request, ip)
    settings = hub.settings
    ws = web.WebSocketResponse(
        max_msg_size=settings.max_message_bytes,
        heartbeat=settings.heartbeat or None,
        compress=False,
        timeout=CLOSE_SECONDS,
    )
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="This is a WebSocket endpoint.\n")
    await ws.prepare(request)
    refused = "shutting_down" if hub.stopping else hub.limits.open_connection(ip)
    if refused is not None:
        hub.metrics.error(hub.name, refused)
        log.info("connection refused from %s as %s: %s", ip, user, refused)
        frame = {"type": "error", "id": None, "code": refused, "text": NOTICES[refused]}
        with suppress(ConnectionError):
            await ws.send_str(json.dumps(frame))
        code = WSCloseCode.GOING_AWAY if refused == "shutting_down" else WSCloseCode.TRY_AGAIN_LATER
        await ws.close(code=code, message=refused.encode())
        return ws
    try:
        await Session(hub, ws, user, ip).serve()
    finally:
        hub.limits.close_connection(ip)
    return ws


async def _whoami(request: web.Request) -> web.Response:
    """For the page: whether its token is accepted, and as whom."""
    user = _authenticate(request, _client_ip(request))
    return web.json_response({"user": user}, headers={"Cache-Control": "no-store"})


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    if hub.stopping:
        return web.Response(status=503, text="shutting down\n")
    if not hub.ready.is_set():
        return web.Response(status=503, text="loading the model\n")
    return web.Response(text="ready\n")


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[HUB].metrics.render(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


class _AccessLogger(AbstractAccessLogger):
    """One line per HTTP request, without the query string (it may hold a token)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %d %.3f s",
            request.remote,
            request.method,
            request.path,
            response.status,
            time,
        )


# -- the adapter ----------------------------------------------------------------------------------


class WebSocketAdapter:
    """Serves the chat until the app stops. ``port`` is the bound port once ``listening`` is
    set (useful with ``port = 0``, a free port)."""

    def __init__(self, context: AdapterContext, *, announce: bool = True) -> None:
        self.context = context
        self.settings: WebSocketSettings = context.settings
        self.metrics = context.metrics
        self.hub = Hub(context.name, self.settings, context.chat, self.metrics)
        self.listening = asyncio.Event()
        self.port: int | None = None
        self.announce = announce

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    async def run(self) -> int:
        settings = self.settings
        if not self.hub.users and not is_loopback(settings.host):
            raise AdapterStartError(
                f"the websocket adapter has no tokens, so it serves only this machine and "
                f"cannot listen on {settings.host}; set "
                'CHATCORE_ADAPTERS__WEBSOCKET__TOKENS=\'{"TOKEN": "USER"}\' or listen on '
                "127.0.0.1"
            )
        runner = web.AppRunner(
            create_web_app(self.hub),
            access_log_class=_AccessLogger,
            access_log=access_log,
            shutdown_timeout=CLOSE_SECONDS,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.host, settings.port)
            await self._listen(site)
            await self._serve_until_stopped()
            self.hub.stopping = True
            await site.stop()  # no new connections
            await self.hub.drain(DRAIN_SECONDS)
            await self.hub.close_all(WSCloseCode.GOING_AWAY, "server shutting down")
        finally:
            self.hub.stopping = True
            await runner.cleanup()
        return 0

    async def _listen(self, site: web.TCPSite) -> None:
        settings = self.settings
        try:
            await site.start()
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                problem = "the port is in use by another program"
            elif error.errno == errno.EACCES:
                problem = "permission denied (ports below 1024 need privileges)"
            else:
                problem = error.strerror or type(error).__name__
            raise AdapterStartError(
                f"the websocket adapter cannot listen on {settings.host} port {settings.port}: "
                f"{problem}; choose another with `chatcore serve --port N` or "
                "CHATCORE_ADAPTERS__WEBSOCKET__PORT"
            ) from None
        self.port = site.port
        self.listening.set()
        who = "token holders" if self.hub.users else f"this machine only, as user {LOCAL_USER!r}"
        log.info("websocket: serving %s (WebSocket at /ws) for %s", self.url, who)
        if self.announce:
            print(f"chatcore: serving the web chat at {self.url} ({who})", file=sys.stderr)
            sys.stderr.flush()

    async def _serve_until_stopped(self) -> None:
        """Load the model in the background (``/healthz`` answers meanwhile, ``/readyz`` says
        503), then serve until the app stops. A model that cannot load ends ``run`` with its
        error."""
        stopping = asyncio.create_task(self.context.stopping.wait())
        loading = asyncio.create_task(self.context.chat.ready())
        try:
            await asyncio.wait({stopping, loading}, return_when=asyncio.FIRST_COMPLETED)
            if loading.done():
                loading.result()
                self.hub.set_ready()
                await stopping
        finally:
            for task in (stopping, loading):
                task.cancel()
            await asyncio.wait({stopping, loading})


@hookimpl
def register_adapters(register: Callable[..., Any]) -> None:
    register("websocket", WebSocketAdapter, settings=WebSocketSettings)
