"""Built-in plugin: the safety detectors (``length``, ``injection``, ``pii``, ``profanity``),
registered through ``register_filters`` like any plugin's steps. Their policies are set per step
and stage in ``[pipeline.steps.NAME]`` (docs/pipeline.md, "Safety steps")."""

from __future__ import annotations

from collections.abc import Callable

from chatcore import hookimpl
from chatcore.pipeline.safety import SAFETY_DETECTORS
from chatcore.pipeline.steps import DetectorSpec


@hookimpl
def register_filters(register: Callable[[DetectorSpec], None]) -> None:
    for spec in SAFETY_DETECTORS:
        register(spec)
