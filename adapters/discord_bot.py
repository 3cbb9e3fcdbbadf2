"""The Discord bot on discord.py: answers mentions, direct messages and messages in threads it
started, streaming each reply by editing it; every chatcore command is also a slash command.

It only translates: Discord events become ``Message``s, reply events become Discord messages
(``discord_reply`` shows them, ``discord_text`` cuts them). Settings and registration are in
``chatcore.adapters.discord``; setup in docs/discord.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing, contextmanager, suppress
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from chatcore.adapter_api import AdapterContext, AdapterStartError, CommandInfo, ReplyStream
from chatcore.commands import parse_command
from chatcore.events import Message, Notice, Reply, ReplyChunk, ReplyError, ReplyEvent
from chatcore.metrics import ReplyTracker
from chatcore.text import clean_input

from .discord import TOKEN_ENV, DiscordSettings
from .discord_reply import StreamedReply, keep_typing, note_text
from .discord_text import split_message

log = logging.getLogger(__name__)

PLATFORM = "discord"
CUT_SHORT = "(cut short: the reply reached its length limit)"
NOT_HERE = "I don't answer in this channel."
ADMINS_ONLY = "Only the bot's admins can use /{name}."
SHUTTING_DOWN = "The bot is shutting down; try again in a moment."
MAX_SLASH_COMMANDS = 100
"""Discord's limit on an application's global slash commands."""
_SLASH_NAME = re.compile(r"^[-_a-z0-9]{1,32}$")
_SEEN_KEPT = 10_000
_CHANNELS_KEPT = 1_000
"""Channels whose newest message the bot remembers, to catch up on them after a new session."""
CATCH_UP_LIMIT = 100
"""At most this many messages are read back per channel after a new session."""
READY_WAIT = 30.0
"""Seconds the catch-up waits for the new session's guilds (READY's ``on_ready``) at most."""


class _RecentIds:
    """The ids of the last ``size`` messages taken, so that one delivered twice (a gateway
    replay after a resume) is answered once."""

    def __init__(self, size: int = _SEEN_KEPT) -> None:
        self.size = size
        self._ids: OrderedDict[int, None] = OrderedDict()

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def first_time(self, item: int) -> bool:
        """Record ``item``; False when it was already recorded."""
        if item in self._ids:
            return False
        self._ids[item] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True


class _LastSeen:
    """Per channel (a thread and a direct-message channel are channels) where the bot was
    addressed or answered: the id of the newest message it saw there, for the ``size`` channels
    most recently active; after a new gateway session the bot reads on from there."""

    def __init__(self, size: int = _CHANNELS_KEPT) -> None:
        self.size = size
        self._last: OrderedDict[int, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def get(self, channel_id: int) -> int | None:
        return self._last.get(channel_id)

    def channels(self) -> list[int]:
        """The channels remembered, the most recently active first."""
        return list(reversed(self._last))

    def saw(self, channel_id: int, message_id: int, *, remember: bool) -> None:
        """A message in the channel: its id is the newest seen there if it is newer. A channel
        not remembered yet is added only when ``remember`` (an addressed message, the bot's own
        thread); any message makes a remembered channel the most recently active."""
        last = self._last.get(channel_id)
        if last is None and not remember:
            return
        self._last[channel_id] = message_id if last is None else max(last, message_id)
        self._last.move_to_end(channel_id)
        if len(self._last) > self.size:
            self._last.popitem(last=False)


class _Client(discord.Client):
    """discord.py's client, with its events handed to the adapter."""

    def __init__(self, adapter: DiscordAdapter) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        intents.dm_messages = True
        intents.message_content = True  # privileged: enabled in the developer portal
        # No voice here: discord.py's one-time warnings about voice libraries would only confuse.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        super().__init__(
            intents=intents,
            allowed_mentions=discord.AllowedMentions.none(),  # model text never pings anyone
            chunk_guilds_at_startup=False,
            max_messages=None,
        )
        self.adapter = adapter
        self.tree: app_commands.CommandTree[_Client] = app_commands.CommandTree(self)
        self.served = False
        """The gateway said READY once: a later refusal is a crash, not a failure to start."""

    async def on_connect(self) -> None:
        # Dispatched when READY is parsed, so this runs before any message of the new session.
        self.adapter.new_session()

    async def on_ready(self) -> None:
        self.served = True
        self.adapter.session_ready.set()

    async def on_message(self, message: discord.Message) -> None:
        self.adapter.take(message)


class DiscordAdapter:
    """Runs the bot until the app stops: logs in (a missing or rejected token is an
    ``AdapterStartError``), waits for the app, syncs the slash commands, then serves."""

    def __init__(self, context: AdapterContext) -> None:
        self.context = context
        self.chat = context.chat
        self.settings: DiscordSettings = context.settings
        self._client: _Client | None = None
        self._seen = _RecentIds()
        self._own_threads = _RecentIds()
        self._replies: set[asyncio.Task[None]] = set()
        self._last_seen = _LastSeen()
        self._held: dict[int, list[discord.Message]] = {}
        """The channels being caught up after a new session, each with the live messages that
        arrived meanwhile, taken once its missed messages have been."""
        self._due: OrderedDict[int, None] = OrderedDict()
        """Those channels whose history is still to be read, the next first."""
        self._catching_up: asyncio.Task[None] | None = None
        self.session_ready = asyncio.Event()
        """The current gateway session's guilds have arrived (``on_ready``)."""

    def token(self) -> str:
        """The bot token: the setting (from the environment only), else ``DISCORD_TOKEN``."""
        token = (self.settings.token.get_secret_value() or os.environ.get(TOKEN_ENV, "")).strip()
        if not token:
            raise AdapterStartError(
                f"no Discord token: set {TOKEN_ENV} (or CHATCORE_ADAPTERS__DISCORD__TOKEN) to "
                "your bot's token from the Discord developer portal; see docs/discord.md"
            )
        return token

    async def run(self) -> int:
        token = self.token()
        client = self._client = _Client(self)
        connection: asyncio.Task[None] | None = None
        with _endpoints(self.settings.api_base, self.settings.gateway_url):
            try:
                await self._login(client, token)
                await self.chat.ready()
                if self.context.stopping.is_set():
                    return 0
                if self.settings.slash_commands:
                    await self._sync_commands(client)
                connection = asyncio.create_task(client.connect(reconnect=True))
                stopping = asyncio.create_task(self.context.stopping.wait())
                try:
                    await asyncio.wait({connection, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                if connection.done():
                    _raise_start_error(connection, served=client.served)
                    return 0
                # Shutting down: the engine ends the replies in flight; let them show it.
                await asyncio.gather(*self._replies, return_exceptions=True)
                return 0
            finally:
                if self._catching_up is not None:
                    self._catching_up.cancel()
                    with suppress(asyncio.CancelledError):
                        await self._catching_up
                await client.close()
                if connection is not None and not connection.done():
                    connection.cancel()
                    with suppress(asyncio.CancelledError, Exception):
                        await connection

    async def _login(self, client: _Client, token: str) -> None:
        try:
            await client.login(token)
        except discord.LoginFailure:
            raise AdapterStartError(
                f"Discord rejected the token (401 Unauthorized): set {TOKEN_ENV} to the token "
                "on the Bot page of your application in the Discord developer portal"
            ) from None
        except (TimeoutError, aiohttp.ClientError, discord.HTTPException, OSError) as error:
            where = self.settings.api_base or "Discord"
            raise AdapterStartError(
                f"cannot log in to {where} ({type(error).__name__}); check the network "
                "(or adapters.discord.api_base) and try again"
            ) from None

    # -- messages -------------------------------------------------------------------------

    def take(self, message: discord.Message) -> None:
        """A message arrived on the gateway: answer it if it is for the bot, unless its channel
        is being caught up (``new_session``): then it waits for the messages missed there."""
        channel_id = message.channel.id
        held = self._held.get(channel_id)
        if held is None:
            self._take(message)
            return
        held.append(message)
        if channel_id in self._due:
            self._due.move_to_end(channel_id, last=False)  # a channel in use is read first

    def _take(self, message: discord.Message) -> None:
        """Answer ``message`` if it is for the bot and not answered yet. The reply is started
        here, before any await, so that messages are handled in the order Discord sent them."""
        client = self._client
        if client is None or client.user is None or self.context.stopping.is_set():
            return
        text = self._text_for_bot(message, client.user)
        self._last_seen.saw(message.channel.id, message.id, remember=text is not None)
        if text is None or not self._seen.first_time(message.id):
            return
        text = clean_input(text)  # the engine's input rule, so the command check sees its text
        # A thread opened on a message has the message's id: the conversation goes on there.
        new_thread = self.settings.reply_in_thread and _opens_thread(message)
        incoming = Message(
            text=text,
            user=str(message.author.id),
            channel=str(message.id if new_thread else message.channel.id),
            platform=PLATFORM,
            id=str(message.id),
            user_name=message.author.display_name,
        )
        command = parse_command(text)
        if command is not None and not self._may_run(command[0], message.author.id):
            events: ReplyStream | AsyncGenerator[ReplyEvent, None] = _refusal(
                incoming.id, ADMINS_ONLY.format(name=command[0])
            )
        else:
            events = self.chat.send(incoming)
        thread = _thread_name(text) if new_thread else None
        task = asyncio.create_task(self._answer(message, events, thread=thread))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    # -- catching up after a new session ----------------------------------------------------

    def new_session(self) -> None:
        """READY: a new gateway session. After the first one (an invalidated session, one that
        could not be resumed) Discord does not replay what was sent meanwhile, so every
        remembered channel's messages since the newest seen there are read back and taken like
        live ones; live messages arriving there meanwhile are held until then, to keep order."""
        self.session_ready.clear()
        for channel_id in self._last_seen.channels():
            self._held.setdefault(channel_id, [])
            self._due[channel_id] = None  # again, if it was being read: the gap grew
        if self._due and (self._catching_up is None or self._catching_up.done()):
            self._catching_up = asyncio.create_task(self._catch_up())

    async def _catch_up(self) -> None:
        """Read the channels due, one at a time, once the session's guilds are known."""
        while self._due and not self.context.stopping.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(self.session_ready.wait(), READY_WAIT)
            channel_id, _ = self._due.popitem(last=False)
            messages = await self._read_missed(channel_id)
            if channel_id not in self._due:  # else a newer session reads it again: still held
                messages += self._held.pop(channel_id, [])  # those read back are seen: skipped
            for message in messages:
                try:
                    self._take(message)
                except Exception:
                    _log_failure("a message could not be taken", None, message)

    async def _read_missed(self, channel_id: int) -> list[discord.Message]:
        """The messages sent in the channel after the newest one seen there, oldest first (at
        most ``CATCH_UP_LIMIT``); none when it cannot be read (logged)."""
        client, after = self._client, self._last_seen.get(channel_id)
        if client is None or after is None:
            return []
        try:
            channel = client.get_channel(channel_id) or await client.fetch_channel(channel_id)
            if not isinstance(channel, discord.abc.Messageable):
                return []
            missed = [
                message
                async for message in channel.history(
                    limit=CATCH_UP_LIMIT + 1, after=discord.Object(id=after), oldest_first=True
                )
            ]
        except discord.HTTPException as error:
            _log_failure(f"the messages missed in channel {channel_id} could not be read", error)
            return []
        except Exception:
            _log_failure(f"the messages missed in channel {channel_id} could not be read", None)
            return []
        if len(missed) > CATCH_UP_LIMIT:
            log.warning(
                "discord: more than %d messages were missed in channel %d while the bot was "
                "away; only the first %d were read back",
                CATCH_UP_LIMIT,
                channel_id,
                CATCH_UP_LIMIT,
            )
        return missed[:CATCH_UP_LIMIT]

    # -- who the bot answers ----------------------------------------------------------------

    def _text_for_bot(self, message: discord.Message, me: discord.ClientUser) -> str | None:
        """The text to answer, without the bot's mention; None when the bot should not
        answer (a bot, itself, a system message, a channel it is kept out of, not addressed)."""
        if message.author.bot or message.author.id == me.id or message.webhook_id is not None:
            return None
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return None
        channel = message.channel
        if message.guild is None:
            addressed = True
        else:
            mentioned = any(user.id == me.id for user in message.mentions)
            own_thread = channel.id in self._own_threads or (
                isinstance(channel, discord.Thread) and channel.owner_id == me.id
            )
            addressed = mentioned or own_thread
        guild_id = message.guild.id if message.guild is not None else None
        if not addressed or not self._permitted(guild_id, channel):
            return None
        return _without_mentions(message, me.id)

    def _permitted(self, guild_id: int | None, channel: object) -> bool:
        """The allow and deny lists: direct messages by ``direct_messages``; in a server the
        guild, and the channel (or a thread's parent channel)."""
        settings = self.settings
        if guild_id is None:
            return settings.direct_messages
        if guild_id in settings.denied_guilds:
            return False
        if settings.allowed_guilds and guild_id not in settings.allowed_guilds:
            return False
        ids = {getattr(channel, "id", None), getattr(channel, "parent_id", None)} - {None}
        if ids & set(settings.denied_channels):
            return False
        return not settings.allowed_channels or bool(ids & set(settings.allowed_channels))

    def _may_run(self, command: str, user_id: int) -> bool:
        return command not in self.settings.admin_commands or user_id in self.settings.admins

    async def _answer(
        self,
        message: discord.Message,
        events: ReplyStream | AsyncGenerator[ReplyEvent, None],
        *,
        thread: str | None = None,
    ) -> None:
        """Show one reply in the message's channel, or in a new thread on it named ``thread``,
        typing while the model works."""
        target: discord.abc.Messageable = message.channel
        reference: discord.MessageReference | None = message.to_reference(fail_if_not_exists=False)
        if thread is not None:
            try:
                opened = await message.create_thread(name=thread)
            except discord.HTTPException as error:
                _log_failure("no thread could be opened; answering in the channel", error, message)
            else:
                target, reference = opened, None
                self._own_threads.first_time(opened.id)  # the message's id too
                self._last_seen.saw(opened.id, opened.id, remember=True)
        reply = StreamedReply(target, reference=reference, interval=self.settings.edit_interval)
        shown = asyncio.create_task(reply.run())
        typing = asyncio.create_task(keep_typing(target))
        notices: list[str] = []
        try:
            with self.context.metrics.track(self.context.name) as tracker:
                async with aclosing(events):
                    async for event in events:
                        tracker.observe(event)
                        if isinstance(event, Notice):  # after the reply, which is finished
                            notices.append(event.text)
                            continue
                        if shown.done():
                            break  # Discord refused the reply: closing the stream stops it
                        _render(reply, event)
                        if isinstance(event, Reply | ReplyError):
                            typing.cancel()  # what follows (notices) is quick, not the model
            reply.finish()
            await shown
            if notices:
                await reply.add_note(note_text(notices))
        except discord.HTTPException as error:
            _log_failure("a reply could not be shown", error, message)
        except Exception:
            _log_failure("a reply failed", None, message)
        finally:
            typing.cancel()
            shown.cancel()

    # -- slash commands ------------------------------------------------------------------------

    async def _sync_commands(self, client: _Client) -> None:
        """Make every chatcore command a slash command and tell Discord (a global sync)."""
        commands = self.chat.commands()
        for info in commands[:MAX_SLASH_COMMANDS]:
            if _SLASH_NAME.match(info.name):
                client.tree.add_command(self._slash_command(info))
            else:
                log.warning("/%s cannot be a Discord slash command (name)", info.name)
        if len(commands) > MAX_SLASH_COMMANDS:
            log.warning("Discord takes %d slash commands; the rest left out", MAX_SLASH_COMMANDS)
        try:
            await client.tree.sync()
        except discord.HTTPException as error:
            _log_failure("the slash commands could not be synced", error)

    def _slash_command(self, info: CommandInfo) -> app_commands.Command[Any, Any, None]:
        name = info.name

        @app_commands.describe(text="What follows the command, if anything")
        async def callback(interaction: discord.Interaction, text: str = "") -> None:
            await self._on_slash_command(interaction, name, text)

        description = (info.help.strip() or name)[:100]
        return app_commands.Command(name=name, description=description, callback=callback)

    async def _on_slash_command(
        self, interaction: discord.Interaction, name: str, text: str
    ) -> None:
        """Answer ``/name text`` through the chat, in one or more messages that only the user
        sees unless the command is one of ``public_commands``."""
        if not self._seen.first_time(interaction.id):
            return
        refusal = None
        if self.context.stopping.is_set():
            refusal = SHUTTING_DOWN
        elif not self._permitted(interaction.guild_id, interaction.channel):
            refusal = NOT_HERE
        elif not self._may_run(name, interaction.user.id):
            refusal = ADMINS_ONLY.format(name=name)
        if refusal is not None:
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        incoming = Message(
            text=f"/{name} {text}".strip(),
            user=str(interaction.user.id),
            channel=str(interaction.channel_id),
            platform=PLATFORM,
            id=str(interaction.id),
            user_name=interaction.user.display_name,
        )
        events = self.chat.send(incoming)  # before any await: arrival order is handling order
        ephemeral = name not in self.settings.public_commands
        try:
            with self.context.metrics.track(self.context.name) as tracker:
                async with aclosing(events):
                    await interaction.response.defer(ephemeral=ephemeral, thinking=True)
                    text = await _whole_text(events, tracker)
            parts = split_message(text) or ["(no reply)"]
            await interaction.edit_original_response(content=parts[0])
            for part in parts[1:]:
                await interaction.followup.send(part, ephemeral=ephemeral)
        except discord.HTTPException as error:
            _log_failure(f"/{name} could not be answered", error, interaction)


def _render(reply: StreamedReply, event: ReplyEvent) -> None:
    """Put one reply event into the Discord reply."""
    if isinstance(event, ReplyChunk):
        reply.append(event.text)
    elif isinstance(event, Reply):
        if not event.streamed:
            reply.append(event.text)
        reply.finish(f"_{CUT_SHORT}_" if event.finish_reason == "length" else "")
    elif isinstance(event, ReplyError):
        reply.finish(f"_{discord.utils.escape_markdown(event.text)}_")


async def _whole_text(events: ReplyStream, tracker: ReplyTracker) -> str:
    """A command's reply as one text (the error's text for an error)."""
    parts: list[str] = []
    async for event in events:
        tracker.observe(event)
        if isinstance(event, ReplyChunk):
            parts.append(event.text)
        elif isinstance(event, Reply):
            if not event.streamed:
                parts.append(event.text)
            if event.finish_reason == "length":
                parts.append(f"\n\n_{CUT_SHORT}_")
        elif isinstance(event, ReplyError):
            parts.append(f"\n\n_{discord.utils.escape_markdown(event.text)}_")
        elif isinstance(event, Notice):
            parts.append(f"\n{note_text([event.text])}")
    return "".join(parts).strip()


async def _refusal(message_id: str, text: str) -> AsyncGenerator[ReplyEvent, None]:
    yield ReplyError(message_id, "command_failed", text)


def _opens_thread(message: discord.Message) -> bool:
    """Whether a thread can be opened on ``message``: one in a server's text channel."""
    return message.guild is not None and isinstance(message.channel, discord.TextChannel)


def _thread_name(text: str) -> str:
    """A thread's name (at most 100 characters): the first line of the message opening it."""
    name = re.sub(r"\s+", " ", text.strip().split("\n")[0]).strip()
    return (name[:97] + "...") if len(name) > 100 else (name or "chat")


def _without_mentions(message: discord.Message, bot_id: int) -> str:
    """The message's text with the bot's mention taken out and other users' shown by name."""
    text = re.sub(rf"<@!?{bot_id}>", "", message.content)
    for user in message.mentions:
        if user.id != bot_id:
            text = re.sub(rf"<@!?{user.id}>", f"@{user.display_name}", text)
    return text.strip()


def _log_failure(what: str, error: BaseException | None, source: object = None) -> None:
    """Log a failure with a reference (what Discord said, never sent to anyone)."""
    reference = uuid.uuid4().hex[:8]
    where = f" ({type(source).__name__} {getattr(source, 'id', '')})" if source else ""
    if error is None:
        log.exception("discord: %s%s (ref %s)", what, where, reference)
    else:
        log.error("discord: %s%s (ref %s): %s", what, where, reference, error)


def _raise_start_error(connection: asyncio.Task[None], *, served: bool) -> None:
    """The gateway connection ended by itself: a refusal before the bot ever served is an
    ``AdapterStartError`` (exit code 2); anything else, and any refusal after it served (a
    token revoked while running), is raised as a crash: the other adapters keep serving."""
    error = connection.exception()
    if served and error is not None:
        raise RuntimeError(f"Discord closed the connection for good: {error}") from error
    if isinstance(error, discord.PrivilegedIntentsRequired):
        raise AdapterStartError(
            "Discord refused the Message Content intent: turn on Message Content Intent on "
            "the Bot page of your application in the Discord developer portal"
        ) from None
    if isinstance(error, discord.ConnectionClosed) and error.code == 4004:
        raise AdapterStartError(
            f"Discord's gateway rejected the token: set {TOKEN_ENV} to your bot's token"
        ) from None
    if error is not None:
        raise error


@contextmanager
def _endpoints(api_base: str, gateway_url: str) -> Iterator[None]:
    """Point discord.py at another API and gateway (``api_base``, ``gateway_url``: a
    self-hosted Discord-compatible server, or the tests' fake) while the adapter runs.

    discord.py has no per-client setting for this: it reads two class attributes, ``Route.BASE``
    (which its own ``_set_api_version`` sets) and ``DiscordWebSocket.DEFAULT_GATEWAY``. They are
    set here and restored after, and left alone when both settings are empty (Discord)."""
    saved = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    try:
        if api_base:
            Route.BASE = api_base
        if gateway_url:
            DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
        yield
    finally:
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved
