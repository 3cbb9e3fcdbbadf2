"""Shipped configuration files: ``default.toml`` holds every default; the rest are examples."""
