"""Built-in plugins: ordinary pluggy plugins, listed in ``chatcore.plugins.DEFAULT_PLUGINS``."""
