"""Benchmark of the engine's own cost per turn: the fake backend (no model, one chunk per word)
answers, so what is measured is routing, prompt building, recall, storing the turn and the
hooks, on the in-memory store and on SQLite. Run:
``.venv/bin/python benchmarks/bench_engine.py [--turns 200] [--memories 1000]``.

Figures are per turn (p50, p95), and for the durable store as a ratio against the in-memory
store measured in the same run: the in-memory store is the engine's own logic, the rest is the
database (two committed writes per turn: the turn, then its token counts).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from chatcore.app import create_app
from chatcore.config import Settings
from chatcore.events import Message, Reply
from chatcore.generation.fake import FakeBackend
from chatcore.memory.base import ConversationStore, UserKey
from chatcore.memory.inmemory import InMemoryConversationStore
from chatcore.plugins import PluginHost

QUESTION = "what should I cook tonight with rice, beans and a little cheese?"


def settings(home: Path) -> Settings:
    return Settings(
        home=str(home),
        model={"backend": "fake"},  # type: ignore[arg-type]
        memory={"embedder": "hashing", "learn": False},  # type: ignore[arg-type]
        context={"window": 2048},  # type: ignore[arg-type]
    )


async def engine_turns(
    home: Path, store: ConversationStore | None, turns: int, memories: int
) -> list[float]:
    """Seconds per turn through ``Engine.handle``, with ``memories`` stored for the user."""
    config = settings(home)
    plugins = PluginHost()
    await plugins.load(config)
    app = await create_app(config, plugins=plugins, backend=FakeBackend(), store=store)
    await app.start()
    try:
        user = UserKey("bench", "user")
        for n in range(memories):
            await app.engine.services.memories.remember(user, f"fact number {n} about the user")
        times = []
        for n in range(turns):
            message = Message(f"{QUESTION} ({n})", "user", "channel", "bench")
            started = time.perf_counter()
            events = [event async for event in app.engine.handle(message)]
            times.append(time.perf_counter() - started)
            assert any(isinstance(event, Reply) for event in events), events
        return times
    finally:
        await app.close()


def figures(label: str, times: list[float], reference: float | None = None) -> str:
    p50 = statistics.median(times)
    p95 = statistics.quantiles(times, n=20)[-1]
    ratio = "" if reference is None else f", {p50 / reference:.1f}x the in-memory store"
    return f"{label}: p50 {p50 * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms per turn{ratio}"


async def main(turns: int, memories: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        memory = await engine_turns(home, InMemoryConversationStore(), turns, 0)
        print(figures(f"engine, in-memory store ({turns} turns)", memory))
        reference = statistics.median(memory)
        sqlite = await engine_turns(home / "a", None, turns, 0)
        print(figures(f"engine, SQLite ({turns} turns)", sqlite, reference))
        recalled = await engine_turns(home / "b", None, turns, memories)
        label = f"engine, SQLite, {memories} memories recalled from ({turns} turns)"
        print(figures(label, recalled, reference))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--memories", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.turns, args.memories))
