"""What a backend can honour: generation settings it cannot are refused at start, one line each.

A value the operator chose (in their file, the environment or in code) that the backend cannot
honour stops the start; a default it cannot honour (``repetition_penalty = 1.1`` is tuned for the
small local model) is only logged, so switching backends needs no other change.
"""

from __future__ import annotations

import logging

from chatcore.config import ConfigError, Settings
from chatcore.generation.types import Backend, Unsupported

log = logging.getLogger(__name__)


def unsupported_settings(backend: Backend, settings: Settings) -> list[Unsupported]:
    """What ``backend`` declares it cannot honour in ``settings.generation`` (nothing when it
    declares nothing: an older third-party backend)."""
    declare = getattr(backend, "unsupported", None)
    if declare is None:
        log.info("backend %r does not declare what it supports; not checked", backend.name)
        return []
    found = declare(settings.generation)
    return list(found)


def check_generation_settings(backend: Backend, settings: Settings) -> None:
    """Raise ``ConfigError``, one line per setting, for chosen values ``backend`` cannot
    honour; warn about those left at their defaults."""
    lines = []
    for problem in unsupported_settings(backend, settings):
        value = getattr(settings.generation, problem.setting, None)
        where = f"generation.{problem.setting} = {value!r}"
        if settings.is_explicit("generation", problem.setting):
            lines.append(
                f"config error: {where}: the {backend.name} backend cannot honour it: "
                f"{problem.reason}"
            )
        else:
            log.warning(  # not silently ignored: said once at start, where operators look
                "%s (the default) is not used by the %s backend: %s",
                where,
                backend.name,
                problem.reason,
            )
    if lines:
        raise ConfigError(lines)
