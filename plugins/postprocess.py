"""Built-in plugin: the post-processing rewriters (``role_markers``, ``repetition``,
``whitespace``, ``code_fences``, ``unfinished``) that clean each reply as it streams, registered
through ``register_filters`` like any plugin's steps (docs/pipeline.md, "Post-processing
steps")."""

from __future__ import annotations

from collections.abc import Callable

from chatcore import hookimpl
from chatcore.pipeline.rewrite import REWRITERS
from chatcore.pipeline.steps import RewriterSpec


@hookimpl
def register_filters(register: Callable[[RewriterSpec], None]) -> None:
    for spec in REWRITERS:
        register(spec)
