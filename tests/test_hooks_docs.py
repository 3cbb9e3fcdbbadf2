"""Every hook spec is documented in docs/hooks.md and listed in exactly one phase."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from chatcore import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"


def _specs() -> dict[str, object]:
    return {
        name: function
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, "chatcore_spec")
    }


def test_every_hook_has_a_docstring_and_a_phase() -> None:
    specs = _specs()
    assert specs, "no hook specs found"
    phased = [name for names in hookspecs.PHASES.values() for name in names]
    assert sorted(phased) == sorted(specs), "PHASES must list every hook exactly once"
    for name, function in specs.items():
        assert (function.__doc__ or "").strip(), f"hook {name} has no docstring"


def test_every_hook_is_documented_with_its_arguments() -> None:
    text = DOCS.read_text()
    documented = dict(re.findall(r"^### `(\w+)\(([^)]*)\)`$", text, flags=re.MULTILINE))
    for name, function in _specs().items():
        assert name in documented, f"hook {name} is missing from docs/hooks.md"
        arguments = ", ".join(inspect.signature(function).parameters)  # type: ignore[arg-type]
        assert documented[name] == arguments, f"docs/hooks.md shows {name} with other arguments"
    assert set(documented) <= set(_specs()), "docs/hooks.md documents hooks that do not exist"
