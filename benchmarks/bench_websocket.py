"""Benchmark of the WebSocket adapter on the fake backend: messages per second and latency
percentiles for many concurrent clients over loopback. Run: ``make bench`` or
``.venv/bin/python benchmarks/bench_websocket.py [--clients 100 --messages 20 --window 1]``.

The server is a real ``chatcore serve`` process (its limits raised so that they do not
throttle the benchmark); the clients run in this process with aiohttp's client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import aiohttp

TOKEN = "bench-token-0123456789"
SERVING = re.compile(r"serving the web chat at (http://\S+/)")


@dataclass
class Run:
    """The measurements of one configuration."""

    clients: int
    messages: int
    window: int
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    """Seconds from sending a message to its final ``reply`` frame."""
    first_chunk: list[float] = field(default_factory=list)
    """Seconds from sending a message to its first ``chunk`` frame."""
    errors: int = 0


async def _client(session: aiohttp.ClientSession, url: str, run: Run, name: str) -> None:
    async with session.ws_connect(f"{url}ws", headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        ready = json.loads((await ws.receive(timeout=60)).data)
        assert ready["type"] == "ready", ready
        queue = [f"{name}-{n}" for n in range(run.messages)]
        sent: dict[str, float] = {}
        done = 0
        while done < run.messages:
            while queue and len(sent) < run.window:
                message_id = queue.pop(0)
                sent[message_id] = time.perf_counter()
                frame = {"type": "message", "id": message_id, "text": f"hello {message_id}"}
                await ws.send_json({**frame, "conversation": name})
            frame = json.loads((await ws.receive(timeout=60)).data)
            now = time.perf_counter()
            message_id = frame["id"]
            if frame["type"] == "chunk" and frame["index"] == 0:
                run.first_chunk.append(now - sent[message_id])
            elif frame["type"] in ("reply", "error"):
                run.latencies.append(now - sent.pop(message_id))
                run.errors += frame["type"] == "error"
                done += 1


async def _measure(url: str, run: Run, tag: str) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(
            *(_client(session, url, run, f"{tag}-c{n}") for n in range(run.clients))
        )
        run.wall_s = time.perf_counter() - started


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _serve(home: str) -> tuple[asyncio.subprocess.Process, str]:
    prefix = "CHATCORE_ADAPTERS__WEBSOCKET__"
    env = {
        **os.environ,
        "CHATCORE_HOME": home,
        "CHATCORE_MODEL__BACKEND": "fake",
        prefix + "TOKENS": json.dumps({TOKEN: "bench"}),
        prefix + "MESSAGES_PER_MINUTE": "1000000",
        prefix + "MESSAGES_PER_MINUTE_PER_IP": "1000000",
        prefix + "MAX_CONNECTIONS_PER_IP": "10000",
        prefix + "MAX_PENDING": "1000",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatcore.cli",
        "serve",
        "--port",
        "0",
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        env=env,
    )
    assert proc.stderr is not None
    async with asyncio.timeout(120):
        while line := (await proc.stderr.readline()).decode():
            found = SERVING.search(line)
            if found:
                return proc, found.group(1)
    raise RuntimeError("the server did not start")


async def main(configs: list[tuple[int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as home:
        proc, url = await _serve(home)
        try:
            await _measure(url, Run(10, 5, 1), "warmup")
            print(
                f"{'clients':>7} {'msgs':>5} {'window':>6} {'messages/s':>10} "
                f"{'p50 ms':>7} {'p99 ms':>7} {'first p50':>9} {'first p99':>9} {'errors':>6}"
            )
            for number, (clients, messages, window) in enumerate(configs):
                run = Run(clients, messages, window)
                await _measure(url, run, f"run{number}")
                total = clients * messages
                print(
                    f"{clients:>7} {messages:>5} {window:>6} {total / run.wall_s:>10.0f} "
                    f"{_percentile(run.latencies, 0.5) * 1000:>7.1f} "
                    f"{_percentile(run.latencies, 0.99) * 1000:>7.1f} "
                    f"{statistics.median(run.first_chunk) * 1000:>9.1f} "
                    f"{_percentile(run.first_chunk, 0.99) * 1000:>9.1f} {run.errors:>6}",
                    flush=True,
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, help="concurrent clients (one configuration)")
    parser.add_argument("--messages", type=int, default=20, help="messages per client")
    parser.add_argument("--window", type=int, default=1, help="messages in flight per client")
    args = parser.parse_args()
    if args.clients:
        chosen = [(args.clients, args.messages, args.window)]
    else:
        chosen = [(1, 200, 1), (100, 20, 1), (100, 20, 4), (500, 10, 1)]
    asyncio.run(main(chosen))
