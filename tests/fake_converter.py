"""A stand-in for ``python -m chatcore.generation.convert`` in tests: writes a tiny model folder
in milliseconds, or fails, hangs or dies as asked; every run appends its pid to ``--record``.

Run as a script (standard library only), so a fake conversion costs one interpreter start;
``FakeConverter`` builds its command line, as a backend's ``converter``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CONFIG = '{"model_type": "fake", "vocab_size": 256}\n'
WEIGHTS = bytes(range(256)) * 64
TOKENIZER = '{"version": "1.0", "model": {"type": "fake"}}\n'
MODES = ("ok", "garbage", "fail", "hang", "killed")


@dataclass
class FakeConverter:
    """Builds the command line of tests/fake_converter.py; counts its runs in ``record``."""

    record: Path
    mode: str = "ok"
    delay: float = 0.0

    def __call__(self, gguf: Path, out: Path) -> list[str]:
        return [
            sys.executable,
            str(Path(__file__).resolve()),
            f"--mode={self.mode}",
            f"--delay={self.delay}",
            f"--record={self.record}",
            str(gguf),
            str(out),
        ]

    @property
    def pids(self) -> list[int]:
        return [int(p) for p in self.record.read_text().split()] if self.record.exists() else []

    @property
    def runs(self) -> int:
        return len(self.pids)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--record", type=Path)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.record is not None:
        with args.record.open("a") as record:
            record.write(f"{os.getpid()}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model.safetensors").write_bytes(WEIGHTS)  # a half-written folder first
    if args.mode == "hang":
        time.sleep(3600)
    time.sleep(args.delay)
    if args.mode == "fail":
        print("a warning the library printed", file=sys.stderr)
        print("error: cannot convert the model: No space left on device", file=sys.stderr)
        return 1
    if args.mode == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    (args.out / "config.json").write_text("{{{ not json" if args.mode == "garbage" else CONFIG)
    (args.out / "tokenizer.json").write_text(TOKENIZER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
