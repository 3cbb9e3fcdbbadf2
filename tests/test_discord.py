"""The Discord adapter, driving the real discord.py client against a fake Discord on loopback
(tests/fake_discord.py): answering, streaming, splitting, rate limits, gateway drops, slash
commands, allow and deny lists, tokens, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from chatcore import hookimpl
from chatcore.adapter_api import AdapterStartError
from chatcore.adapters.discord import DiscordSettings
from chatcore.app import App
from chatcore.commands import Command
from chatcore.config import ConfigError, load_settings, section_settings
from chatcore.generation.fake import FakeBackend
from tests.conftest import AppFactory, make_settings
from tests.fake_discord import (
    ALICE,
    BOT,
    BOT_ID,
    CHANNEL_ID,
    DM_CHANNEL_ID,
    GUILD_ID,
    OTHER_BOT,
    OTHER_CHANNEL_ID,
    TOKEN,
    USER_ID,
    FakeDiscord,
    guild,
    thread,
)

MENTION = f"<@{BOT_ID}>"
SHUTDOWN_NOTICE = "_Stopped: the bot is shutting down. What was written so far is kept._"


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    async with FakeDiscord() as fake:
        yield fake


@asynccontextmanager
async def bot(
    new_app: AppFactory,
    home: Path,
    server: FakeDiscord,
    backend: FakeBackend | None = None,
    plugins: dict[str, object] | None = None,
    **section: Any,
) -> AsyncIterator[App]:
    """A running app whose Discord adapter is connected to ``server``; stopped at the end."""
    settings = make_settings(home, adapters={"discord": server.settings(**section)})
    app = await new_app(settings, backend=backend or FakeBackend())
    for name, plugin in (plugins or {}).items():
        app.plugins.add_plugin(plugin, name)
        await app.plugins.collect(name)
    task = asyncio.create_task(app.adapter("discord").run())
    try:
        connected = asyncio.create_task(server.connected())
        await asyncio.wait([connected, task], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            connected.cancel()
            task.result()  # raises what stopped the adapter
            pytest.fail("the adapter ended before it connected")
        await connected
        yield app
    finally:
        app.request_stop()
        assert await asyncio.wait_for(task, 15) == 0


async def answered(server: FakeDiscord, asked: int, text: str) -> list[dict[str, Any]]:
    """Wait until the reply to message ``asked`` reads ``text`` (over however many messages)."""

    def whole() -> list[dict[str, Any]] | None:
        parts = server.replies_to(asked)
        return parts if "\n".join(p["content"] for p in parts) == text else None

    return await server.wait_until(whole, f"the reply {text[:40]!r}")


def words(text: str) -> list[str]:
    return [text.split(" ")[0], *(" " + w for w in text.split(" ")[1:])]


# -- answering ---------------------------------------------------------------------------------


async def test_a_mention_gets_a_streamed_reply_edited_at_most_once_per_interval(
    isolated_env: Path, new_app: AppFactory, server: FakeDiscord
) -> None:
    interval = 0.25
    backend = FakeBackend(delay=0.02)
    text = " ".join(f"w{i}" for i in range(60))
    backend.enqueue(words(text))
    async with bot(new_app, isolated_env, server, backend, edit_interval=interval):
        asked = await server.post(f"{MENTION} talk to me", mentions=[BOT])
        (reply,) = await answered(server, asked, text)
    mid = reply["id"]
    posts = server.calls("POST", f"/channels/{CHANNEL_ID}/messages", status=200)
    edits = server.calls("PATCH", f"/channels/{CHANNEL_ID}/messages/{mid}", status=200)
    typing = server.calls("POST", f"/channels/{CHANNEL_ID}/typing")
    assert len(posts) == 1 and posts[0].body["message_reference"]["message_id"] == asked
    assert typing and typing[0].at < edits[-1].at  # typing shows while the model works
    assert reply["versions"][0] != text and reply["versions"][-1] == text  # it streamed
    changes = [posts[0].at, *(edit.at for edit in edits)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(changes)]
    assert edits and min(gaps) >= interval - 0.01, gaps
    assert len(edits) <= (changes[-1] - changes[0]) / interval + 1
    assert backend.calls[0].messages[-1].content == "talk to me"  # the mention is taken out


async def test_a_direct_message_gets_a_reply(
    isolated_env: Path, new_app: AppFactory, server: FakeDiscord
) -> None:
    async with bot(new_app, isolated_env, server) as app:
        asked = await server.post("hi in private", channel_id=DM_CHANNEL_ID, guild_id=None)
        await answered(server, asked, "You said: hi in private")
        history = await app.engine.store.history(_key(DM_CHANNEL_ID))
        scrape = app.metrics.render()[0].decode()
    assert [m.content for m in history] == ["hi in private", "You said: hi in private"]
    # The app's one set of metrics counts Discord's traffic, beside the other adapters'.
    assert 'chatcore_messages_total{adapter="discord"} 1.0' in scrape
    assert 'chatcore_replies_total{adapter="discord"} 1.0' in scrape


def _key(channel: int, user: int = USER_ID) -> Any:
    from chatcore.events import ConversationKey

    return ConversationKey("discord", str(channel), str(user))


async def test_no_reply_to_bots_to_itself_or_to_messages_not_addressed_to_it(
    isolated_env: Path, new_app: AppFactory, server: FakeDiscord
) -> None:
    backend = FakeBackend()
    async with bot(new_app, isolated_env, server, backend):
        await server.post(f"{MENTION} from a bot", author=OTHER_BOT, mentions=[BOT])
        await server.post(f"{MENTION} from itself", author=BOT, mentions=[BOT])
        await server.post("not addressed to the bot")
        await server.post("@everyone hello", mention_everyone=True)
        asked = await server.post(f"{MENTION} last", mentions=[BOT])  # answered: a barrier
        await answered(server, asked, "You said: last")
    # Messages are taken in the order they arrive: had any before been taken, the model would
    # have been asked before the last one.
    assert [call.messages[-1].content for call in backend.calls] == ["last"]
    assert len(server.messages) == 1


async def test_the_bot_answers_in_threads_it_started_without_a_mention(
    isolated_env: Path, new_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    own, other = 500000000000000001, 500000000000000002
    threads = [thread(own, owner_id=BOT_ID), thread(other, owner_id=USER_ID)]
    backend = FakeBackend()
    async with (
        FakeDiscord(guilds=[guild(threads=threads)]) as server,
        bot(new_app, isolated_env, server, backend),
    ):
        await server.post("in someone else's thread", channel_id=other)
        asked = await server.post("in the bot's thread", channel_id=own)
        await answered(server, asked, "You said: in the bot's thread")
    assert [call.messages[-1].content for call in backend.calls] == ["in the bot's thread"]
    assert server.messages[next(iter(server.messages))]["channel_id"] == str(own)


async def test_reply_in_thread_opens_a_thread_and_the_conversation_goes_on_there(
    isolated_env: Path, new_app: AppFactory, server: FakeDiscord
) -> None:
    async with bot(new_app, isolated_env, server, reply_in_thread=True) as app:
        asked = await server.post(f"{MENTION} plan my   trip\nto Rome", mentions=[BOT])
        await server.wait_until(lambda: server.messages, "the reply")
        (opened,) = server.calls("POST", rf"/channels/{CHANNEL_ID}/messages/{asked}/threads")
        assert opened.body["name"] == "plan my trip"
        follow_up = await server.post("and Naples?", channel_id=asked)  # no mention needed
        await answered(server, follow_up, "You said: and Naples?")
        history = await app.engine.store.history(_key(asked))
    first = next(iter(server.messages.values()))
    assert (
        first["channel_id"] == str(asked)
        and first["content"] == "You said: plan my   trip\nto Rome"
    )
    assert [m.content for m in history][::2] == ["plan my   trip\nto Rome", "and Naples?"]


# -- long replies, rate limits -----------------------------------------------------------------

LONG_REPLY = (
    "Here is the program.\n\n"
    + "```python\n"
    + "\n".join(f"print('line {i:03}')  # {'x' * 40}" for i in range(120))
    + "\n```\n\n"
    + " ".join(f"word{i}" for i in range(300))
)


async def test_a_long_reply_is_split_under_2000_characters_with_code_blocks_reopened(
    isolated_env: Path, new_app: AppFactory, server: FakeDiscord
) -> None:
    backend = FakeBackend()
    backend.enqueue(LONG_REPLY[i : i + 100] for i in range(0, len(LONG_REPLY), 100))
    async with bot(new_app, isolated_env, server, backend, edit_interval=0.1):
        asked = await server.post(f"{MENTION} write a program", mentions=[BOT])
        parts = await server.wait_until(
            lambda: (p := server.replies_to(asked)) and p[-1]["content"].endswith("word299") and p,
            "the whole reply",
        )
    texts = [p["content"] for p in parts]
    assert len(texts) >= 4 and all(len(t) <= 2000 for t in texts)
    assert all(t.count("```") % 2 == 0 for t in texts)  # every part's code block is closed
    assert texts[1].startswith("```python\nprint(") and texts[1].endswith("\n```")
    code_lines = [line for t in texts for line in t.splitlines() if line.startswith("print(")]
    assert code_lines == [line for line in LONG_REPLY.splitlines() if line.startswith("print(")]
    squashed = re.compile(r"```(python)?|\s")
    assert squashed.sub("", "".join(texts)) == squashed.sub("", LONG_REPLY)


class _MentioningNotice:
    """A plugin whose notice holds mentions and markdown, as a user's words can."""

    @hookimpl
    def reply_finished(self) -> str:
        return f"noted: <@{USER_ID}> @everyone *bold* __under__"


async def test_a_notice_is_added_under_the_reply_as_small_escaped_text(
    isolated_env: Path, new_app: AppFactory, server: FakeDiscord
) -> None:
    plugins = {"mentioning": _MentioningNotice()}
    async with bot(new_app, isolated_env, server, plugins=plugins, edit_interval=0.1):
        asked = await server.post(f"{MENTION} call me Sam", mentions=[BOT])
        (reply,) = await server.wait_until(
            lambda: (p := server.replies_to(asked)) and p[0]["content"].count("-# ") == 2 and p,
            "the reply with its notes",
        )
    lines = reply["content"].split("\n")
    assert lines[0] == "You said: call me Sam"
    assert sorted(lines[1:]) == sorted(
        [
            "-# noted: I'll call you Sam — say \"don't call me Sam\" to undo.",
            f"-# noted: <@{USER_ID}> @everyone \\*bold\\* \\_\\_under\\_\\_",
        ]
    )
    assert reply["versions"][-2] == "You said: call me Sam"  # the reply first, then its notes
    sent = [
        *server.calls("POST", f"/channels/{CHANNEL_ID}/messages"),
        *server.calls("PATCH", rf"/channels/{CHANNEL_ID}/messages/\d+"),
    ]
    assert len(sent) >= 2
    assert all(r.body["allowed_mentions"]["parse"] == [] for r in sent)  # nobody is pinged


async def test_a_notice_that_does_not_fit_the_last_message_follows_it(
    isolated_env: Path, new_app: AppFactory, server: FakeDiscord
) -> None:
    backend = FakeBackend()
    long = "my dog is called Rex " + "x" * 1980  # the reply echoes it: 1,990 characters
    backend.enqueue(["You said: " + long[:1980]])
    async with bot(new_app, isolated_env, server, backend, edit_interval=0.1):
        asked = await server.post(f"{MENTION} my dog is called Rex", mentions=[BOT])
        parts = await server.wait_until(
            lambda: (p := server.replies_to(asked)) and len(p) == 2 and p,
            "the reply and a note after it",
        )
    assert parts[0]["content"] == "You said: " + long[:1980]
    assert re.fullmatch(
        r"-# noted: The user's dog is called Rex\. — memory \d+; /forget \d+ undoes it\.",
        parts[1]["content"],
    )
    assert all(len(p["content"]) <= 2000 for p in parts)


async def test_rate_limits_are_waited_out_with_nothing_lost_or_doubled(
    isolated_env: Path, new_app: AppFactory, server: FakeDiscord
) -> None:
    backend = FakeBackend(delay=0.01)
    text = " ".join(f"r{i}" for i in range(40))
    backend.enqueue(words(text))
    server.fail_next("POST", rf"/channels/{CHANNEL_ID}/messages", retry_after=0.3)
    server.fail_next("PATCH", rf"/channels/{CHANNEL_ID}/messages/\d+", retry_after=0.2, times=2)
    server.fail_next("POST", rf"/channels/{CHANNEL_ID}/typing", retry_after=0.1)
    async with bot(new_app, isolated_env, server, backend, edit_interval=0.1):
        asked = await server.post(f"{MENTION} go", mentions=[BOT])
        (reply,) = await answered(server, asked, text)
    posts = server.calls("POST", f"/channels/{CHANNEL_ID}/messages")
    assert [p.status for p in posts] == [429, 200]  # retried once, created once
    patches = server.calls("PATCH", rf"/channels/{CHANNEL_ID}/messages/\d+")
    assert [p.status for p in patches].count(429) == 2
    assert len(server.messages) == 1 and reply["versions"][-1] == text


async def test_a_channel_where_the_bot_may_not_write_is_logged_and_it_goes_on(
    isolated_env: Path,
    new_app: AppFactory,
    server: FakeDiscord,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = FakeBackend(delay=0.01)
    backend.enqueue([f" w{i}" for i in range(1000)])
    server.fail_next("POST", rf"/channels/{OTHER_CHANNEL_ID}/messages", status=403)
    server.fail_next("POST", rf"/channels/{OTHER_CHANNEL_ID}/typing", status=403)
    async with bot(new_app, isolated_env, server, backend) as app:
        await server.post(f"{MENTION} here?", channel_id=OTHER_CHANNEL_ID, mentions=[BOT])
        asked = await server.post(f"{MENTION} and here?", mentions=[BOT])
        await answered(server, asked, "You said: and here?")
        history = await app.engine.store.history(_key(OTHER_CHANNEL_ID))
    assert "discord: a reply could not be shown (Message " in caplog.text
    assert "403 Forbidden" in caplog.text
    assert len(history) == 2 and len(history[1].content.split()) < 1000  # the reply was stopped


# -- the gateway -------------------------------------------------------------------------------


async def test_a_dropped_gateway_resumes_and_no_message_is_answered_twice_or_lost(
    isolated_env: Path, new_app: AppFactory, server: FakeDiscord
) -> None:
    backend = FakeBackend()
    async with bot(new_app, isolated_env, server, backend):
        first = await server.post(f"{MENTION} one", mentions=[BOT])
        await answered(server, first, "You said: one")

        await server.force_close(4000)  # the connection drops ...
        missed = await server.post(f"{MENTION} two", mentions=[BOT])  # ... while this is sent
        await server.wait_until(lambda: server.resumes == 1, "a RESUME")
        await answered(server, missed, "You said: two")  # replayed on RESUME, not lost

        again = next(e for e in server.sent_events() if e["d"].get("id") == str(first))
        await server.dispatch("MESSAGE_CREATE", again["d"])  # delivered a second time

        await server.send_op(7)  # RECONNECT: Discord asks the client to reconnect and resume
        third = await server.post(f"{MENTION} three", mentions=[BOT])
        await server.wait_until(lambda: server.resumes == 2, "a RESUME after op 7")
        await answered(server, third, "You said: three")

        await server.send_op(9, False)  # INVALID_SESSION: the client must IDENTIFY anew
        await server.connected(identifies=2)  # discord.py waits 5 s before identifying again
        fourth = await server.post(f"{MENTION} four", mentions=[BOT])
        await answered(server, fourth, "You said: four")
    assert [call.messages[-1].content for call in backend.calls] == ["one", "two", "three", "four"]
    assert all(len(server.replies_to(m)) == 1 for m in (first, missed, third, fourth))
    assert server.gateway_ops.count(6) == 2 and server.gateway_ops.count(2) == 2


async def test_a_message_sent_while_the_session_was_invalidated_is_answered_once_after_ready(
    isolated_env: Path, new_app: AppFactory, server: FakeDiscord
) -> None:
    backend = FakeBackend()
    async with bot(new_app, isolated_env, server, backend):
        first = await server.post(f"{MENTION} one", mentions=[BOT])
        await answered(server, first, "You said: one")
        dm = await server.post("dm one", channel_id=DM_CHANNEL_ID, guild_id=None)
        await answered(server, dm, "You said: dm one")

        await server.send_op(9, False)  # INVALID_SESSION: nothing sent meanwhile is replayed
        # The client cannot have identified again yet: these are posted before the fake runs.
        missed = await server.post(f"{MENTION} two", mentions=[BOT])
        await server.post("not for the bot")
        await server.post(f"{MENTION} from a bot", author=OTHER_BOT, mentions=[BOT])
        missed_dm = await server.post("dm two", channel_id=DM_CHANNEL_ID, guild_id=None)
        await server.connected(identifies=2)
        # Live, right after the new READY: held until the channel is caught up, and read back
        # from the history too; answered once.
        between = await server.post(f"{MENTION} between", mentions=[BOT])
        await answered(server, missed, "You said: two")
        await answered(server, missed_dm, "You said: dm two")
        await answered(server, between, "You said: between")
        again = await server.post(f"{MENTION} three", mentions=[BOT])  # the live path as usual
        await answered(server, again, "You said: three")
    asked = [call.messages[-1].content for call in backend.calls]
    assert sorted(asked) == sorted(["one", "dm one", "two", "dm two", "between", "three"])
    assert asked.index("two") < asked.index("between")  # a channel's messages in their order
    assert all(len(server.replies_to(m)) == 1 for m in (first, dm, missed, missed_dm, between))
    assert server.gateway_ops.count(6) == 0 and server.gateway_ops.count(2) == 2  # no RESUME
    for channel in (CHANNEL_ID, DM_CHANNEL_ID):  # each read back once
        assert len(server.calls("GET", rf"/channels/{channel}/messages", status=200)) == 1
    assert server.calls("GET", rf"/channels/{DM_CHANNEL_ID}", status=200)  # not in the cache


async def test_a_channel_whose_history_is_refused_is_logged_and_the_others_are_caught_up(
    isolated_env: Path,
    new_app: AppFactory,
    server: FakeDiscord,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = FakeBackend()
    async with bot(new_app, isolated_env, server, backend):
        here = await server.post(f"{MENTION} here", mentions=[BOT])
        await answered(server, here, "You said: here")
        there = await server.post(f"{MENTION} there", channel_id=OTHER_CHANNEL_ID, mentions=[BOT])
        await answered(server, there, "You said: there")

        server.fail_next("GET", rf"/channels/{OTHER_CHANNEL_ID}/messages", status=403)
        await server.send_op(9, False)
        lost = await server.post(f"{MENTION} lost", channel_id=OTHER_CHANNEL_ID, mentions=[BOT])
        missed = await server.post(f"{MENTION} missed", mentions=[BOT])
        await server.connected(identifies=2)
        await answered(server, missed, "You said: missed")
        await server.wait_until(
            lambda: server.calls("GET", rf"/channels/{OTHER_CHANNEL_ID}/messages", status=403),
            "the refused read",
        )
        later = await server.post(f"{MENTION} later", channel_id=OTHER_CHANNEL_ID, mentions=[BOT])
        await answered(server, later, "You said: later")  # the channel is served again
    assert [call.messages[-1].content for call in backend.calls] == [
        "here",
        "there",
        "missed",
        "later",
    ]
    assert server.replies_to(lost) == []
    assert (
        f"discord: the messages missed in channel {OTHER_CHANNEL_ID} could not be read (ref "
        in caplog.text
    )
    assert "403 Forbidden" in caplog.text


async def test_at_most_100_missed_messages_per_channel_are_read_back_with_a_warning(
    isolated_env: Path,
    new_app: AppFactory,
    server: FakeDiscord,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = FakeBackend()
    async with bot(new_app, isolated_env, server, backend):
        first = await server.post(f"{MENTION} first", mentions=[BOT])
        await answered(server, first, "You said: first")

        await server.send_op(9, False)
        oldest = await server.post(f"{MENTION} oldest", mentions=[BOT])
        for i in range(99):
            await server.post(f"chatter {i}")
        too_late = await server.post(f"{MENTION} the 101st", mentions=[BOT])
        await server.connected(identifies=2)
        await answered(server, oldest, "You said: oldest")
        last = await server.post(f"{MENTION} last", mentions=[BOT])  # live, after the catch-up
        await answered(server, last, "You said: last")
    assert [call.messages[-1].content for call in backend.calls] == ["first", "oldest", "last"]
    assert server.replies_to(too_late) == []
    reads = server.calls("GET", rf"/channels/{CHANNEL_ID}/messages", status=200)
    assert len(reads) == 2  # a page of 100, then one more to know that more were missed
    assert (
        f"more than 100 messages were missed in channel {CHANNEL_ID} while the bot was away"
        in caplog.text
    )


def test_the_channels_remembered_are_the_most_recently_active_with_their_newest_message() -> None:
    from chatcore.adapters.discord_bot import _LastSeen

    seen = _LastSeen(size=2)
    seen.saw(1, 10, remember=False)  # not addressed there: not remembered
    assert len(seen) == 0
    seen.saw(1, 11, remember=True)
    seen.saw(2, 20, remember=True)
    seen.saw(1, 15, remember=False)  # any message in a remembered channel moves it on
    seen.saw(1, 12, remember=False)  # an older one does not
    assert seen.channels() == [1, 2] and seen.get(1) == 15
    seen.saw(3, 30, remember=True)  # the least recently active is forgotten
    assert seen.channels() == [3, 1] and seen.get(2) is None


# -- slash commands ----------------------------------------------------------------------------


class _Shout:
    @hookimpl
    def register_commands(self, register: Any) -> None:
        register(Command("shout", "say it loud", lambda context: context.args.upper() + "!"))


async def test_every_command_is_a_slash_command_answered_only_to_the_user(
    isolated_env: Path, new_app: AppFactory, server: FakeDiscord
) -> None:
    async with bot(new_app, isolated_env, server, plugins={"shout": _Shout()}):
        synced = {c["name"]: c for c in server.commands}
        assert set(synced) == {
            "forget-me",
            "help",
            "prefs",
            "reset",
            "shout",
            "remember",
            "memories",
            "forget",
        }
        assert synced["shout"]["description"] == "say it loud"
        assert [o["name"] for o in synced["shout"]["options"]] == ["text"]

        token = await server.slash("shout", "hello")
        (answer,) = await server.wait_until(
            lambda: [m for m in server.interaction_messages(token) if m["content"]], "an answer"
        )
        help_token = await server.slash("help")
        (listing,) = await server.wait_until(
            lambda: [m for m in server.interaction_messages(help_token) if m["content"]], "help"
        )
    (callback,) = server.calls("POST", rf"/interactions/\d+/{token}/callback")
    assert callback.body == {"type": 5, "data": {"flags": 64}}  # "thinking", ephemeral
    assert answer["content"] == "HELLO!" and answer["flags"] == 64
    assert "/shout - say it loud" in listing["content"]


async def test_admin_commands_are_refused_to_others_and_public_commands_are_public(
    isolated_env: Path, new_app: AppFactory, server: FakeDiscord
) -> None:
    admin = {"id": "400000000000000007", **{k: v for k, v in ALICE.items() if k != "id"}}
    section = {
        "admins": [int(admin["id"])],
        "admin_commands": ["reset"],
        "public_commands": ["help"],
    }
    async with bot(new_app, isolated_env, server, **section):
        refused = await server.slash("reset")
        allowed = await server.slash("reset", who=admin)
        public = await server.slash("help")
        await server.wait_until(
            lambda: all(
                any(m["content"] for m in server.interaction_messages(t))
                for t in (refused, allowed, public)
            ),
            "three answers",
        )
        mentioned = await server.post(f"{MENTION} /reset", mentions=[BOT])
        await answered(server, mentioned, "_Only the bot's admins can use /reset._")
        # A control character in front does not sneak past the check (the engine drops it).
        sneaky = await server.post(f"{MENTION} \x07/reset", mentions=[BOT])
        await answered(server, sneaky, "_Only the bot's admins can use /reset._")
    (refusal,) = server.interaction_messages(refused)
    assert refusal["content"] == "Only the bot's admins can use /reset." and refusal["flags"] == 64
    assert server.interaction_messages(allowed)[0]["content"].startswith("Nothing to reset")
    (public_call,) = server.calls("POST", rf"/interactions/\d+/{public}/callback")
    assert public_call.body == {"type": 5}  # not ephemeral


# -- allow and deny lists ----------------------------------------------------------------------

WHERE = {"general": CHANNEL_ID, "random": OTHER_CHANNEL_ID, "dm": DM_CHANNEL_ID}


@pytest.mark.parametrize(
    ("section", "answered_in"),
    [
        ({"allowed_channels": [CHANNEL_ID]}, {"general", "dm"}),
        ({"denied_channels": [CHANNEL_ID]}, {"random", "dm"}),
        ({"allowed_guilds": [GUILD_ID + 1]}, {"dm"}),
        ({"denied_guilds": [GUILD_ID], "allowed_guilds": [GUILD_ID]}, {"dm"}),
        ({"direct_messages": False}, {"general", "random"}),
    ],
)
async def test_allow_and_deny_lists(
    isolated_env: Path,
    new_app: AppFactory,
    server: FakeDiscord,
    section: dict[str, Any],
    answered_in: set[str],
) -> None:
    backend = FakeBackend()
    async with bot(new_app, isolated_env, server, backend, **section):
        order = sorted(WHERE, key=lambda name: name in answered_in)  # refused ones first
        for name in order:
            guild_id = None if name == "dm" else GUILD_ID
            await server.post(
                f"{MENTION} {name}", channel_id=WHERE[name], guild_id=guild_id, mentions=[BOT]
            )
        await server.wait_until(lambda: len(server.messages) == len(answered_in), "the answers")
    assert {call.messages[-1].content for call in backend.calls} == answered_in
    assert len(backend.calls) == len(answered_in)


# -- tokens, shutdown --------------------------------------------------------------------------


async def _chatcore_run(env: dict[str, str]) -> tuple[int, str]:
    """``chatcore run discord`` as a real process; its exit code and standard error."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatcore.cli",
        "run",
        "discord",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={
            **{k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"},
            "CHATCORE_MODEL__BACKEND": "fake",
            **env,
        },
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return await proc.wait(), err.decode()


async def test_a_missing_token_is_one_line_and_exit_code_2(isolated_env: Path) -> None:
    code, err = await _chatcore_run({})
    assert code == 2
    assert err == (
        "error: adapter 'discord': no Discord token: set DISCORD_TOKEN (or "
        "CHATCORE_ADAPTERS__DISCORD__TOKEN) to your bot's token from the Discord developer "
        "portal; see docs/discord.md\n"
    )


@pytest.mark.parametrize("variable", ["DISCORD_TOKEN", "CHATCORE_ADAPTERS__DISCORD__TOKEN"])
async def test_a_rejected_token_is_one_line_and_exit_code_2(
    isolated_env: Path, server: FakeDiscord, variable: str
) -> None:
    code, err = await _chatcore_run(
        {variable: "not-the-token", "CHATCORE_ADAPTERS__DISCORD__API_BASE": server.api_base}
    )
    assert code == 2
    assert err == (
        "error: adapter 'discord': Discord rejected the token (401 Unauthorized): set "
        "DISCORD_TOKEN to the token "
        "on the Bot page of your application in the Discord developer portal\n"
    )
    (login,) = server.calls("GET", "/users/@me")
    assert login.status == 401


async def test_a_refused_message_content_intent_stops_the_start(
    isolated_env: Path, new_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    async with FakeDiscord(message_content=False) as server:
        settings = make_settings(isolated_env, adapters={"discord": server.settings()})
        app = await new_app(settings, backend=FakeBackend())
        with pytest.raises(AdapterStartError) as caught:
            await asyncio.wait_for(app.adapter("discord").run(), 15)
    assert str(caught.value).startswith(
        "Discord refused the Message Content intent: turn on Message Content Intent"
    )


def test_the_token_is_refused_in_a_file(isolated_env: Path, tmp_path: Path) -> None:
    config = tmp_path / "bot.toml"
    config.write_text('[adapters.discord]\nenabled = true\ntoken = "abc"\n')
    with pytest.raises(ConfigError) as caught:
        section_settings(load_settings(config), "discord", DiscordSettings)
    assert caught.value.lines == [
        f"config error: adapters.discord.token is a secret and must not be in {config}; remove "
        "it there and set the environment variable CHATCORE_ADAPTERS__DISCORD__TOKEN instead"
    ]


async def test_a_shutdown_ends_the_reply_in_flight_with_the_notice(
    isolated_env: Path, new_app: AppFactory, server: FakeDiscord
) -> None:
    backend = FakeBackend(delay=0.02)
    backend.enqueue([f" w{i}" for i in range(1000)])
    async with bot(new_app, isolated_env, server, backend, edit_interval=0.1) as app:
        asked = await server.post(f"{MENTION} talk", mentions=[BOT])
        await server.wait_until(
            lambda: (r := server.replies_to(asked)) and len(r[0]["versions"]) > 2, "some text"
        )
        app.request_stop()  # what the first signal does; the adapter returns 0 (bot() checks)
    (reply,) = server.replies_to(asked)
    assert reply["content"].startswith(" w0 w1") and reply["content"].endswith(SHUTDOWN_NOTICE)
    assert "w999" not in reply["content"]
