"""Runs a skill for one message: ``/name --help``, the options, then the skill's handler, whose
pieces of text go through the output steps like a chat reply's, and the turn is stored.

A skill generates with ``SkillRequest.generate``, made here: the active backend, the generation
slots, the timeout and the user's quota, as for chat; never a backend of its own. Plugin code is
bounded and contained: each piece must come within ``plugins.command_timeout`` (the model's
time included), and a skill that raises or runs out of time answers with an error naming it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import suppress
from typing import Any

from chatcore.config import GenerationSettings
from chatcore.events import ChatMessage, Message, Reply, ReplyChunk, ReplyError, Usage
from chatcore.failures import logged_failure
from chatcore.generation.types import GenerationError
from chatcore.limits import BUSY, DeadlinePassed, Spend, next_before, timed_out
from chatcore.memory.base import UserKey
from chatcore.pipeline.reply import Emit, ReplyPipeline, close_stream, refusal
from chatcore.pipeline.steps import Blocked
from chatcore.plugins import PluginFault
from chatcore.skills import GenerationStopped, Skill, SkillRequest, SkillUsageError

log = logging.getLogger(__name__)

MAX_PIECES = 100_000
"""The most pieces one skill reply may have: a handler that never stops is cut there."""
_DONE = object()


class SkillPipeline:
    """Answers ``/name args`` with the registered skill ``name``; uses the parts of the chat
    reply pipeline (backend, store, steps, limits, plugins, services)."""

    def __init__(self, replies: ReplyPipeline) -> None:
        self.replies = replies

    async def run(self, message: Message, name: str, args: str, emit: Emit) -> None:
        """Stream the skill's reply through ``emit``: chunks, then one ``Reply`` or
        ``ReplyError``. ``--help`` answers with the skill's help and stores nothing."""
        plugins = self.replies.plugins
        skill, owner = plugins.skills.get(name), plugins.skills.owner(name)
        if args.strip() in ("--help", "-h"):
            emit(Reply(message.id, skill.help_text()))
            return
        try:
            options, text = skill.parse(args)
        except SkillUsageError as error:
            emit(ReplyError(message.id, "bad_options", f"{error}. /{name} --help shows how."))
            return
        spend: Spend | None = None
        limits = self.replies.limits
        if limits is not None:
            checked = await limits.check_quota(UserKey.of(message.conversation), message.id)
            if isinstance(checked, ReplyError):
                emit(checked)
                return
            spend = checked
        run = _Generation(self.replies, message)
        request = await self._request(message, text, options, run)
        try:
            await self._answer(message, skill, owner, request, emit, run)
        finally:
            await run.close()
            if spend is not None and limits is not None:
                await self.replies.spend(limits, spend, run.usage)

    async def _request(
        self, message: Message, text: str, options: dict[str, Any], run: _Generation
    ) -> SkillRequest:
        store, key = self.replies.store, message.conversation
        stored = await store.get_preferences(UserKey.of(key))
        context = self.replies.context
        return SkillRequest(
            text=text,
            options=options,
            message=message,
            history=await store.history(key),
            preferences={name: str(p.value) for name, p in stored.items()},
            services=self.replies.services,
            generate=run.generate,
            count_tokens=context.text_cost,
            prompt_budget=context.budget,
        )

    async def _answer(
        self,
        message: Message,
        skill: Skill,
        owner: str,
        request: SkillRequest,
        emit: Emit,
        run: _Generation,
    ) -> None:
        replies, plugins = self.replies, self.replies.plugins
        what = f"skill /{skill.name}"
        shown: list[str] = []

        def show(text: str) -> None:
            if text:
                emit(ReplyChunk(message.id, text, len(shown)))
                shown.append(text)

        failure: ReplyError | None = None
        pieces: Any = None
        finished = False
        output = await replies.steps.open_output(message, replies.services)
        try:
            try:
                pieces = await plugins.invoke(
                    owner, what, skill.handler, {"request": request}, limit="command_timeout"
                )
                if not isinstance(pieces, AsyncIterator):
                    problem = f"plugin {owner!r} returned {type(pieces).__name__} from {what}"
                    pieces = None
                    raise _NotText(problem + ", not an async iterator of text")
                for _ in range(MAX_PIECES):
                    piece = await plugins.invoke(
                        owner, what, _next_piece, {"pieces": pieces}, limit="command_timeout"
                    )
                    if piece is _DONE:
                        finished = True
                        break
                    if isinstance(piece, GenerationStopped):
                        failure = piece.error
                        break
                    if not isinstance(piece, str):
                        raise _NotText(f"plugin {owner!r} yielded {type(piece).__name__} in {what}")
                    show(piece if output is None else await output.feed(piece))
                    if output is not None and output.done:
                        break
                else:
                    log.warning("%s: more than %d pieces; the reply was cut", what, MAX_PIECES)
            except PluginFault as fault:
                pieces = None  # it raised or was abandoned: nothing left to close
                late = "took too long" if fault.timed_out else "failed"
                failure = logged_failure(message, "skill_failed", f"/{skill.name} {late}", fault)
            except _NotText as problem:
                failure = logged_failure(message, "skill_failed", f"/{skill.name} failed", problem)
            if output is not None:
                show(await output.flush("stop" if failure is None else "cancelled"))
        except Blocked as blocked:
            failure = refusal(message, blocked, output=True)
        finally:
            if pieces is not None and not finished:
                await _close(plugins, owner, what, pieces)
            await run.close()
            text = "".join(shown)
            turn = [ChatMessage("user", message.text)]
            if text.strip():
                turn.append(ChatMessage("assistant", text))
            kept = await replies.store_turn(message.conversation, turn)
        if failure is not None:
            emit(failure)
            return
        emit(Reply(message.id, text, "stop", run.usage, streamed=True))
        if kept is not None:
            await replies.record_costs(message.conversation, kept)


class _NotText(Exception):
    """A skill handed back something other than text."""


async def _next_piece(pieces: AsyncIterator[Any]) -> Any:
    """The next piece of a skill's reply; ``_DONE`` at its end, and a ``GenerationStopped``
    as a value (the model's failure, not the skill's)."""
    try:
        return await anext(pieces)
    except StopAsyncIteration:
        return _DONE
    except GenerationStopped as stopped:
        return stopped


async def _close(plugins: Any, owner: str, what: str, pieces: AsyncIterator[Any]) -> None:
    """Close a skill's reply stopped early, so its clean-up runs (bounded, contained)."""
    close = getattr(pieces, "aclose", None)
    if close is not None:

        async def closing() -> None:
            await close()

        with suppress(PluginFault):  # logged by invoke
            await plugins.invoke(owner, f"{what} (closing)", closing, {})


class _Generation:
    """``SkillRequest.generate`` for one message: each call streams the active backend's text
    within a generation slot and the timeout; the tokens are added up for the quota."""

    def __init__(self, replies: ReplyPipeline, message: Message) -> None:
        self.replies = replies
        self.message = message
        self.usage = Usage()
        self._open: list[AsyncGenerator[str, None]] = []

    def generate(self, prompt: str | Sequence[ChatMessage], **options: Any) -> AsyncIterator[str]:
        """The model's reply to ``prompt`` (one user message) or to a list of messages;
        ``options`` change ``[generation]`` settings for this call. ``ValueError`` for an
        option that is unknown or out of range; ``GenerationStopped`` while it streams."""
        messages = [ChatMessage("user", prompt)] if isinstance(prompt, str) else list(prompt)
        base = self.replies.settings.generation
        unknown = set(options) - set(GenerationSettings.model_fields)
        if unknown:
            raise ValueError(f"generate: no generation setting {', '.join(sorted(unknown))}")
        settings = GenerationSettings.model_validate({**base.model_dump(), **options})
        stream = self._stream(messages, settings)
        self._open.append(stream)
        return stream

    async def _stream(
        self, messages: list[ChatMessage], settings: GenerationSettings
    ) -> AsyncGenerator[str, None]:
        replies, message = self.replies, self.message
        limits = replies.limits
        tokens = await asyncio.to_thread(replies.context.tokenizer.count_tokens, messages)
        if limits is not None and not await limits.slots.acquire():
            raise GenerationStopped(ReplyError(message.id, "busy", BUSY))
        received = 0
        usage: Usage | None = None
        seconds = None if limits is None else limits.timeout
        deadline = None if seconds is None else asyncio.get_running_loop().time() + seconds
        try:
            stream = replies.backend.stream(messages, settings)
            chunks = aiter(stream)
            try:
                while True:  # ends with the backend's stream, bounded by max_new_tokens
                    try:  # only the model's time is limited: not the skill's
                        chunk = await next_before(chunks, deadline)
                    except DeadlinePassed:
                        assert seconds is not None
                        raise GenerationStopped(timed_out(message.id, seconds)) from None
                    if chunk is None:
                        break
                    if chunk.text:
                        received += 1
                        yield chunk.text
                    if chunk.finish_reason is not None and chunk.usage is not None:
                        usage = chunk.usage
            finally:
                await close_stream(stream)
        except GenerationError as error:
            summary = "The model could not answer"
            raise GenerationStopped(
                logged_failure(message, "backend_error", summary, error)
            ) from error
        finally:
            if limits is not None:
                limits.slots.release()
            usage = usage or Usage(tokens, received)
            self.usage = Usage(
                self.usage.prompt_tokens + usage.prompt_tokens,
                self.usage.completion_tokens + usage.completion_tokens,
            )

    async def close(self) -> None:
        """Close every stream still open (a skill that stopped reading one): its generation
        stops and its slot is free at once, not when the garbage collector gets to it."""
        streams, self._open = self._open, []
        for stream in streams:
            await stream.aclose()
