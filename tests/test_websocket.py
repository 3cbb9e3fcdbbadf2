"""The WebSocket adapter over loopback with aiohttp's client: the JSON protocol (streaming,
cancel, bad frames, ids), who may connect (tokens, origins, loopback), limits and endpoints."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator

import aiohttp
import pytest

from chatcore.adapter_api import AdapterStartError, ChatService, CommandInfo
from chatcore.adapters.websocket import origin_allowed
from chatcore.adapters.websocket_limits import Limits, TokenBucket, client_address
from chatcore.adapters.websocket_session import MAX_REJECTED_IN_A_ROW
from chatcore.adapters.websocket_settings import WebSocketSettings
from chatcore.events import Message, ReplyEvent
from chatcore.generation.fake import FakeBackend
from tests.websocket_helpers import (
    ALICE,
    BOB,
    GatedBackend,
    Serve,
    client,
    collect,
    connect_ready,
    eventually,
    receive,
    serve,
    until_final,
)

__all__ = ["client", "serve"]  # fixtures

LONG = [f" w{i}" for i in range(1000)]


class _BrokenChat:
    """A chat service whose ``send`` fails with an error that must not reach the client."""

    def __init__(self, real: ChatService) -> None:
        self.real = real

    def send(self, message: Message) -> AsyncGenerator[ReplyEvent, None]:
        raise RuntimeError("/secret/path/config.toml exploded")

    def commands(self) -> list[CommandInfo]:
        return self.real.commands()

    async def ready(self) -> None:
        await self.real.ready()


# -- the protocol ---------------------------------------------------------------------------------


async def test_a_reply_streams_as_chunks_and_ends_with_the_whole_text(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve()
    served.backend.enqueue(["Hel", "lo", " there"])
    ws = await client.ws_connect(served.ws_url, headers=ALICE)  # no Origin: not a browser
    ready = await receive(ws)
    assert ready["type"] == "ready" and ready["user"] == "alice"
    assert {"name": "help", "help": "list the commands"} in ready["commands"]
    await ws.send_json({"type": "message", "id": "m1", "text": "hi", "conversation": "c1"})
    frames = await until_final(ws, "m1")
    assert [(f["type"], f.get("text")) for f in frames] == [
        ("chunk", "Hel"),
        ("chunk", "lo"),
        ("chunk", " there"),
        ("reply", "Hello there"),
    ]
    assert all(f["id"] == "m1" and f["conversation"] == "c1" for f in frames)
    assert [f["index"] for f in frames[:3]] == [0, 1, 2]
    assert frames[-1]["finish_reason"] == "stop"
    assert frames[-1]["usage"]["completion_tokens"] == 3
    (call,) = served.backend.calls
    assert call.messages[-1].content == "hi"


async def test_messages_sent_without_waiting_are_answered_in_order_by_id(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve()
    ws = await connect_ready(client, served)
    for n in range(5):
        await ws.send_json({"type": "message", "id": f"q{n}", "text": f"number {n}"})
    frames = await collect(ws, lambda frames: sum(f["type"] == "reply" for f in frames) == 5)
    replies = [(f["id"], f["text"]) for f in frames if f["type"] == "reply"]
    assert replies == [(f"q{n}", f"You said: number {n}") for n in range(5)]


async def test_commands_and_engine_errors_come_back_as_frames(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve()
    ws = await connect_ready(client, served)
    await ws.send_json({"type": "message", "id": "h", "text": "/help"})
    (reply,) = await until_final(ws, "h")
    assert reply["type"] == "reply" and "/reset" in reply["text"]
    await ws.send_json({"type": "message", "id": "e", "text": "\x00\x07 "})
    (error,) = await until_final(ws, "e")
    assert error["code"] == "empty_message"
    assert served.backend.calls == []


async def test_what_was_noted_comes_as_a_notice_frame_after_the_reply(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve()
    ws = await connect_ready(client, served)
    await ws.send_json({"type": "message", "id": "n1", "text": "call me Sam", "conversation": "c"})
    frames = await collect(ws, lambda frames: frames[-1]["type"] == "notice")
    assert [f["type"] for f in frames][-2:] == ["reply", "notice"]
    assert frames[-1] == {
        "type": "notice",
        "id": "n1",
        "conversation": "c",
        "text": "noted: I'll call you Sam — say \"don't call me Sam\" to undo.",
    }
    await ws.send_json({"type": "message", "id": "n2", "text": "hello"})  # nothing noted
    assert [f["type"] for f in await until_final(ws, "n2")][-1] == "reply"
    # A notice of n2 would come before anything of the next message of the conversation,
    # which is handled only once n2 is done.
    await ws.send_json({"type": "message", "id": "n3", "text": "/help"})
    after = await until_final(ws, "n3")
    assert [f["id"] for f in after] == ["n3"], after
    metrics = await (await client.get(f"{served.base}/metrics")).text()
    # A notice is neither a reply nor an error.
    assert 'chatcore_replies_total{adapter="websocket"} 3.0' in metrics
    assert 'chatcore_errors_total{adapter="websocket"' not in metrics
    # Not in flight once the reply frame is out, even while its notices are being made.
    assert 'chatcore_replies_in_flight{adapter="websocket"} 0.0' in metrics


async def test_cancel_stops_the_generation_and_the_socket_stays_usable(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve(FakeBackend(delay=0.01))
    served.backend.enqueue(LONG)
    ws = await connect_ready(client, served)
    await ws.send_json({"type": "message", "id": "long", "text": "go on"})
    assert (await receive(ws))["type"] == "chunk"
    await ws.send_json({"type": "cancel", "id": "long"})
    frames = await until_final(ws, "long")
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "cancelled"
    assert all(f["type"] == "chunk" for f in frames[:-1])
    await eventually(lambda: served.backend.active == 0, "the generation stopped")
    await ws.send_json({"type": "cancel", "id": "long"})  # already ended: no error, no frame
    await ws.send_json({"type": "message", "id": "next", "text": "again"})
    assert (await until_final(ws, "next"))[-1]["text"] == "You said: again"


async def test_a_cancel_right_behind_its_message_still_ends_it_with_cancelled(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve(FakeBackend(delay=0.01))
    for _ in range(5):
        served.backend.enqueue(LONG)  # far longer than the cancel takes to arrive
    ws = await connect_ready(client, served)
    for n in range(5):  # both frames usually arrive together, before the reply's task has run
        await ws.send_json({"type": "message", "id": f"r{n}", "text": "hello"})
        await ws.send_json({"type": "cancel", "id": f"r{n}"})
        final = (await until_final(ws, f"r{n}"))[-1]
        assert (final["type"], final.get("code")) == ("error", "cancelled")
    await eventually(
        lambda: not any(s.pending for s in served.adapter.hub.sessions), "nothing left pending"
    )
    assert served.backend.active == 0


async def test_deeply_nested_json_is_a_bad_json_error_and_the_connection_stays_open(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve(FakeBackend())
    ws = await connect_ready(client, served)
    await ws.send_str("[" * 15_000)  # under the size limit; too deep for the JSON parser
    frame = await ws.receive_json(timeout=10)
    assert (frame["type"], frame["code"]) == ("error", "bad_json")
    await ws.send_json({"type": "message", "id": "after", "text": "still here"})
    assert (await until_final(ws, "after"))[-1]["text"] == "You said: still here"


async def test_cancel_without_an_id_stops_every_reply_of_the_connection(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve(FakeBackend(delay=0.01))
    served.backend.enqueue(LONG)
    served.backend.enqueue(LONG)
    ws = await connect_ready(client, served)
    await ws.send_json({"type": "message", "id": "a", "text": "one", "conversation": "x"})
    await ws.send_json({"type": "message", "id": "b", "text": "two", "conversation": "y"})
    await eventually(lambda: served.backend.active == 2, "both replies generate")
    await ws.send_json({"type": "cancel"})
    frames = await collect(ws, lambda frames: sum(f["type"] == "error" for f in frames) == 2)
    ended = {f["id"]: f["code"] for f in frames if f["type"] == "error"}
    assert ended == {"a": "cancelled", "b": "cancelled"}
    await eventually(lambda: served.backend.active == 0, "the generations stopped")


async def test_a_client_that_drops_mid_reply_stops_its_generation(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve(FakeBackend(delay=0.01))
    served.backend.enqueue(LONG)
    ws = await connect_ready(client, served)
    await ws.send_json({"type": "message", "id": "m", "text": "talk"})
    assert (await receive(ws))["type"] == "chunk"
    assert served.backend.active == 1
    await ws.close()
    await eventually(lambda: served.backend.active == 0, "the generation stopped")
    await eventually(lambda: not served.adapter.hub.sessions, "the session ended")
    metrics = await (await client.get(f"{served.base}/metrics")).text()
    assert 'chatcore_errors_total{adapter="websocket",code="cancelled"} 1.0' in metrics
    assert 'chatcore_replies_in_flight{adapter="websocket"} 0.0' in metrics


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('{"type": "shout", "id": "s1"}', "unknown_type"),
        ('{"type": "message", "id": "t1"}', "bad_frame"),
        ('{"type": "message", "id": "t2", "text": 5}', "bad_frame"),
        ('{"type": "message", "id": "bad id!", "text": "x"}', "bad_frame"),
        ('{"type": "message", "text": "x", "conversation": ""}', "bad_frame"),
    ],
)
async def test_bad_frames_get_an_error_frame_and_the_connection_stays_open(
    serve: Serve, client: aiohttp.ClientSession, raw: str, code: str
) -> None:
    served = await serve()
    ws = await connect_ready(client, served)
    await ws.send_str(raw)
    error = await receive(ws)
    assert error["type"] == "error" and error["code"] == code and error["text"]
    await ws.send_bytes(b"\x00\x01")
    assert (await receive(ws))["code"] == "binary_not_supported"
    await ws.send_json({"type": "message", "id": "ok", "text": "still here"})
    assert (await until_final(ws, "ok"))[-1]["text"] == "You said: still here"
    assert not ws.closed


async def test_a_message_without_an_id_is_answered_under_a_new_one(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve()
    ws = await connect_ready(client, served)
    await ws.send_json({"type": "message", "text": "anonymous"})
    frames = await collect(ws, lambda frames: frames[-1]["type"] == "reply")
    assert len({f["id"] for f in frames}) == 1 and frames[0]["id"]
    assert frames[-1]["text"] == "You said: anonymous"


async def test_an_oversized_frame_closes_the_connection_with_1009(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve(max_message_bytes=1024)
    ws = await connect_ready(client, served)
    await ws.send_json({"type": "message", "id": "big", "text": "x" * 2000})
    closing = await ws.receive(timeout=10)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert ws.close_code == 1009
    assert served.backend.calls == []


async def test_a_duplicate_id_in_flight_is_refused(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve(FakeBackend(delay=0.01))
    served.backend.enqueue(LONG)
    ws = await connect_ready(client, served)
    await ws.send_json({"type": "message", "id": "same", "text": "one"})
    await ws.send_json({"type": "message", "id": "same", "text": "two"})
    for _ in range(2000):  # chunks of the first reply may come first
        frame = await receive(ws)
        if frame["type"] == "error":
            break
    assert (frame["id"], frame["code"]) == ("same", "duplicate_id")
    await ws.send_json({"type": "cancel", "id": "same"})
    assert (await until_final(ws, "same"))[-1]["code"] == "cancelled"


# -- who may connect ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic c2VjcmV0LTE="}],
)
async def test_no_token_or_a_wrong_one_is_401_before_any_model_call(
    serve: Serve, client: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    served = await serve()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(served.ws_url, headers=headers)
    assert refused.value.status == 401
    assert served.backend.calls == []
    whoami = await client.get(f"{served.base}/whoami", headers=headers)
    assert whoami.status == 401


async def test_a_token_in_the_query_is_accepted_and_maps_to_its_user(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve()
    ws = await client.ws_connect(f"{served.ws_url}?token=secret-2")
    assert (await receive(ws))["user"] == "bob"
    whoami = await client.get(f"{served.base}/whoami", headers=BOB)
    assert await whoami.json() == {"user": "bob"}


async def test_each_token_is_its_own_user_and_conversation(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve()
    alice = await connect_ready(client, served, headers=ALICE)
    bob = await connect_ready(client, served, headers=BOB)
    await alice.send_json({"type": "message", "id": "a", "text": "I am Alice"})
    await until_final(alice, "a")
    await bob.send_json({"type": "message", "id": "b", "text": "I am Bob"})
    await until_final(bob, "b")
    second = served.backend.calls[1].messages
    assert [m.content for m in second if m.role == "user"] == ["I am Bob"]


async def test_repeated_wrong_tokens_are_refused_for_a_while(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve(auth_failures_per_minute_per_ip=3)
    for _ in range(3):
        wrong = await client.get(f"{served.base}/whoami", headers={"Authorization": "Bearer no"})
        assert wrong.status == 401
    right = await client.get(f"{served.base}/whoami", headers=ALICE)
    assert right.status == 429 and right.headers["Retry-After"] == "60"


async def test_an_origin_that_is_not_allowed_is_403(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve(allowed_origins=["https://chat.example.com"])
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(served.ws_url, headers=ALICE, origin="https://evil.example")
    assert refused.value.status == 403
    own = await client.ws_connect(served.ws_url, headers=ALICE, origin=served.base)
    assert (await receive(own))["type"] == "ready"
    listed = await client.ws_connect(
        served.ws_url, headers=ALICE, origin="https://chat.example.com"
    )
    assert (await receive(listed))["type"] == "ready"


def test_origin_rules() -> None:
    assert origin_allowed(None, "example.com", ())  # not a browser: the token decides
    assert origin_allowed("https://example.com", "example.com", ())
    assert origin_allowed("http://127.0.0.1:8080", "127.0.0.1:8080", ())
    assert not origin_allowed("http://127.0.0.1:9999", "127.0.0.1:8080", ())
    assert not origin_allowed("https://evil.example", "example.com", ())
    assert not origin_allowed("null", "example.com", ())
    assert origin_allowed(
        "https://app.example.com", "api.example.com", ("https://app.example.com",)
    )
    assert origin_allowed("https://anything.example", "example.com", ("*",))


async def test_without_tokens_it_serves_this_machine_only_as_one_local_user(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve(tokens="")
    ws = await client.ws_connect(served.ws_url)
    assert (await receive(ws))["user"] == "local"
    # A page on another domain pointed at 127.0.0.1 (DNS rebinding) is refused by name.
    rebound = await client.get(f"{served.base}/", headers={"Host": "evil.example:80"})
    assert rebound.status == 403
    assert (await client.get(f"{served.base}/healthz")).status == 200


async def test_without_tokens_it_refuses_to_listen_on_other_interfaces(
    serve: Serve,
) -> None:
    with pytest.raises(AdapterStartError, match=r"no tokens.*0\.0\.0\.0.*TOKENS"):
        await serve(tokens="", host="0.0.0.0")


# -- limits ---------------------------------------------------------------------------------------


async def test_a_connection_over_its_message_rate_gets_rate_limited_frames(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve(messages_per_minute=2)
    ws = await connect_ready(client, served)
    for n in range(2):
        await ws.send_json({"type": "message", "id": f"ok{n}", "text": "hi"})
        await until_final(ws, f"ok{n}")
    await ws.send_json({"type": "message", "id": "over", "text": "hi"})
    (error,) = await until_final(ws, "over")
    assert error["code"] == "rate_limited" and 0 < error["retry_after"] <= 30
    assert "too fast" in error["text"]
    assert len(served.backend.calls) == 2


async def test_an_address_over_its_message_rate_is_limited_across_connections(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve(messages_per_minute_per_ip=3)
    first = await connect_ready(client, served)
    second = await connect_ready(client, served, headers=BOB)
    for n, ws in enumerate([first, second, first]):
        await ws.send_json({"type": "message", "id": f"m{n}", "text": "hi"})
        assert (await until_final(ws, f"m{n}"))[-1]["type"] == "reply"
    await second.send_json({"type": "message", "id": "over", "text": "hi"})
    assert (await until_final(second, "over"))[-1]["code"] == "rate_limited"


async def test_too_many_replies_pending_on_one_connection_are_refused(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve(FakeBackend(delay=0.01), max_pending=1)
    served.backend.enqueue(LONG)
    ws = await connect_ready(client, served)
    await ws.send_json({"type": "message", "id": "first", "text": "one"})
    await ws.send_json({"type": "message", "id": "second", "text": "two"})
    for _ in range(2000):
        frame = await receive(ws)
        if frame["id"] == "second":
            break
    assert frame["code"] == "too_many_pending"
    await ws.send_json({"type": "cancel"})


async def test_connections_over_the_limit_per_address_get_an_error_and_1013(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve(max_connections_per_ip=2)
    kept = [await connect_ready(client, served) for _ in range(2)]
    refused = await client.ws_connect(served.ws_url, headers=ALICE)
    frame = await receive(refused)
    assert frame["code"] == "too_many_connections"
    closing = await refused.receive(timeout=10)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert refused.close_code == 1013
    await kept[0].close()
    await eventually(lambda: served.adapter.hub.limits.connections == 1, "one slot free")
    assert (await receive(await client.ws_connect(served.ws_url, headers=ALICE)))["type"] == (
        "ready"
    )


def test_the_default_limits_admit_100_connections_and_1000_messages_a_minute_per_address() -> None:
    now = [0.0]
    defaults = WebSocketSettings()
    limits = Limits(
        max_connections=defaults.max_connections,
        max_connections_per_ip=defaults.max_connections_per_ip,
        messages_per_minute_per_ip=defaults.messages_per_minute_per_ip,
        auth_failures_per_minute_per_ip=defaults.auth_failures_per_minute_per_ip,
        clock=lambda: now[0],
    )
    assert all(limits.open_connection("10.0.0.1") is None for _ in range(100))
    connections = [TokenBucket(defaults.messages_per_minute, lambda: now[0]) for _ in range(100)]
    for n in range(1000):  # 1,000 messages in one minute, spread over the connections
        now[0] = n * 0.06
        assert connections[n % 100].take()
        assert limits.take_message("10.0.0.1") == 0.0


def test_idle_addresses_are_forgotten() -> None:
    now = [0.0]
    limits = Limits(10, 10, 10, 10, clock=lambda: now[0])
    limits.take_message("10.0.0.1")
    assert limits.open_connection("10.0.0.2") is None
    assert limits.forget_idle() == 0
    now[0] = 60.0
    assert limits.forget_idle() == 1 and limits.tracked() == 1


def test_the_client_address_behind_a_trusted_proxy() -> None:
    trusted = ["10.0.0.0/8"]
    assert client_address("10.0.0.5", "203.0.113.7, 10.0.0.9", trusted) == "203.0.113.7"
    assert client_address("198.51.100.1", "203.0.113.7", trusted) == "198.51.100.1"
    assert client_address("10.0.0.5", "not-an-ip", trusted) == "10.0.0.5"
    assert client_address("10.0.0.5", "203.0.113.7", []) == "10.0.0.5"


# -- endpoints ------------------------------------------------------------------------------------


async def test_health_and_readiness_while_the_model_loads(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    backend = GatedBackend()
    served = await serve(backend, wait_ready=False)
    assert (await client.get(f"{served.base}/healthz")).status == 200
    loading = await client.get(f"{served.base}/readyz")
    assert loading.status == 503
    ws = await client.ws_connect(served.ws_url, headers=ALICE)
    await ws.send_json({"type": "message", "id": "early", "text": "hello?"})
    (early,) = await until_final(ws, "early")
    assert early["code"] == "not_ready"
    backend.gate.set()
    assert (await receive(ws))["type"] == "ready"
    assert (await client.get(f"{served.base}/readyz")).status == 200


async def test_metrics_in_the_prometheus_text_format(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve()
    served.backend.enqueue(["a", "b", "c"])
    ws = await connect_ready(client, served)
    await ws.send_json({"type": "message", "id": "1", "text": "count me"})
    await until_final(ws, "1")
    await ws.send_str("oops")
    await receive(ws)
    await client.get(f"{served.base}/whoami")  # no token
    response = await client.get(f"{served.base}/metrics")
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await response.text()
    for line in (
        'chatcore_messages_total{adapter="websocket"} 1.0',
        'chatcore_replies_total{adapter="websocket"} 1.0',
        'chatcore_errors_total{adapter="websocket",code="bad_json"} 1.0',
        'chatcore_errors_total{adapter="websocket",code="unauthorized"} 1.0',
        'chatcore_time_to_first_token_seconds_count{adapter="websocket"} 1.0',
        'chatcore_tokens_per_second_count{adapter="websocket"} 1.0',
        'chatcore_replies_in_flight{adapter="websocket"} 0.0',
        'chatcore_connections{adapter="websocket"} 1.0',
    ):
        assert line in text.splitlines(), line


async def test_the_page_and_its_files_are_served_with_a_strict_policy(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve()
    page = await client.get(f"{served.base}/")
    assert page.status == 200 and page.content_type == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    html = await page.text()
    assert '<meta name="viewport"' in html and "http" not in html.replace("http-equiv", "")
    script = await (await client.get(f"{served.base}/static/chat.js")).text()
    assert "innerHTML" not in script and "textContent" in script
    assert (await client.get(f"{served.base}/static/chat.css")).status == 200
    assert (await client.get(f"{served.base}/static/../websocket.py")).status == 404


async def test_one_log_line_per_message_and_connection_with_the_conversation_and_ids(
    serve: Serve, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatcore.adapters.websocket")
    served = await serve()
    ws = await connect_ready(client, served)
    await ws.send_json({"type": "message", "id": "log-me", "text": "hi", "conversation": "c9"})
    await until_final(ws, "log-me")
    await ws.close()
    await eventually(lambda: not served.adapter.hub.sessions, "the session ended")
    lines = [r.getMessage() for r in caplog.records if r.name == "chatcore.adapters.websocket"]
    (message_line,) = [line for line in lines if "client id log-me" in line]
    assert "websocket:c9:alice" in message_line and "replied (stop)" in message_line
    assert any("as alice closed after" in line for line in lines)


async def test_an_unexpected_failure_is_a_reference_never_the_exception_text(
    serve: Serve, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    served = await serve()
    served.adapter.hub.chat = _BrokenChat(served.adapter.hub.chat)
    ws = await connect_ready(client, served)
    await ws.send_json({"type": "message", "id": "x", "text": "hi"})
    (error,) = await until_final(ws, "x")
    assert error["code"] == "internal_error"
    assert "secret" not in json.dumps(error) and "ref " in error["text"]
    reference = error["text"].split("ref ")[1].split(")")[0]
    assert any(reference in r.getMessage() for r in caplog.records)


async def test_a_shutdown_with_a_reply_in_flight_ends_it_then_closes_with_1001(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve(FakeBackend(delay=0.01))
    served.backend.enqueue(LONG)
    ws = await connect_ready(client, served)
    await ws.send_json({"type": "message", "id": "m", "text": "long one"})
    assert (await receive(ws))["type"] == "chunk"
    stopping = asyncio.create_task(served.stop())
    frames = await until_final(ws, "m")
    assert frames[-1]["code"] == "cancelled" and "shutting down" in frames[-1]["text"]
    closing = await ws.receive(timeout=10)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert ws.close_code == 1001
    assert await stopping == 0


async def test_a_message_during_shutdown_is_refused_with_shutting_down(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve()
    ws = await connect_ready(client, served)
    served.adapter.hub.stopping = True  # the moment between the signal and the sockets closing
    await ws.send_json({"type": "message", "id": "late", "text": "hello"})
    (error,) = await until_final(ws, "late")
    assert error["code"] == "shutting_down"
    assert (await client.get(f"{served.base}/readyz")).status == 503


async def test_every_frame_counts_against_the_rate_and_a_flood_is_closed_with_1008(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    served = await serve(messages_per_minute=1)
    ws = await connect_ready(client, served)
    await ws.send_str("garbage")
    assert (await receive(ws))["code"] == "bad_json"
    for _ in range(MAX_REJECTED_IN_A_ROW):
        await ws.send_str("garbage")
    codes = set()
    for _ in range(MAX_REJECTED_IN_A_ROW + 1):
        message = await ws.receive(timeout=10)
        if message.type is not aiohttp.WSMsgType.TEXT:
            break
        codes.add(json.loads(message.data)["code"])
    assert codes == {"rate_limited"}
    assert ws.close_code == 1008


def test_ipv6_addresses_share_the_limits_of_their_64_network() -> None:
    from chatcore.adapters.websocket_limits import limit_key

    assert limit_key("2001:db8:1:2:aaaa::1") == limit_key("2001:db8:1:2:bbbb::2")
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")
    assert limit_key("::ffff:192.0.2.7") == limit_key("192.0.2.7") == "192.0.2.7"
