"""Benchmark of learning from what users say: time per message of ``learn`` on the labelled
sentences, on long messages and on adversarial repetitions of the rules' own words.
Run: ``.venv/bin/python benchmarks/bench_learn.py [--repeat 20]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from chatcore.memory.learn import learn

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def _labelled() -> list[str]:
    texts: list[str] = []
    for name in ("preferences.jsonl", "facts.jsonl"):
        with (DATA / name).open(encoding="utf-8") as lines:
            texts += [json.loads(line)["text"] for line in lines if line.strip()]
    return texts


CASES: dict[str, Callable[[], list[str]]] = {
    "labelled sentences": _labelled,
    "a 2,000-character paragraph": lambda: ["I live in Lyon and I like jazz. " * 63],
    "a 1 MB paste (only the start is read)": lambda: ["Answer in French. " * 58_000],
    "'call me ' x 100k": lambda: ["call me " * 100_000],
    "'I'm a very ... developer'": lambda: ["I'm a " + "very " * 100_000 + "developer"],
    "'keep it short, ' x 10k": lambda: ["keep it short, " * 10_000],
    "quotes and backticks x 10k": lambda: ["\"'`" * 10_000],
    "'my ' x 100k": lambda: ["my " * 100_000],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"{'case':<42} {'messages':>8} {'median µs/msg':>14} {'max µs/msg':>11}")
    for name, make in CASES.items():
        texts = make()
        per_message: list[float] = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            for text in texts:
                learn(text)
            per_message.append((time.perf_counter() - start) / len(texts) * 1e6)
        print(
            f"{name:<42} {len(texts):>8} {statistics.median(per_message):>14.0f}"
            f" {max(per_message):>11.0f}"
        )


if __name__ == "__main__":
    main()
