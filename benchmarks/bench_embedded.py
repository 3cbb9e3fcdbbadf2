"""Benchmark of the embedded SmolLM2 on the transformers backend: cold starts, time to first
token, decode speed and peak memory. Run: ``.venv/bin/python benchmarks/bench_embedded.py``.

Each measurement runs in a fresh subprocess, so import and load times are what a user sees.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, cast

RESULT = "BENCH-RESULT "
PROMPT = "Write a long, detailed story about a dragon who learns to bake bread."


def _peak_rss_mib() -> float:
    """The peak RSS of this process or of its largest child (the GGUF converter)."""
    peaks = (
        resource.getrusage(who).ru_maxrss
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return max(peaks) / 1024  # KiB on Linux


def _report(data: dict[str, Any]) -> None:
    print(RESULT + json.dumps(data), flush=True)


def _backend(home: str, dtype: Literal["float32", "bfloat16"]) -> Any:
    from chatcore.config import ModelSettings
    from chatcore.generation.local import TransformersBackend

    return TransformersBackend(ModelSettings(dtype=dtype), Path(home))


async def _child_start(home: str) -> None:
    started = time.perf_counter()
    import torch  # noqa: F401  (imported here so the load time below is the load alone)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    backend = _backend(home, "float32")
    imported = time.perf_counter()
    await backend.load()
    loaded = time.perf_counter()
    _report(
        {
            "import_s": imported - started,
            "load_s": loaded - imported,
            "converted": backend.prepared.converted,
            "rss_mib": _peak_rss_mib(),
        }
    )
    await backend.close()


async def _child_decode(
    home: str, dtype: Literal["float32", "bfloat16"], tokens: int, runs: int
) -> None:
    from chatcore.config import GenerationSettings
    from chatcore.generation.types import ChatMessage

    backend = _backend(home, dtype)
    await backend.load()
    messages = [ChatMessage("user", PROMPT)]
    options = GenerationSettings(max_new_tokens=tokens, repetition_penalty=1.0)
    async for _ in backend.stream(messages, GenerationSettings(max_new_tokens=8)):  # warm-up
        pass
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        first: float | None = None
        completion = 0
        async for chunk in backend.stream(messages, options):
            if chunk.text and first is None:
                first = time.perf_counter()
            if chunk.usage is not None:
                completion = chunk.usage.completion_tokens
        ended = time.perf_counter()
        assert first is not None, "no text was generated"
        samples.append(
            {
                "ttft_s": first - started,
                "tokens": completion,
                "decode_tps": (completion - 1) / (ended - first) if ended > first else 0.0,
                "total_s": ended - started,
            }
        )
    _report({"samples": samples, "rss_mib": _peak_rss_mib()})
    await backend.close()


def _spawn(*args: str) -> tuple[dict[str, Any], float]:
    """Run this script in a fresh interpreter; return its report and wall-clock seconds."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"benchmark child {args} failed with exit code {done.returncode}")
    return json.loads(lines[-1][len(RESULT) :]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per decode run")
    parser.add_argument("--runs", type=int, default=3, help="decode runs per dtype (median)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, home, *rest = args.child
        if kind == "start":
            asyncio.run(_child_start(home))
        else:
            dtype = cast(Literal["float32", "bfloat16"], rest[0])
            asyncio.run(_child_decode(home, dtype, args.tokens, args.runs))
        return

    import torch

    print(f"embedded SmolLM2-135M-Instruct, torch {torch.__version__}, ", end="")
    print(f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="chatcore-bench-") as home:
        print("\ncold start (fresh process; import = torch + transformers, load = model ready)")
        print(f"{'start':<28}{'wall s':>8}{'import s':>10}{'load s':>8}{'peak RSS MiB':>14}")
        for label in ("first (GGUF conversion)", "second (cache present)"):
            report, wall = _spawn("start", home)
            print(
                f"{label:<28}{wall:>8.1f}{report['import_s']:>10.1f}{report['load_s']:>8.1f}"
                f"{report['rss_mib']:>14.0f}"
            )
        print(f"\ngreedy decode, {args.tokens} new tokens, median of {args.runs} runs")
        print(f"{'dtype':<10}{'TTFT ms':>9}{'decode tok/s':>14}{'tokens':>8}{'peak RSS MiB':>14}")
        for dtype in ("float32", "bfloat16"):
            report, _ = _spawn(
                "decode", home, dtype, "--tokens", str(args.tokens), "--runs", str(args.runs)
            )
            samples = report["samples"]
            ttft = statistics.median(s["ttft_s"] for s in samples) * 1000
            tps = statistics.median(s["decode_tps"] for s in samples)
            tokens = statistics.median(s["tokens"] for s in samples)
            print(f"{dtype:<10}{ttft:>9.0f}{tps:>14.1f}{tokens:>8.0f}{report['rss_mib']:>14.0f}")


if __name__ == "__main__":
    main()
