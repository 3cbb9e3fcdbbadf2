"""Stop strings on a text stream: release text as soon as it cannot begin a stop string.

Shared by every backend, so a remote backend cuts replies exactly like the local one.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopStringFilter:
    """Feed text pieces in; get back the text that is safe to show.

    Text that might be the start of a stop string is held back until the next piece decides.
    Once a stop string appears, ``stopped`` is True and nothing more is released.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.stopped = False
        self._held = ""

    def feed(self, text: str) -> str:
        """Add ``text``; return what can be shown now."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buffer = self._held + text
        cut = min((i for i in (buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return buffer[:cut]
        hold = max((_overlap(buffer, s) for s in self.stops), default=0)
        self._held = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        """The stream ended: release what was held back."""
        held, self._held = self._held, ""
        return "" if self.stopped else held


def _overlap(text: str, stop: str) -> int:
    """Length of the longest proper prefix of ``stop`` that ``text`` ends with."""
    for size in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:size]):
            return size
    return 0
