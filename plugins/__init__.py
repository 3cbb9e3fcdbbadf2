"""Built-in plugins: ordinary pluggy plugins, listed in ``chatcore.plugins.DEFAULT_PLUGINS``.

Installed as ``chatcore.builtin``, and importable by that one name only.
"""

if __name__ != "chatcore.builtin":  # e.g. ``import plugins`` from the source tree
    raise ImportError(f"import chatcore.builtin, not {__name__}: each module has one name")
