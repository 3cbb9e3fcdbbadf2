"""The reply pipeline for a chat message: prompt → generation → output steps on the stream →
persist the turn → after-reply hooks. Usable without the engine: give it the parts.

What is stored is what was shown: text an output step held back and never released is not
kept. The turn is stored also when the reply failed or was cancelled (shielded, so a second
cancellation cannot lose it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from chatcore.config import Settings
from chatcore.context import ContextBuilder, MessageTooLongError, SystemPromptTooLongError
from chatcore.events import (
    ChatMessage,
    ConversationKey,
    FinishReason,
    Message,
    Notice,
    Reply,
    ReplyChunk,
    ReplyError,
    ReplyEvent,
    Usage,
)
from chatcore.failures import logged_failure
from chatcore.generation.types import (
    INTERRUPTED_MARKER,
    Backend,
    GenerationError,
    StreamInterruptedError,
)
from chatcore.limits import BUSY, DeadlinePassed, Limits, Spend, next_before, timed_out
from chatcore.memory.barrier import UserErasedError
from chatcore.memory.base import ConversationStore, UserKey
from chatcore.memory.summary import RollingSummaries
from chatcore.pipeline.runner import Steps
from chatcore.pipeline.steps import Blocked
from chatcore.plugins import PluginHost
from chatcore.prompting import PromptBuilder
from chatcore.services import Services

log = logging.getLogger(__name__)

Emit = Callable[[ReplyEvent], None]


def refusal(message: Message, blocked: Blocked, *, output: bool = False) -> ReplyError:
    """What the user hears when a step blocked: the category and the step's reason, never the
    text that was found."""
    if output:
        text = (
            f"The reply was stopped: {blocked.reason} ({blocked.category}). "
            "What was shown so far is kept."
        )
    else:
        text = f"I can't answer that message: {blocked.reason} ({blocked.category})."
    return ReplyError(message.id, "blocked", text)


class ReplyPipeline:
    """Answers one chat message with the model and keeps the turn."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        store: ConversationStore,
        context: ContextBuilder,
        prompts: PromptBuilder,
        summaries: RollingSummaries,
        steps: Steps,
        plugins: PluginHost,
        services: Services,
        *,
        limits: Limits | None = None,
    ) -> None:
        self.settings = settings
        self.limits = limits
        """The quota, the generation slots and the timeout; None: no limits."""
        self.backend = backend
        self.store = store
        self.context = context
        self.prompts = prompts
        self.summaries = summaries
        self.steps = steps
        self.plugins = plugins
        self.services = services

    async def run(self, message: Message, emit: Emit) -> None:
        """Stream the reply to ``message`` through ``emit``: chunks, then one ``Reply`` or
        ``ReplyError``, then the after-reply hooks' notices. With ``limits``: refused at once
        past the user's daily quota or when the generation queue is full, and stopped at the
        generation timeout."""
        key = message.conversation
        limits = self.limits
        spend: Spend | None = None
        if limits is not None:
            checked = await limits.check_quota(UserKey.of(key), message.id)
            if isinstance(checked, ReplyError):
                emit(checked)
                return
            spend = checked
        slot = False
        received = 0
        limit = self.settings.generation.max_new_tokens
        try:
            try:
                plan = await self.prompts.build(message)
            except MessageTooLongError as error:
                emit(ReplyError(message.id, "message_too_long", str(error)))
                return
            except SystemPromptTooLongError as error:  # plugins added too much: the operator's
                summary = "The bot cannot answer right now"
                emit(logged_failure(message, "internal_error", summary, error))
                return
            prompt = plan.prompt
            if limits is not None:
                if not await limits.slots.acquire():
                    emit(ReplyError(message.id, "busy", BUSY))
                    return
                slot = True
            output = await self.steps.open_output(
                message, self.services, tokens_left=lambda: max(0, limit - received)
            )
        except BaseException as error:
            if slot and limits is not None:  # never a slot lost to a reply that never ran
                limits.slots.release()
            if isinstance(error, asyncio.CancelledError):
                # Stopped before generation began: the user's message is still kept.
                await self.store_turn(key, [ChatMessage("user", message.text)])
            raise

        shown: list[str] = []

        def show(text: str) -> None:
            if text:
                emit(ReplyChunk(message.id, text, len(shown)))
                shown.append(text)

        finish: FinishReason = "stop"
        interrupted = False
        usage: Usage | None = None
        failure: ReplyError | None = None
        loop = asyncio.get_running_loop()
        seconds = None if limits is None else limits.timeout
        deadline = None if seconds is None else loop.time() + seconds
        try:
            try:
                stream = self.backend.stream(prompt.messages, self.settings.generation)
                chunks = aiter(stream)
                try:
                    while True:
                        try:  # only the model's time is limited: not the steps'
                            chunk = await next_before(chunks, deadline)
                        except DeadlinePassed:
                            assert seconds is not None
                            log.info("message %s: generation timed out", message.id)
                            failure = timed_out(message.id, seconds)
                            break
                        if chunk is None:
                            break
                        if chunk.text:
                            received += 1
                            show(chunk.text if output is None else await output.feed(chunk.text))
                            if output is not None and output.done:
                                # An end-of-turn token, or a loop: nothing more would be shown.
                                log.info("message %s: output steps ended the reply", message.id)
                                usage = Usage(prompt.tokens, received)
                                break
                        if chunk.finish_reason is not None:
                            finish = chunk.finish_reason
                            usage = chunk.usage or Usage(prompt.tokens, received)
                finally:
                    await close_stream(stream)  # also when a step blocked: generation stops
                    if slot and limits is not None:
                        slot = False
                        limits.slots.release()
            except StreamInterruptedError as error:
                summary = "The model's answer broke off"
                failure = logged_failure(message, "backend_error", summary, error)
                interrupted = True
            except GenerationError as error:
                summary = "The model could not answer"
                failure = logged_failure(message, "backend_error", summary, error)
            if output is not None:  # the stream ended by itself: release what steps hold
                show(await output.flush(finish if failure is None else "cancelled"))
        except Blocked as blocked:
            failure = refusal(message, blocked, output=True)
        finally:
            if slot and limits is not None:  # cancelled before the stream was made
                limits.slots.release()
            # Nothing is lost: the user's message stays, and so does what was shown of a reply.
            text = "".join(shown)
            turn = [ChatMessage("user", message.text)]
            if text.strip():
                # A reply that broke off is stored marked as cut, so later prompts read it so.
                stored = text.rstrip() + INTERRUPTED_MARKER if interrupted else text
                turn.append(ChatMessage("assistant", stored))
            try:
                kept = await self.store_turn(key, turn)
            finally:  # counted also when a second cancellation cut the store short
                if usage is None:
                    usage = Usage(prompt.tokens, received)
                if spend is not None and limits is not None:
                    await self.spend(limits, spend, usage)
        if failure is not None:
            emit(failure)
            return
        reply = Reply(message.id, text, finish, usage, streamed=True)
        emit(reply)
        if kept is None:
            return
        self.summaries.update(key, plan.summary, [*plan.history, *kept], prompt.dropped)
        await self.record_costs(key, kept)
        self._emit_notices(message, await self._after_reply(message, reply), emit)

    @staticmethod
    async def spend(limits: Limits, spend: Spend, usage: Usage) -> None:
        """Count the reply's tokens against the quota; a failure to count is logged, and the
        reply goes on (the user is not to blame)."""
        try:
            await limits.spend(spend, usage.prompt_tokens + usage.completion_tokens)
        except Exception:
            log.warning("could not count the tokens of %s's reply", spend.user, exc_info=True)

    async def store_turn(
        self, key: ConversationKey, turn: list[ChatMessage]
    ) -> list[ChatMessage] | None:
        """Store the turn; None, storing nothing, when its user was erased since the turn
        began. Finished even when cancelled: a second cancellation (a shutdown past its grace)
        must not lose it."""
        try:
            return await self.services.memories.barrier.write(
                UserKey.of(key), partial(self.store.append, key, turn)
            )
        except UserErasedError:
            log.info("%s: the user was erased during the turn; nothing of it is kept", key)
            return None

    async def _after_reply(self, message: Message, reply: Reply) -> list[tuple[str, Any]]:
        """The ``reply_finished`` hooks (they may learn from the turn; their results), as a
        write about the user: none when the user was erased since the turn began, and an erase
        waits for them."""
        try:
            async with self.services.memories.barrier.guarded(UserKey.of(message.conversation)):
                return await self.plugins.call(
                    "reply_finished", message=message, reply=reply, services=self.services
                )
        except UserErasedError:
            return []

    def _emit_notices(self, message: Message, notices: list[tuple[str, Any]], emit: Emit) -> None:
        for plugin, notice in notices:
            if isinstance(notice, str):
                if notice.strip():
                    emit(Notice(message.id, notice.strip()))
            elif notice is not None:
                log.error(
                    "plugin %r returned %s from reply_finished, not text; left out",
                    plugin,
                    type(notice).__name__,
                )

    async def record_costs(self, key: ConversationKey, turn: Sequence[ChatMessage]) -> None:
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


async def close_stream(stream: Any) -> None:
    """Close a backend stream so that its generation stops (async generators have aclose)."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
