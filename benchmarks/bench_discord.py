"""Benchmark of the Discord adapter against the tests' fake Discord on 127.0.0.1 (fake model):
the adapter's own latency, requests per streamed reply, and many users at once.
Run: ``.venv/bin/python benchmarks/bench_discord.py``. It prints figures; nothing asserts on them.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fake_discord

from chatcore.app import App, create_app
from chatcore.config import Settings
from chatcore.generation.fake import FakeBackend
from tests.fake_discord import (
    BOT,
    BOT_ID,
    CHANNEL_ID,
    TOKEN,
    FakeDiscord,
    user,
)

MENTION = f"<@{BOT_ID}>"


async def _start(
    server: FakeDiscord, home: str, backend: FakeBackend, **section: object
) -> tuple[App, asyncio.Task[int]]:
    adapters = {"discord": server.settings(**section)}
    settings = Settings(home=home, model={"backend": "fake"}, adapters=adapters)  # type: ignore[arg-type]
    app = await create_app(settings, backend=backend)
    task = asyncio.create_task(app.adapter("discord").run())
    await server.connected()
    return app, task


async def _stop(app: App, task: asyncio.Task[int]) -> None:
    app.request_stop()
    await asyncio.wait_for(task, 30)
    await app.close()


async def latency(home: str, rounds: int = 30) -> list[float]:
    """Milliseconds from a MESSAGE_CREATE sent to the reply's POST received, one at a time."""
    async with FakeDiscord() as server:
        app, task = await _start(server, home, FakeBackend())
        loop = asyncio.get_running_loop()
        times = []
        for i in range(rounds):
            sent = loop.time()
            asked = await server.post(f"{MENTION} ping {i}", mentions=[BOT])
            (reply,) = await server.wait_until(lambda a=asked: server.replies_to(a), "a reply")
            posts = server.calls("POST", rf"/channels/{CHANNEL_ID}/messages")
            posted = next(r for r in posts if r.body["content"] == reply["versions"][0])
            times.append((posted.at - sent) * 1000)
        await _stop(app, task)
    return times


async def streaming(
    home: str, interval: float, chunks: int, delay: float
) -> tuple[int, int, float]:
    """One streamed reply: its POSTs, its PATCHes, and the seconds it took."""
    backend = FakeBackend(delay=delay)
    backend.enqueue([f" w{i}" for i in range(chunks)])
    async with FakeDiscord() as server:
        app, task = await _start(server, home, backend, edit_interval=interval)
        start = time.perf_counter()
        asked = await server.post(f"{MENTION} talk", mentions=[BOT])
        last = f" w{chunks - 1}"
        await server.wait_until(
            lambda: (r := server.replies_to(asked)) and r[-1]["content"].endswith(last),
            "the whole reply",
            seconds=120,
        )
        took = time.perf_counter() - start
        posts = len(server.calls("POST", rf"/channels/{CHANNEL_ID}/messages"))
        edits = len(server.calls("PATCH", rf"/channels/{CHANNEL_ID}/messages/\d+"))
        await _stop(app, task)
    return posts, edits, took


async def many_users(home: str, users: int) -> tuple[float, int]:
    """``users`` people mention the bot at once (one channel, a conversation each): seconds
    until every one has the reply, and the REST requests it took."""
    async with FakeDiscord() as server:
        app, task = await _start(server, home, FakeBackend())
        start = time.perf_counter()
        asked = [
            await server.post(f"{MENTION} hello {i}", author=user(500 + i, f"u{i}"), mentions=[BOT])
            for i in range(users)
        ]
        await server.wait_until(
            lambda: all(
                (r := server.replies_to(a)) and r[0]["content"].startswith("You said")
                for a in asked
            ),
            "every reply",
            seconds=120,
        )
        took = time.perf_counter() - start
        requests = len(server.requests)
        await _stop(app, task)
    return took, requests


async def main() -> None:
    os.environ["DISCORD_TOKEN"] = TOKEN
    with tempfile.TemporaryDirectory() as home:
        times = await latency(home)
        print("mention -> reply POST (fake model, one at a time, 30 messages)")
        print(
            f"  median {statistics.median(times):.1f} ms   p90 "
            f"{statistics.quantiles(times, n=10)[-1]:.1f} ms   max {max(times):.1f} ms"
        )
        print("\nstreamed reply: 200 chunks, 10 ms apart (~2 s of generation)")
        print("  edit_interval   POSTs  PATCHes  seconds")
        for interval in (1.0, 0.5, 0.25):
            posts, edits, took = await streaming(home, interval, 200, 0.01)
            print(f"  {interval:>13.2f}   {posts:>5}  {edits:>7}  {took:>7.2f}")
        print("\nmany users at once (fake model, echo replies)")
        print("  users  seconds  REST requests")
        for users in (10, 50, 100):
            took, requests = await many_users(home, users)
            print(f"  {users:>5}  {took:>7.2f}  {requests:>13}")


if __name__ == "__main__":
    asyncio.run(main())
