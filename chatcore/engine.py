"""The engine: turns one inbound ``Message`` into a stream of reply events.

It composes a conversation store, a context builder, a backend and the plugin host; messages of
one conversation are handled in arrival order, one at a time also across processes that share
the database (the store's conversation lock); different conversations concurrently.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from chatcore.commands import CommandContext, parse_command
from chatcore.config import Settings
from chatcore.context import (
    ContextBuilder,
    MessageTooLongError,
    Sections,
    SystemPromptTooLongError,
)
from chatcore.events import (
    ChatMessage,
    ConversationKey,
    ErrorCode,
    FinishReason,
    Message,
    Notice,
    Reply,
    ReplyChunk,
    ReplyError,
    ReplyEvent,
    Usage,
)
from chatcore.generation.types import Backend, GenerationError
from chatcore.memory.barrier import UserErasedError
from chatcore.memory.base import ConversationBusyError, ConversationStore, UserKey
from chatcore.memory.learn import prompt_lines
from chatcore.memory.service import Memories
from chatcore.memory.summary import ExtractiveSummarizer, RollingSummaries
from chatcore.plugins import PluginFault, PluginHost
from chatcore.privacy import Privacy
from chatcore.services import Services
from chatcore.text import clean_input

log = logging.getLogger(__name__)

_END = None
STOPPED = "The reply was stopped before it finished."
SHUTTING_DOWN = "Stopped: the bot is shutting down. What was written so far is kept."
BUSY = "This conversation is still busy with an earlier message; send yours again in a moment."


@dataclass(eq=False)
class _Request:
    """One message being handled, and the queue its events go out through."""

    message: Message
    events: asyncio.Queue[ReplyEvent | None] = field(default_factory=asyncio.Queue)
    final: Reply | ReplyError | None = None
    """The final event, once queued."""
    ended: bool = False

    def emit(self, event: ReplyEvent) -> None:
        if isinstance(event, Reply | ReplyError):
            self.final = event
        self.events.put_nowait(event)

    def end(self, notice: str = STOPPED) -> None:
        """Close the stream, with a ``ReplyError`` first if no final event went out."""
        if not self.ended:
            if self.final is None:
                self.emit(ReplyError(self.message.id, "cancelled", notice))
            self.ended = True
            self.events.put_nowait(_END)


class ReplyStream:
    """The events of one message, as ``Engine.handle`` returns them: iterate it. A reader that
    leaves before the final event (``aclose``, or being cancelled while it waits) stops the
    reply, even before its first event; one that leaves after it lets the after-reply hooks
    finish."""

    def __init__(self, request: _Request, task: asyncio.Task[None] | None) -> None:
        self._request = request
        self._task = task

    def __aiter__(self) -> ReplyStream:
        return self

    async def __anext__(self) -> ReplyEvent:
        try:
            event = await self._request.events.get()
        except asyncio.CancelledError:
            self._stop()
            raise
        if event is _END:
            self._request.events.put_nowait(_END)  # every later call ends too
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._task is not None and not self._task.done() and self._request.final is None:
            self._task.cancel()


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
        memories: Memories | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.store = store
        self.plugins = plugins or PluginHost()
        self.memories = memories or Memories(store, settings.memory)
        self.services: Services = Privacy(settings, store, self.memories, self.plugins).services
        """What hooks and commands get: never the engine itself."""
        self.summaries = RollingSummaries(
            store,
            enabled=settings.memory.summaries,
            history_limit=settings.context.history_limit,
            barrier=self.memories.barrier,
        )
        self._context: ContextBuilder | None = None
        self._tails: dict[ConversationKey, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
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
                context = ContextBuilder(
                    self.backend.tokenizer,
                    reserve=self.settings.context_reserve,
                    window=self.settings.context.window,
                    extra_share=self.settings.context.extra_share,
                )
                context.check_system_prompt(self.settings.context.system_prompt)
                self._context = context
                if self.summaries.summarizer is None:
                    self.summaries.summarizer = ExtractiveSummarizer(
                        context.summary_cap, context.text_cost
                    )

    def stop(self) -> asyncio.Future[Any]:
        """Take no more messages and stop every one in flight or queued: each stream ends with
        a ``cancelled`` error saying the bot is shutting down, and each partial reply is
        stored; summaries in the making are dropped. Returns when all of them have ended, and
        the erases in flight too (within half of ``lifecycle.shutdown_timeout``)."""
        self._stopping = True
        tasks = [*self._tasks, *self.summaries.stop()]
        for task in tasks:
            task.cancel()
        erases = self.services.privacy.close(self.settings.lifecycle.shutdown_timeout / 2)
        return asyncio.gather(erases, *(asyncio.wait([t]) for t in tasks))

    async def close(self) -> None:
        """``stop``, then close the backend and the store."""
        await self.stop()
        parts = (("memories", self.memories), ("backend", self.backend), ("store", self.store))
        for name, part in parts:
            try:
                await part.close()
            except Exception:  # shutting down: report, and close the rest anyway
                log.exception("closing the %s failed", name)

    def handle(self, message: Message) -> ReplyStream:
        """Start handling ``message`` now and return its reply events: zero or more
        ``ReplyChunk``, then exactly one ``Reply`` or ``ReplyError``.

        Work starts at once, queued behind earlier messages of the same conversation, so the
        order of ``handle`` calls is the order of handling. Closing the returned iterator before
        the final event stops the reply; what was generated so far is kept in the conversation.
        """
        self.context  # noqa: B018 - fail here, in the caller, when not started
        # The one rule for inbound text: NUL and control characters never go further.
        message = dataclasses.replace(
            message,
            text=clean_input(message.text),
            user_name=None if message.user_name is None else clean_input(message.user_name),
        )
        request = _Request(message)
        if self._stopping or not message.text.strip():
            if not self._stopping:
                request.emit(ReplyError(message.id, "empty_message", "The message is empty."))
            request.end(SHUTTING_DOWN)
            _log_outcome(request)
            return ReplyStream(request, None)
        key = message.conversation
        task = asyncio.create_task(self._process(request, self._tails.get(key)))
        self._tails[key] = task
        self._tasks.add(task)
        task.add_done_callback(partial(self._finished, key, request))
        return ReplyStream(request, task)

    def _finished(self, key: ConversationKey, request: _Request, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._tails.get(key) is task:
            del self._tails[key]
        # The one place streams end, also for a task cancelled before it ran.
        request.end(SHUTTING_DOWN if self._stopping else STOPPED)
        _log_outcome(request)

    async def _process(self, request: _Request, previous: asyncio.Task[None] | None) -> None:
        message = request.message
        try:
            if previous is not None:
                await asyncio.wait([previous])
            async with self._conversation(message.conversation):
                # What this turn writes about its user is dropped if they are erased meanwhile.
                await self.memories.barrier.begin(UserKey.of(message.conversation))
                await self.plugins.call("message_received", message=message, services=self.services)
                command = parse_command(message.text)
                if command is not None:
                    request.emit(await self._run_command(message, *command))
                else:
                    await self._chat(request)
        except ConversationBusyError as busy:
            log.warning("message %s: %s", message.id, busy)
            request.emit(ReplyError(message.id, "conversation_busy", BUSY))
        except Exception:
            request.emit(_logged_failure(message, "internal_error", "Something went wrong"))

    def _conversation(self, key: ConversationKey) -> AbstractAsyncContextManager[None]:
        """Hold the conversation against other processes sharing the database, once this
        process's earlier messages of it are done: commands too (a ``/reset`` must not cut a
        turn in half). ``ConversationBusyError`` past ``storage.conversation_wait``."""
        return self.store.conversation_lock(key, self.settings.storage.conversation_wait)

    async def _recalled(self, user: UserKey, text: str) -> list[str]:
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

    async def _record_costs(self, key: ConversationKey, turn: Sequence[ChatMessage]) -> None:
        """Store the token cost of each new message, so that later prompts (after a restart
        too) need not count it again; counted off the event loop, after the reply went out."""
        context = self.context

        def count() -> dict[str, int]:
            return {m.id: context.cost(m) for m in turn if m.id is not None}

        try:
            counts = await asyncio.to_thread(count)
            if counts:
                await self.store.set_tokens(key, counts)
        except Exception:  # an optimisation only: the reply already went out
            log.warning("could not record token counts in %s", key, exc_info=True)

    async def _run_command(self, message: Message, name: str, args: str) -> Reply | ReplyError:
        registry = self.plugins.commands
        if name not in registry:
            return ReplyError(
                message.id, "unknown_command", f"Unknown command /{name}. Type /help for the list."
            )
        commands = dict(registry.items())
        context = CommandContext(message, args, self.services, commands)
        owner = registry.owner(name)
        try:
            text = await self.plugins.invoke(
                owner,
                f"command /{name}",
                commands[name].handler,
                {"context": context},
                limit="command_timeout",
            )
        except PluginFault as fault:
            what = "took too long" if fault.timed_out else "failed"
            return _logged_failure(message, "command_failed", f"/{name} {what}", fault)
        if not isinstance(text, str):
            problem = f"plugin {owner!r} returned {type(text).__name__}, not text"
            return _logged_failure(message, "command_failed", f"/{name} failed", problem)
        return Reply(message.id, text)

    async def _chat(self, request: _Request) -> None:
        message = request.message
        key = message.conversation
        # What the summary covers is not repeated: the prompt gets only the newer messages.
        rolling, history = await self.summaries.current(key, await self.store.history(key))
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
        user = UserKey.of(key)
        stored = await self.store.get_preferences(user)
        sections = Sections(
            self.settings.context.system_prompt.strip(),
            preferences=prompt_lines({name: p.value for name, p in stored.items()}),
            summary="" if rolling is None else rolling.text,
            extensions=extras,
            recalled=await self._recalled(user, message.text),
        )
        try:
            # Counting tokens is CPU work (a long history, a big window): off the event loop.
            prompt = await asyncio.to_thread(self.context.build, sections, history, message.text)
        except MessageTooLongError as error:
            request.emit(ReplyError(message.id, "message_too_long", str(error)))
            return
        except SystemPromptTooLongError as error:  # plugins added too much: the operator's to fix
            summary = "The bot cannot answer right now"
            request.emit(_logged_failure(message, "internal_error", summary, error))
            return
        if prompt.dropped or prompt.trimmed:
            log.info(
                "conversation %s: %d old messages and %d extension or recall texts left out",
                key,
                prompt.dropped,
                prompt.trimmed,
            )

        parts: list[str] = []
        finish: FinishReason = "stop"
        usage = Usage(prompt.tokens, 0)
        try:
            stream = self.backend.stream(prompt.messages, self.settings.generation)
            try:
                async for chunk in stream:
                    if chunk.text:
                        request.emit(ReplyChunk(message.id, chunk.text, len(parts)))
                        parts.append(chunk.text)
                    if chunk.finish_reason is not None:
                        finish = chunk.finish_reason
                        usage = chunk.usage or Usage(prompt.tokens, len(parts))
            finally:
                await _close_stream(stream)
        except GenerationError as error:
            summary = "The model could not answer"
            request.emit(_logged_failure(message, "backend_error", summary, error))
            return
        finally:
            # Nothing is lost: the user's message stays, and so does a partial reply.
            text = "".join(parts)
            turn = [ChatMessage("user", message.text)]
            if text.strip():
                turn.append(ChatMessage("assistant", text))
            kept = await self._store_turn(key, turn)
        reply = Reply(message.id, text, finish, usage, streamed=True)
        request.emit(reply)
        if kept is None:
            return
        self.summaries.update(key, rolling, [*history, *kept], prompt.dropped)
        await self._record_costs(key, kept)
        notices = await self._after_reply(message, reply)
        for plugin, notice in notices:
            if isinstance(notice, str):
                if notice.strip():
                    request.emit(Notice(message.id, notice.strip()))
            elif notice is not None:
                log.error(
                    "plugin %r returned %s from reply_finished, not text; left out",
                    plugin,
                    type(notice).__name__,
                )

    async def _store_turn(
        self, key: ConversationKey, turn: list[ChatMessage]
    ) -> list[ChatMessage] | None:
        """Store the turn; None, storing nothing, when its user was erased since the turn
        began. Finished even when cancelled: a second cancellation (a shutdown past its grace)
        must not lose it."""
        try:
            return await self.memories.barrier.write(
                UserKey.of(key), partial(self.store.append, key, turn)
            )
        except UserErasedError:
            log.info("%s: the user was erased during the turn; nothing of it is kept", key)
            return None

    async def _after_reply(self, message: Message, reply: Reply) -> list[tuple[str, Any]]:
        """The ``reply_finished`` hooks, as a write about the user (they learn and store): none
        when the user was erased since the turn began, and an erase waits for them."""
        try:
            async with self.memories.barrier.guarded(UserKey.of(message.conversation)):
                return await self.plugins.call(
                    "reply_finished", message=message, reply=reply, services=self.services
                )
        except UserErasedError:
            return []


def _logged_failure(
    message: Message, code: ErrorCode, summary: str, cause: object = None
) -> ReplyError:
    """A ``ReplyError`` that tells the user what failed and a reference to find it in the log,
    never the exception's own text (which may hold paths or configuration). Without a
    ``cause``, call it while handling the exception: its traceback is logged."""
    reference = uuid.uuid4().hex[:8]
    if cause is None:
        log.exception("%s (ref %s, message %s)", summary, reference, message.id)
    else:
        log.error("%s (ref %s, message %s): %s", summary, reference, message.id, cause)
    return ReplyError(message.id, code, f"{summary} (ref {reference}); it was logged.")


def _log_outcome(request: _Request) -> None:
    """One log line per message: its conversation, its id and how it ended."""
    final, message = request.final, request.message
    if isinstance(final, Reply):
        outcome = f"replied ({final.finish_reason}, {final.usage.completion_tokens} tokens)"
    elif isinstance(final, ReplyError):
        outcome = f"error {final.code}"
    else:
        outcome = "no answer"
    log.info("message %s in %s: %s", message.id, message.conversation, outcome)


async def _close_stream(stream: Any) -> None:
    """Close a backend stream so that its generation stops (async generators have aclose)."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
