"""Adapters: each translates one platform to and from chatcore events, nothing more."""
