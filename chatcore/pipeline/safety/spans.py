"""Span helpers the safety detectors share: overlapping findings become one, so the pipeline
never has to redact two pieces of the same text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from chatcore.pipeline.steps import Finding


def resolve_overlaps(findings: Iterable[Finding], rank: Sequence[str] = ()) -> list[Finding]:
    """Findings in text order with no two overlapping. Overlapping findings of one category
    merge into one; of two categories, the one first in ``rank`` wins (an unranked category
    ranks last), then the longer one, and the other is dropped."""
    order = {category: index for index, category in enumerate(rank)}

    def weight(finding: Finding) -> tuple[int, int, int]:
        return (
            order.get(finding.category, len(order)),
            -(finding.end - finding.start),
            finding.start,
        )

    kept: list[Finding] = []
    for finding in sorted(findings, key=weight):
        overlapping = [k for k in kept if k.start < finding.end and finding.start < k.end]
        if finding.end <= finding.start or any(k.category != finding.category for k in overlapping):
            continue
        merged = finding
        for other in overlapping:
            kept.remove(other)
            merged = Finding(
                other.category, min(other.start, merged.start), max(other.end, merged.end)
            )
        kept.append(merged)
    return sorted(kept, key=lambda f: (f.start, f.end))
