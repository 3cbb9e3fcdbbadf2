"""How one reply looks on Discord while it streams: a message posted at the first words, edited
no more often than every ``interval`` seconds, continued in a new message at 2,000 characters.

Used by the Discord adapter; it knows Discord messages, never the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import discord

from .discord_text import LIMIT, close_code_block, split_message, split_once

log = logging.getLogger(__name__)

TYPING_EVERY = 8.0
"""Seconds between typing notices (Discord shows one for about ten seconds)."""


EMPTY = "_(no reply)_"
"""Shown when a reply ends with no text at all."""
NOTE_LINE_CHARS = 600
"""A notice's line longer than this is cut, so a few notes fit under a reply."""


class StreamedReply:
    """One reply in a channel. ``append`` text as it comes and ``finish`` it; ``run`` (a task)
    shows it: the first part is posted as a reply to the user's message, then edited with the
    text so far, never sooner than ``interval`` seconds after the previous change ended; the
    last change waits for the interval too. A part that grows past ``limit`` is cut cleanly
    (``discord_text``) and the text goes on in a new message. Discord's errors (``Forbidden``,
    ``NotFound``) end ``run`` with the exception; 429s are retried by discord.py."""

    def __init__(
        self,
        channel: discord.abc.Messageable,
        *,
        reference: discord.MessageReference | None,
        interval: float,
        limit: int = LIMIT,
    ) -> None:
        self.channel = channel
        self.reference = reference
        self.interval = interval
        self.limit = limit
        self.messages: list[discord.Message] = []
        """Every message this reply posted, in order."""
        self._text = ""
        """The text of the message being written (it may start with a reopened code fence)."""
        self._shown = ""
        self._live: discord.Message | None = None
        self._changed = asyncio.Event()
        self._finished = False
        self._shown_at: float | None = None
        """When the last change reached Discord (the event loop's clock)."""

    @property
    def text(self) -> str:
        """Everything appended so far to the message being written."""
        return self._text

    def append(self, text: str) -> None:
        if text and not self._finished:
            self._text += text
            self._changed.set()

    def finish(self, notice: str = "") -> None:
        """No more text: close a code block left open, add ``notice`` (a paragraph of its own)
        and show the end."""
        if not self._finished:
            self._text = close_code_block(self._text)
            if not (self._text.strip() or notice or self.messages):
                notice = EMPTY  # the user must see that the reply ended, even with nothing
            if notice:
                self._text = f"{self._text.rstrip()}\n\n{notice}" if self._text.strip() else notice
            self._finished = True
            self._changed.set()

    async def run(self) -> None:
        """Show the reply until it is finished and its last text is on Discord."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            finished = self._finished
            await self._flush()
            if finished:
                return
            await asyncio.sleep(self.interval)

    async def add_note(self, note: str) -> None:
        """After ``run``: show ``note`` under the reply, in its last message when both fit in
        one, else in new messages after it; like every change, no sooner than ``interval``
        after the previous one."""
        if not note.strip() or not self.messages:
            return
        if self._shown_at is not None:
            wait = self._shown_at + self.interval - asyncio.get_running_loop().time()
            if wait > 0:
                await asyncio.sleep(wait)
        joined = f"{self._shown.rstrip()}\n{note}"
        if self._live is not None and len(joined) <= self.limit:
            await self._show(joined)
            return
        for part in split_message(note, self.limit):
            self._live = None
            await self._show(part)

    async def _flush(self) -> None:
        while len(self._text) > self.limit:
            head, self._text = split_once(self._text, self.limit)
            await self._show(head)
            self._live, self._shown = None, ""  # the next part goes in a new message
        await self._show(self._text)

    async def _show(self, text: str) -> None:
        if not text.strip() or text == self._shown:
            return
        if self._live is None:
            if self.reference is not None:
                self._live = await self.channel.send(text, reference=self.reference)
                self.reference = None  # only the first part answers the user's message
            else:
                self._live = await self.channel.send(text)
            self.messages.append(self._live)
        else:
            self._live = await self._live.edit(content=text)
        self._shown = text
        self._shown_at = asyncio.get_running_loop().time()


def note_text(notices: list[str]) -> str:
    """Notices as Discord shows them under a reply: small grey lines (``-#``) with their
    markdown escaped, since the text comes from what users said (mentions in it never ping:
    the client allows none), each line cut at ``NOTE_LINE_CHARS``."""
    lines = [line.strip() for notice in notices for line in notice.splitlines() if line.strip()]
    lines = [
        line if len(line) <= NOTE_LINE_CHARS else line[:NOTE_LINE_CHARS] + "…" for line in lines
    ]
    return "\n".join(f"-# {discord.utils.escape_markdown(line)}" for line in lines)


async def keep_typing(channel: discord.abc.Messageable) -> None:
    """Show "typing…" in ``channel`` until cancelled (best effort: a refusal only stops it)."""
    with contextlib.suppress(discord.HTTPException):
        while True:
            await channel.typing()
            await asyncio.sleep(TYPING_EVERY)
