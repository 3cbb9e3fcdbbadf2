"""The engine: turns one inbound ``Message`` into a stream of reply events.

It composes a conversation store, a context builder, a backend and the plugin host; messages of
one conversation are handled in arrival order, different conversations concurrently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

from chatcore.commands import CommandContext, parse_command
from chatcore.config import Settings
from chatcore.context import ContextBuilder, MessageTooLongError
from chatcore.events import (
    ConversationKey,
    FinishReason,
    Message,
    Reply,
    ReplyChunk,
    ReplyError,
    ReplyEvent,
    Usage,
)
from chatcore.generation.types import Backend, ChatMessage, GenerationError
from chatcore.memory.base import ConversationStore
from chatcore.plugins import PluginHost, resolve

log = logging.getLogger(__name__)

_END = None


class EngineNotStartedError(RuntimeError):
    """``Engine.handle`` was called before ``Engine.start``."""


class Engine:
    """Handles messages: routes commands, builds prompts, streams generation, stores turns."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        store: ConversationStore,
        plugins: PluginHost | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.store = store
        self.plugins = plugins or PluginHost()
        self._context: ContextBuilder | None = None
        self._tails: dict[ConversationKey, asyncio.Task[None]] = {}
        self._start_lock = asyncio.Lock()

    @property
    def context(self) -> ContextBuilder:
        if self._context is None:
            raise EngineNotStartedError("call `await engine.start()` before handling messages")
        return self._context

    async def start(self) -> None:
        """Load the backend and size the context window; idempotent."""
        async with self._start_lock:
            if self._context is None:
                await self.backend.load()
                self._context = ContextBuilder(
                    self.backend.tokenizer,
                    reserve=self.settings.context_reserve,
                    window=self.settings.context.window,
                )

    async def close(self) -> None:
        """Stop work in flight, then close the backend and the store."""
        tasks = list(self._tails.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self.backend.close()
        await self.store.close()

    def handle(self, message: Message) -> AsyncGenerator[ReplyEvent, None]:
        """Start handling ``message`` now and return its reply events: zero or more
        ``ReplyChunk``, then one ``Reply`` or ``ReplyError``.

        Work starts at once, queued behind earlier messages of the same conversation, so the
        order of ``handle`` calls is the order of handling. Closing the returned iterator early
        stops the reply; what was generated so far is kept in the conversation.
        """
        self.context  # noqa: B018 - fail here, in the caller, when not started
        key = message.conversation
        events: asyncio.Queue[ReplyEvent | None] = asyncio.Queue()
        previous = self._tails.get(key)
        task = asyncio.create_task(self._process(message, previous, events))
        self._tails[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))
        return self._drain(task, events)

    def _forget(self, key: ConversationKey, task: asyncio.Task[None]) -> None:
        if self._tails.get(key) is task:
            del self._tails[key]

    async def _drain(
        self, task: asyncio.Task[None], events: asyncio.Queue[ReplyEvent | None]
    ) -> AsyncGenerator[ReplyEvent, None]:
        try:
            while (event := await events.get()) is not _END:
                yield event
        finally:
            if not task.done():
                task.cancel()

    async def _process(
        self,
        message: Message,
        previous: asyncio.Task[None] | None,
        events: asyncio.Queue[ReplyEvent | None],
    ) -> None:
        try:
            if previous is not None:
                await asyncio.wait([previous])
            await self.plugins.call("message_received", message=message)
            command = parse_command(message.text)
            if command is not None:
                events.put_nowait(await self._run_command(message, *command))
            else:
                await self._chat(message, events)
        except Exception:
            log.exception("failed to handle message %s", message.id)
            events.put_nowait(
                ReplyError(message.id, "internal_error", "Something went wrong; it was logged.")
            )
        finally:
            events.put_nowait(_END)

    async def _run_command(self, message: Message, name: str, args: str) -> Reply | ReplyError:
        registry = self.plugins.commands
        if name not in registry:
            return ReplyError(
                message.id, "unknown_command", f"Unknown command /{name}. Type /help for the list."
            )
        commands = dict(registry.items())
        context = CommandContext(message, args, self.store, commands)
        try:
            text = await resolve(commands[name].handler(context))
        except Exception as error:
            log.exception("command /%s from plugin %r failed", name, registry.owner(name))
            return ReplyError(message.id, "command_failed", f"/{name} failed: {error}")
        return Reply(message.id, str(text))

    async def _chat(self, message: Message, events: asyncio.Queue[ReplyEvent | None]) -> None:
        key = message.conversation
        history = await self.store.history(key)
        extras = await self.plugins.call("extend_system_prompt", message=message)
        system = "\n\n".join([self.settings.context.system_prompt, *(str(e) for _, e in extras)])
        try:
            prompt = self.context.build(system.strip(), history, message.text)
        except MessageTooLongError as error:
            events.put_nowait(ReplyError(message.id, "message_too_long", str(error)))
            return
        if prompt.dropped:
            log.info("conversation %s: %d old messages left out", key, prompt.dropped)

        parts: list[str] = []
        finish: FinishReason = "cancelled"
        usage = Usage(prompt.tokens, 0)
        try:
            stream = self.backend.stream(prompt.messages, self.settings.generation)
            try:
                async for chunk in stream:
                    if chunk.text:
                        events.put_nowait(ReplyChunk(message.id, chunk.text, len(parts)))
                        parts.append(chunk.text)
                    if chunk.finish_reason is not None:
                        finish = chunk.finish_reason
                        usage = chunk.usage or Usage(prompt.tokens, len(parts))
            finally:
                await _close_stream(stream)
        except GenerationError as error:
            events.put_nowait(ReplyError(message.id, "backend_error", str(error)))
            return
        finally:
            # Nothing is lost: the user's message stays, and so does a partial reply.
            text = "".join(parts)
            turn = [ChatMessage("user", message.text)]
            if text.strip():
                turn.append(ChatMessage("assistant", text))
            await self.store.append(key, turn)
        reply = Reply(message.id, text, finish, usage, streamed=True)
        events.put_nowait(reply)
        await self.plugins.call("reply_finished", message=message, reply=reply)


async def _close_stream(stream: Any) -> None:
    """Close a backend stream so that its generation stops (async generators have aclose)."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
