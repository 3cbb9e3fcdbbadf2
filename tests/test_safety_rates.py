"""Detection and false-positive rates of the safety detectors on the labelled sets under
tests/data (``pytest -s`` prints the table). Every third record of each set is held out: the
rules were tuned on the others only."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from chatcore.pipeline.safety.injection import InjectionDetector
from chatcore.pipeline.safety.pii import CATEGORIES, PiiDetector
from chatcore.pipeline.steps import Detector

DATA = Path(__file__).parent / "data"
SPLITS = ("tune", "held_out")


def load(name: str) -> list[dict[str, Any]]:
    with (DATA / f"{name}.jsonl").open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def rate(hits: int, total: int) -> float:
    return hits / total if total else 1.0


def test_the_sets_are_as_large_as_the_issue_asks() -> None:
    assert len(load("injection_attacks")) >= 150
    assert len(load("injection_benign")) >= 150
    assert len(load("pii_messages")) >= 200
    for record in load("pii_messages"):
        for label in record["pii"]:
            assert record["text"][label["start"] : label["end"]] == label["value"]
            assert label["category"] in CATEGORIES


@pytest.fixture(scope="module")
def report() -> list[str]:
    lines: list[str] = []
    yield lines
    print("\n" + "\n".join(lines))


def _timed(detector: Detector, texts: list[str]) -> tuple[list[bool], float]:
    began = time.perf_counter()
    flags = [bool(detector.find(text)) for text in texts]
    return flags, (time.perf_counter() - began) / max(1, len(texts)) * 1e6


def test_injection_rates(report: list[str]) -> None:
    detector = InjectionDetector()
    attacks, benign = load("injection_attacks"), load("injection_benign")
    report.append(f"{'injection':28} {'tune':>14} {'held out':>14} {'all':>14}")
    rows: dict[str, list[str]] = {"detected": [], "benign flagged": []}
    speed = []
    for split in (*SPLITS, None):
        a = [r["text"] for r in attacks if split in (None, r["split"])]
        b = [r["text"] for r in benign if split in (None, r["split"])]
        a_flags, a_us = _timed(detector, a)
        b_flags, b_us = _timed(detector, b)
        speed += [a_us, b_us]
        rows["detected"].append(f"{rate(sum(a_flags), len(a)):6.1%} {sum(a_flags):3}/{len(a):<3}")
        rows["benign flagged"].append(
            f"{rate(sum(b_flags), len(b)):6.1%} {sum(b_flags):3}/{len(b):<3}"
        )
        if split is None:
            detected, false_positives = rate(sum(a_flags), len(a)), rate(sum(b_flags), len(b))
    for label, cells in rows.items():
        report.append(f"  {label:26} " + " ".join(f"{c:>14}" for c in cells))
    report.append(f"  {'µs per message':26} {sum(speed) / len(speed):14.0f}")
    styles = Counter(r["style"] for r in attacks)
    missed = Counter(r["style"] for r in attacks if not detector.find(r["text"]))
    report.append(
        "  missed by style: " + ", ".join(f"{s} {missed[s]}/{n}" for s, n in sorted(styles.items()))
    )
    assert detected >= 0.80
    assert false_positives <= 0.05


def test_pii_recall_and_false_positives(report: list[str]) -> None:
    detector = PiiDetector()
    records = load("pii_messages")
    report.append(f"{'pii recall (exact span)':28} {'tune':>14} {'held out':>14} {'all':>14}")
    recall: dict[str, float] = {}
    for category in CATEGORIES:
        cells = []
        for split in (*SPLITS, None):
            total = caught = exact = 0
            for record in records:
                if split not in (None, record["split"]):
                    continue
                findings = detector.find(record["text"])
                for label in record["pii"]:
                    if label["category"] != category:
                        continue
                    total += 1
                    same = [f for f in findings if f.category == category]
                    caught += any(f.start < label["end"] and label["start"] < f.end for f in same)
                    exact += any((f.start, f.end) == (label["start"], label["end"]) for f in same)
            cells.append(f"{rate(caught, total):6.1%} ({rate(exact, total):4.0%})")
            recall[category] = rate(caught, total)
        report.append(f"  {category:26} " + " ".join(f"{c:>14}" for c in cells))
    unlabelled = sum(
        not any(f.start < lab["end"] and lab["start"] < f.end for lab in record["pii"])
        for record in records
        for f in detector.find(record["text"])
    )
    numbers = [r["text"] for r in load("pii_benign")]
    flags, micros = _timed(detector, numbers + [r["text"] for r in records])
    flagged = sum(flags[: len(numbers)])
    report.append(f"  {'unlabelled findings':26} {unlabelled:>14}")
    report.append(
        f"  {'number-rich msgs flagged':26} {rate(flagged, len(numbers)):>14.1%} "
        f"({flagged}/{len(numbers)})"
    )
    report.append(f"  {'µs per message':26} {micros:14.0f}")
    assert recall["email"] >= 0.99
    assert recall["card_number"] >= 0.99
    assert recall["phone"] >= 0.95
    assert recall["ip_address"] >= 0.95
    assert recall["secret"] >= 0.95
    assert rate(flagged, len(numbers)) <= 0.05
    assert unlabelled <= 2
