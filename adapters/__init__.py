"""Adapters: each translates one platform to and from chatcore events, nothing more.

Installed as ``chatcore.adapters``, and importable by that one name only.
"""

if __name__ != "chatcore.adapters":  # e.g. ``import adapters`` from the source tree
    raise ImportError(f"import chatcore.adapters, not {__name__}: each module has one name")
