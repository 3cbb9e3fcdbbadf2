"""Benchmark of semantic recall: embedding speed of all-MiniLM-L6-v2 (float32 against bfloat16),
index build time and recall latency over 10k and 100k memories. Run:
``.venv/bin/python benchmarks/bench_recall.py`` (about a minute on 2 cores).

The large indexes hold random unit vectors: a scan costs the same whatever the vectors say, and
embedding 100k texts would take minutes. A final line times a whole recall (embed the message,
then search 100k memories) as the engine would see it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from chatcore.memory.embedder import MiniLMEmbedder, vector_to_bytes
from chatcore.memory.recall import DEFAULT_MIN_SCORE, MemoryIndex, StoredEmbedding

SUBJECTS = ["My sister", "Our neighbour", "My manager", "The vet", "My best friend", "My son"]
VERBS = ["lives in", "works at", "loves", "is moving to", "talks a lot about", "hates"]
OBJECTS = ["Lisbon", "the hospital", "jazz records", "a farm near Cork", "old motorbikes", "tea"]


def sample_texts(count: int) -> list[str]:
    """Memory-like sentences of ten words or so, all different."""
    return [
        f"{SUBJECTS[i % 6]} {VERBS[(i // 6) % 6]} {OBJECTS[(i // 36) % 6]}, note {i}."
        for i in range(count)
    ]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def timed(calls: int, run: Callable[[], object]) -> list[float]:
    """Milliseconds per call of ``run``, ``calls`` times, after one warm-up call."""
    run()
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        run()
        out.append((time.perf_counter() - started) * 1000)
    return out


async def bench_embedding(texts: int) -> MiniLMEmbedder:
    batch = sample_texts(texts)
    import sentence_transformers  # noqa: F401  (so the load times below are the loads alone)

    kept: MiniLMEmbedder | None = None
    for precision in ("float32", "bfloat16"):
        embedder = MiniLMEmbedder(precision=precision)
        started = time.perf_counter()
        await embedder.load()
        load_s = time.perf_counter() - started
        await embedder.embed(batch[:32])
        started = time.perf_counter()
        await embedder.embed(batch)
        rate = texts / (time.perf_counter() - started)
        single: list[float] = []
        for text in batch[:40]:
            started = time.perf_counter()
            await embedder.embed([text])
            single.append((time.perf_counter() - started) * 1000)
        print(
            f"embed {precision:8}: load {load_s:5.2f} s, {rate:6.0f} texts/s in batches of 32, "
            f"one message {statistics.median(single):5.1f} ms (p50)"
        )
        if precision == "bfloat16":
            kept = embedder
        else:
            embedder.close()
    assert kept is not None
    return kept


def bench_index(size: int, dim: int, queries: int, rng: np.random.Generator) -> MemoryIndex:
    vectors = rng.standard_normal((size, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [StoredEmbedding(i + 1, vector_to_bytes(vectors[i]), dim) for i in range(size)]
    started = time.perf_counter()
    index = MemoryIndex.from_rows(dim, rows)
    build_ms = (time.perf_counter() - started) * 1000
    probes = rng.standard_normal((queries, dim)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    position = iter(range(10**9))
    latencies = timed(queries, lambda: index.search(probes[next(position) % queries], 5))
    adds = timed(200, lambda: index.add(size + next(position) + 10, probes[0]))
    print(
        f"index {size:>7,} x {dim}: build from stored bytes {build_ms:7.1f} ms, "
        f"{index.nbytes / 2**20:6.1f} MiB; search top-5 p50 {percentile(latencies, 50):6.2f} ms, "
        f"p99 {percentile(latencies, 99):6.2f} ms; add p50 {percentile(adds, 50) * 1000:5.1f} µs"
    )
    return index


async def bench_end_to_end(embedder: MiniLMEmbedder, index: MemoryIndex, calls: int) -> None:
    messages = [f"Where does my sister live these days, question {i}?" for i in range(calls)]
    latencies = []
    for message in messages:
        started = time.perf_counter()
        vector = (await embedder.embed([message]))[0]
        await asyncio.to_thread(index.search, vector, 5, min_score=DEFAULT_MIN_SCORE)
        latencies.append((time.perf_counter() - started) * 1000)
    print(
        f"recall of one message over {len(index):,} memories (embed + search, bf16): "
        f"p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--texts", type=int, default=512, help="texts per embedding run")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"cores: {os.cpu_count()}")
    embedder = await bench_embedding(args.texts)
    rng = np.random.default_rng(0)
    index = None
    for size in args.sizes:
        index = bench_index(size, embedder.dim, args.queries, rng)
    if index is not None:
        await bench_end_to_end(embedder, index, 50)
    embedder.close()


if __name__ == "__main__":
    asyncio.run(main())
