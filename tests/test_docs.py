"""The examples in docs/plugins.md run as written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def _python_blocks() -> list[str]:
    """The blocks before the Skills section (tests/test_skills.py runs that one)."""
    text = DOCS.read_text().split("## Skills", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


async def test_plugin_example_from_the_docs_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin_source, test_source = _python_blocks()
    (tmp_path / "chatcore_dice.py").write_text(plugin_source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "chatcore_dice", raising=False)
    namespace: dict[str, object] = {}
    exec(compile(test_source, str(DOCS), "exec"), namespace)
    home = tmp_path / "home"
    await namespace["test_roll"](home)  # type: ignore[operator]
