"""The built-in safety detectors: ``injection``, ``pii``, ``profanity`` and ``length``, each a
``Detector`` with its ``DetectorSpec`` for ``register_filters`` (docs/pipeline.md)."""

from __future__ import annotations

from chatcore.pipeline.safety import injection, length, pii, profanity
from chatcore.pipeline.steps import DetectorSpec

SAFETY_DETECTORS: tuple[DetectorSpec, ...] = (
    length.SPEC,
    injection.SPEC,
    pii.SPEC,
    profanity.SPEC,
)
"""In the order they should run on input: a refused message is refused by the cheapest step."""

__all__ = ["SAFETY_DETECTORS"]
