"""The WebSocket adapter as operators meet it: ``chatcore serve`` and ``chatcore run websocket``
as real processes (a message, SIGTERM, exit 0; a port in use, exit 2), its secrets, a crashing
neighbour, and a load of 100 clients x 20 messages with nothing lost or crossed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner

from chatcore.app import create_app
from chatcore.cli import app as cli
from chatcore.config import ConfigError, load_settings
from tests.plugin_fixtures import install_plugin
from tests.websocket_helpers import (
    ALICE,
    TOKENS,
    WAIT,
    Serve,
    client,
    connect_ready,
    receive,
    serve,
    until_final,
)

__all__ = ["client", "serve"]  # fixtures

SERVING = re.compile(r"serving the web chat at (http://\S+/)")

CRASHER = """
from chatcore import hookimpl


class Crasher:
    def __init__(self, context):
        self.context = context

    async def run(self):
        raise RuntimeError("crashed on purpose")


@hookimpl
def register_adapters(register):
    register("crasher", Crasher)
"""


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "CHATCORE_MODEL__BACKEND": "fake",
        "CHATCORE_ADAPTERS__WEBSOCKET__TOKENS": TOKENS,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        **extra,
    }


async def _start(
    args: list[str], env: dict[str, str]
) -> tuple[asyncio.subprocess.Process, str, str]:
    """Start ``chatcore ARGS``; return it, the URL it says it serves (bounded wait) and what it
    wrote to standard error until then."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatcore.cli",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    seen = []
    try:
        async with asyncio.timeout(60):
            while line := (await proc.stderr.readline()).decode():
                seen.append(line)
                found = SERVING.search(line)
                if found:
                    return proc, found.group(1), "".join(seen)
    except TimeoutError:
        pass
    proc.kill()
    await proc.wait()
    pytest.fail(f"chatcore {' '.join(args)} never served; stderr: {''.join(seen)[-2000:]}")


async def _stop(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            rest = await proc.stderr.read()
            code = await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("the server did not stop within 30 s of SIGTERM")
    return code, rest.decode()


async def _chat_once(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{url}ws", headers=ALICE)
        assert (await receive(ws))["type"] == "ready"
        await ws.send_json({"type": "message", "id": "p1", "text": "from a test"})
        final = (await until_final(ws, "p1"))[-1]
        await ws.close()
        return final


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["serve", "--port", "0"], {}),
        (["run", "websocket"], {"CHATCORE_ADAPTERS__WEBSOCKET__PORT": "0"}),
        (
            ["run"],
            {
                "CHATCORE_ADAPTERS__WEBSOCKET__PORT": "0",
                "CHATCORE_ADAPTERS__WEBSOCKET__ENABLED": "true",
            },
        ),
    ],
    ids=["serve", "run-websocket", "run-enabled"],
)
async def test_the_server_as_a_real_process_answers_and_stops_on_sigterm(
    args: list[str], extra: dict[str, str]
) -> None:
    proc, url, _ = await _start(args, _env(**extra))
    try:
        final = await _chat_once(url)
        assert final["type"] == "reply" and final["text"] == "You said: from a test"
    finally:
        code, err = await _stop(proc)
    assert code == 0, err
    assert "Traceback" not in err


async def test_the_server_keeps_serving_beside_an_adapter_that_crashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "crasher", CRASHER)
    env = _env(CHATCORE_ADAPTERS__WEBSOCKET__PORT="0")  # after install_plugin: on its path
    proc, url, before = await _start(["run", "websocket", "crasher"], env)
    try:
        final = await _chat_once(url)
        assert final["text"] == "You said: from a test"
    finally:
        code, after = await _stop(proc)
    assert code == 1, after  # the others served on, but a crash is no clean shutdown
    assert "adapter 'crasher' crashed: crashed on purpose" in before + after


def test_a_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "chatcore.cli", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=120,
            check=False,
        )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: adapter 'websocket': the websocket adapter cannot listen on")
    assert f"port {port}: the port is in use" in line and "--port" in line


async def test_tokens_in_a_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "chat.toml"
    config.write_text('[adapters.websocket]\ntokens = \'{"secret-1": "alice"}\'\n')
    settings = load_settings(config)
    with pytest.raises(ConfigError) as refused:
        await create_app(settings)
    (line,) = refused.value.lines
    assert "adapters.websocket.tokens is a secret" in line
    assert "CHATCORE_ADAPTERS__WEBSOCKET__TOKENS" in line and "secret-1" not in line


async def test_bad_tokens_in_the_environment_are_one_line_without_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHATCORE_ADAPTERS__WEBSOCKET__TOKENS", "hunter2-not-json")
    with pytest.raises(ConfigError) as refused:
        await create_app(load_settings())
    (line,) = refused.value.lines
    assert "CHATCORE_ADAPTERS__WEBSOCKET__TOKENS" in line and "JSON object" in line
    assert "hunter2" not in line


def test_config_show_masks_the_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCORE_ADAPTERS__WEBSOCKET__TOKENS", TOKENS)
    shown = CliRunner().invoke(cli, ["config", "show"])
    assert shown.exit_code == 0, shown.output
    assert 'tokens = "********"' in shown.output and "secret-1" not in shown.output


# -- load -----------------------------------------------------------------------------------------

CLIENTS = 100
MESSAGES = 20
WINDOW = 4
"""Messages a client keeps in flight (sent without waiting for their replies)."""


async def _one_client(
    session: aiohttp.ClientSession, url: str, number: int
) -> dict[str, tuple[str, str]]:
    """Send MESSAGES messages, WINDOW at a time; return id -> (chunks joined, reply text)."""
    ws = await connect_ready(session, url, headers=ALICE)
    texts = {f"c{number}-m{n}": f"client {number} message {n}" for n in range(MESSAGES)}
    to_send = list(texts)
    chunks: dict[str, list[str]] = {}
    replies: dict[str, tuple[str, str]] = {}
    in_flight = 0
    while len(replies) < MESSAGES:
        while to_send and in_flight < WINDOW:
            message_id = to_send.pop(0)
            frame = {"type": "message", "id": message_id, "text": texts[message_id]}
            await ws.send_json({**frame, "conversation": f"load-{number}"})
            in_flight += 1
        frame = await receive(ws)
        message_id = frame["id"]
        assert message_id in texts, f"client {number} got a frame for {message_id}"
        assert message_id not in replies, f"a second final frame for {message_id}"
        if frame["type"] == "chunk":
            chunks.setdefault(message_id, []).append(frame["text"])
        else:
            assert frame["type"] == "reply", frame
            replies[message_id] = ("".join(chunks.get(message_id, [])), frame["text"])
            in_flight -= 1
    await ws.close()
    assert all(replies[i][1] == f"You said: {texts[i]}" for i in texts)
    return replies


async def test_100_clients_times_20_messages_lose_duplicate_and_cross_nothing(
    serve: Serve,
) -> None:
    served = await serve()  # the default limits: they must admit this load from one address
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session, asyncio.timeout(WAIT * 4):
        results = await asyncio.gather(
            *(_one_client(session, served.ws_url, n) for n in range(CLIENTS))
        )
    assert sum(len(r) for r in results) == CLIENTS * MESSAGES
    for number, replies in enumerate(results):
        for message_id, (streamed, whole) in replies.items():
            assert message_id.startswith(f"c{number}-")
            assert (
                streamed
                == whole
                == f"You said: client {number} message " + message_id.split("-m")[1]
            )
    assert len(served.backend.calls) == CLIENTS * MESSAGES
    assert served.backend.active == 0
