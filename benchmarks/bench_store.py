"""Benchmark of the durable store: turn-persist latency (an acknowledged, committed ``append``
of one user and one assistant message) and ``history`` latency, on SQLite and optionally on
PostgreSQL. Run: ``.venv/bin/python benchmarks/bench_store.py [--turns 300]
[--postgres postgresql+psycopg://USER@HOST/DB]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from chatcore.events import ChatMessage, ConversationKey
from chatcore.memory.sql import SqlStore


async def measure(url: str, turns: int) -> dict[str, float]:
    store = SqlStore(url, history_limit=200)
    try:
        started = time.perf_counter()
        await store.open()
        opened = time.perf_counter() - started
        key = ConversationKey("bench", "channel", f"user-{time.time_ns()}")
        persist, read = [], []
        for n in range(turns):
            turn = [
                ChatMessage("user", f"question {n} " * 20),
                ChatMessage("assistant", "ok " * 60),
            ]
            started = time.perf_counter()
            await store.append(key, turn)
            persist.append(time.perf_counter() - started)
            started = time.perf_counter()
            await store.history(key)
            read.append(time.perf_counter() - started)
    finally:
        await store.close()
    ms = 1000.0
    return {
        "open+migrate ms": opened * ms,
        "persist p50 ms": statistics.median(persist) * ms,
        "persist p95 ms": statistics.quantiles(persist, n=20)[-1] * ms,
        "history(200) p50 ms": statistics.median(read) * ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--postgres", default="", help="a PostgreSQL URL to measure as well")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        targets = {"sqlite": f"sqlite:///{Path(folder) / 'bench.db'}"}
        if args.postgres:
            targets["postgresql"] = args.postgres
        for name, url in targets.items():
            figures = asyncio.run(measure(url, args.turns))
            shown = ", ".join(f"{label} {value:.2f}" for label, value in figures.items())
            print(f"{name} ({args.turns} turns): {shown}")


if __name__ == "__main__":
    main()
