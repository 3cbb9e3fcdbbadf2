"""Shipped configuration files: ``default.toml`` holds every default; the rest are examples.

Installed as ``chatcore.defaults``, and importable by that one name only.
"""

if __name__ != "chatcore.defaults":  # e.g. ``import config`` from the source tree
    raise ImportError(f"import chatcore.defaults, not {__name__}: each module has one name")
