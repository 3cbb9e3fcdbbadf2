"""Helpers that install throw-away plugin distributions (with a real ``chatcore`` entry point)
on ``sys.path`` for one test."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest


def install_plugin(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    entry_name: str,
    source: str,
    *,
    dist_name: str | None = None,
) -> str:
    """Write a module and a dist-info declaring it as the ``chatcore`` entry point
    ``entry_name``; return the module name. Removed from ``sys.modules`` after the test."""
    module = f"plugin_{entry_name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    site = tmp_path / "site-packages"
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist = dist_name or f"chatcore-{entry_name}"
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[chatcore]\n{entry_name} = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, module, raising=False)
    return module
