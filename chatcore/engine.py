"""The engine: turns one inbound ``Message`` into a stream of reply events.

It composes the parts, each usable alone: the input steps (``chatcore.pipeline.runner``), the
router (``chatcore.router``: a command, a skill or a chat), the prompt builder
(``chatcore.prompting``), the reply pipeline (``chatcore.pipeline.reply``) and the skill
pipeline (``chatcore.pipeline.skill``), which shares the reply pipeline's parts. Messages of
one conversation are handled in arrival order, one at a time also across processes that share
the database (the store's conversation lock); different conversations concurrently.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from chatcore.config import Settings
from chatcore.context import ContextBuilder
from chatcore.events import ConversationKey, Message, Reply, ReplyError, ReplyEvent
from chatcore.failures import logged_failure
from chatcore.generation.types import Backend
from chatcore.limits import Limits
from chatcore.memory.base import ConversationBusyError, ConversationStore, UserKey
from chatcore.memory.service import Memories
from chatcore.memory.summary import ExtractiveSummarizer, RollingSummaries
from chatcore.memory.usage import usage_ledger
from chatcore.metrics import Metrics
from chatcore.pipeline.reply import ReplyPipeline, refusal
from chatcore.pipeline.runner import Steps, build_steps
from chatcore.pipeline.skill import SkillPipeline
from chatcore.pipeline.steps import Blocked
from chatcore.plugins import PluginHost
from chatcore.privacy import Privacy
from chatcore.prompting import PromptBuilder
from chatcore.router import CommandRoute, Router, SkillRoute
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
    """Handles messages: checks them, routes them, and answers chats and skills through the
    reply and skill pipelines; owns ordering, the conversation lock and cancellation."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        store: ConversationStore,
        plugins: PluginHost | None = None,
        memories: Memories | None = None,
        metrics: Metrics | None = None,
        limits: Limits | None = None,
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
        self.metrics = metrics or Metrics()
        """Where the pipeline counts what its steps did (the app shares it with adapters)."""
        self.limits = limits or Limits(settings.limits, usage_ledger(store))
        """The per-user rate and quota, the generation slots and the timeout (``[limits]``)."""
        self.router = Router(self.plugins, self.services)
        self.steps = Steps([], seconds=settings.plugins.hook_timeout)
        """The pipeline's steps; made from what plugins registered at ``start``."""
        self._context: ContextBuilder | None = None
        self._replies: ReplyPipeline | None = None
        self._skills: SkillPipeline | None = None
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
        """Make the pipeline's steps, load the backend and size the context window;
        idempotent. Raises ``ConfigError`` for a bad ``[pipeline.steps.*]`` section and
        ``PluginError`` for a detector that cannot be made."""
        async with self._start_lock:
            if self._context is None:
                specs = [
                    (n, self.plugins.filters.owner(n), s) for n, s in self.plugins.filters.items()
                ]
                self.steps = build_steps(self.settings, specs, metrics=self.metrics)
                await self.backend.load()
                context = ContextBuilder(
                    self.backend.tokenizer,
                    reserve=self.settings.context_reserve,
                    window=self.settings.context.window,
                    extra_share=self.settings.context.extra_share,
                )
                context.check_system_prompt(self.settings.context.system_prompt)
                if self.summaries.summarizer is None:
                    self.summaries.summarizer = ExtractiveSummarizer(
                        context.summary_cap, context.text_cost
                    )
                self._replies = self._reply_pipeline(context)
                self._skills = SkillPipeline(self._replies)
                self._context = context

    def _reply_pipeline(self, context: ContextBuilder) -> ReplyPipeline:
        prompts = PromptBuilder(
            self.settings,
            context,
            self.store,
            self.memories,
            self.summaries,
            self.plugins,
            self.services,
        )
        return ReplyPipeline(
            self.settings,
            self.backend,
            self.store,
            context,
            prompts,
            self.summaries,
            self.steps,
            self.plugins,
            self.services,
            limits=self.limits,
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
        self.steps.close()
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
        # On arrival, commands too: a refused message is not queued, stored or seen by hooks.
        limited = self.limits.admit(UserKey.of(message.conversation), message.id)
        if limited is not None:
            request.emit(limited)
            request.end()
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
            async with self._conversation(message.conversation, previous is not None):
                try:
                    # Before anything sees it (hooks, commands, the prompt, the store, the log).
                    message = await self.steps.check_input(message)
                except Blocked as blocked:
                    request.emit(refusal(message, blocked))
                    return
                # What this turn writes about its user is dropped if they are erased meanwhile.
                await self.memories.barrier.begin(UserKey.of(message.conversation))
                await self.plugins.call("message_received", message=message, services=self.services)
                route = self.router.route(message)
                if isinstance(route, CommandRoute):
                    request.emit(await self.router.run_command(message, route))
                elif isinstance(route, SkillRoute):
                    assert self._skills is not None  # handle() refuses before start
                    await self._skills.run(message, route.name, route.args, request.emit)
                else:
                    assert self._replies is not None  # handle() refuses before start
                    await self._replies.run(message, request.emit)
        except ConversationBusyError as busy:
            log.warning("message %s: %s", message.id, busy)
            request.emit(ReplyError(message.id, "conversation_busy", BUSY))
        except Exception:
            request.emit(logged_failure(message, "internal_error", "Something went wrong"))

    def _conversation(
        self, key: ConversationKey, queued: bool
    ) -> AbstractAsyncContextManager[None]:
        """Hold the conversation against other processes sharing the database, once this
        process's earlier messages of it are done (``queued``: there were some): commands too
        (a ``/reset`` must not cut a turn in half). ``ConversationBusyError`` past
        ``storage.conversation_wait``."""
        wait = self.settings.storage.conversation_wait
        return self.store.conversation_lock(key, wait, queued=queued)


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
