"""Built-in plugin: the generation backends that ship with chatcore.

``transformers`` runs a local model (the embedded SmolLM2 by default); ``openai`` talks to any
OpenAI-compatible server (docs/openai.md); ``fake`` is scripted, for tests and demos. The heavy
modules import only when a backend is created.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatcore import hookimpl
from chatcore.config import Settings


def _transformers(settings: Settings) -> Any:
    from chatcore.generation.local import TransformersBackend

    return TransformersBackend.from_settings(settings)


def _openai(settings: Settings) -> Any:
    from chatcore.generation.openai import OpenAIBackend

    return OpenAIBackend.from_settings(settings)


def _fake(settings: Settings) -> Any:
    from chatcore.generation.fake import FakeBackend

    return FakeBackend.from_settings(settings)


@hookimpl
def register_backends(register: Callable[[str, Callable[[Settings], Any]], None]) -> None:
    register("transformers", _transformers)
    register("openai", _openai)
    register("fake", _fake)
