"""What hooks and commands may use, in one object: the configuration and the stores, never the
engine itself (as datasette hands its app to hooks). Plugins take it as the ``services`` argument.

A leaf module apart from the protocols it names, so plugins can import it for type hints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatcore.config import Settings
    from chatcore.memory.base import ConversationStore
    from chatcore.memory.service import Memories
    from chatcore.privacy import Privacy


@dataclass(frozen=True, slots=True)
class Services:
    """The services of a running app."""

    settings: Settings
    """The effective configuration (secrets stay ``SecretStr``)."""
    store: ConversationStore
    """The conversation store: history, preferences, summaries."""
    memories: Memories
    """Long-term memories: remember, recall, list, forget (kept in step with the recall index)."""
    privacy: Privacy
    """A user's own data: export it, erase it all (store, caches, plugins' ``user_erased``)."""
