"""The prompt builder: gathers what goes into one prompt (the rolling summary and the history it
does not cover, the user's preferences, recalled memories, what plugins add to the system
prompt) and fits it into the context window with the ``ContextBuilder``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from chatcore.config import Settings
from chatcore.context import ContextBuilder, Prompt, Sections
from chatcore.events import ChatMessage, Message
from chatcore.memory.base import ConversationStore, Summary, UserKey
from chatcore.memory.learn import prompt_lines
from chatcore.memory.service import Memories
from chatcore.memory.summary import RollingSummaries
from chatcore.plugins import PluginHost
from chatcore.services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PromptPlan:
    """A prompt and what it was built from, which the turn's summary update needs."""

    prompt: Prompt
    summary: Summary | None
    """The conversation's rolling summary when the prompt was built (None when off or none)."""
    history: list[ChatMessage]
    """The stored messages the summary does not cover, oldest first."""


class PromptBuilder:
    """Builds the prompt for one message. ``build`` raises ``MessageTooLongError`` (the user's
    to fix) and ``SystemPromptTooLongError`` (the operator's: plugins added too much)."""

    def __init__(
        self,
        settings: Settings,
        context: ContextBuilder,
        store: ConversationStore,
        memories: Memories,
        summaries: RollingSummaries,
        plugins: PluginHost,
        services: Services,
    ) -> None:
        self.settings = settings
        self.context = context
        self.store = store
        self.memories = memories
        self.summaries = summaries
        self.plugins = plugins
        self.services = services

    async def build(self, message: Message) -> PromptPlan:
        key = message.conversation
        # What the summary covers is not repeated: the prompt gets only the newer messages.
        summary, history = await self.summaries.current(key, await self.store.history(key))
        sections = await self.sections(message, summary)
        # Counting tokens is CPU work (a long history, a big window): off the event loop.
        prompt = await asyncio.to_thread(self.context.build, sections, history, message.text)
        if prompt.dropped or prompt.trimmed:
            log.info(
                "conversation %s: %d old messages and %d extension or recall texts left out",
                key,
                prompt.dropped,
                prompt.trimmed,
            )
        return PromptPlan(prompt, summary, history)

    async def sections(self, message: Message, summary: Summary | None) -> Sections:
        """Everything of the prompt but the history and the message itself."""
        user = UserKey.of(message.conversation)
        stored = await self.store.get_preferences(user)
        return Sections(
            self.settings.context.system_prompt.strip(),
            preferences=prompt_lines({name: p.value for name, p in stored.items()}),
            summary="" if summary is None else summary.text,
            extensions=await self.extensions(message),
            recalled=await self.recalled(user, message.text),
        )

    async def extensions(self, message: Message) -> list[str]:
        """The texts ``extend_system_prompt`` hooks return; anything but text is left out."""
        extras = []
        extensions = await self.plugins.call(
            "extend_system_prompt", message=message, services=self.services
        )
        for plugin, extra in extensions:
            if isinstance(extra, str):
                extras.append(extra)
            else:
                log.error(
                    "plugin %r returned %s from extend_system_prompt, not text; left out",
                    plugin,
                    type(extra).__name__,
                )
        return extras

    async def recalled(self, user: UserKey, text: str) -> list[str]:
        """The texts of the user's memories closest to ``text`` (none when recall fails: the
        reply goes on without them)."""
        if self.settings.memory.recall == 0:
            return []
        try:
            return [memory.text for memory in await self.memories.recall(user, text)]
        except Exception:
            log.warning(
                "recalling memories for %s failed; replying without them", user, exc_info=True
            )
            return []
