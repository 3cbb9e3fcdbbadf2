"""Adapters: each translates one platform to and from chatcore events, nothing more.

Installed as ``chatcore.adapters``, and importable by that one name only. Modules here import
each other relatively (``from .discord_text import ...``): mypy checks them as ``adapters.*``.
"""

if __name__ != "chatcore.adapters":  # e.g. ``import adapters`` from the source tree
    raise ImportError(f"import chatcore.adapters, not {__name__}: each module has one name")
