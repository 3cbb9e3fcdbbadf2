"""Skills as the engine runs them, on the fake backend with test skills registered by a test
plugin: routing ``/name``, ``--help`` and ``/help``, options, ``generate`` through the backend
and the output steps, the stored turn, containment of a failing skill, name collisions, and the
example in docs/plugins.md."""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from chatcore import hookimpl
from chatcore.app import App, AppChat
from chatcore.commands import Command
from chatcore.events import Message, Reply, ReplyChunk, ReplyError, ReplyEvent
from chatcore.generation.fake import FakeBackend
from chatcore.generation.types import GenerationError
from chatcore.memory.base import UserKey
from chatcore.pipeline.steps import RewriterSpec
from chatcore.plugins import PluginHost
from chatcore.skills import Skill, SkillOption, SkillRequest, SkillUsageError
from tests.conftest import AppFactory, make_settings
from tests.test_pipeline_runner import Replace

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def msg(text: str) -> Message:
    return Message(text=text, user="alice", channel="c1", platform="test")


async def collect(app: App, text: str) -> list[ReplyEvent]:
    return [event async for event in app.engine.handle(msg(text))]


def chunks(events: Sequence[ReplyEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, ReplyChunk)]


async def echo(request: SkillRequest) -> AsyncIterator[str]:
    for _ in range(int(request.options["times"])):
        for word in request.text.split():
            yield word + " "


async def ask(request: SkillRequest) -> AsyncIterator[str]:
    async for piece in request.generate(f"Answer: {request.text}", max_new_tokens=8):
        yield piece


async def boom(request: SkillRequest) -> AsyncIterator[str]:
    yield "half "
    raise RuntimeError("the skill broke")


class TestSkills:
    """A plugin registering the test skills and a rewriter (``x`` to ``y``, off unless
    configured)."""

    __test__ = False

    def __init__(self) -> None:
        self.requests: list[SkillRequest] = []

    async def remember(self, request: SkillRequest) -> AsyncIterator[str]:
        self.requests.append(request)
        yield "ok"

    @hookimpl
    def register_skills(self, register: Any) -> None:
        register(
            Skill(
                "echo-skill",
                "say the text back",
                echo,
                options=(SkillOption("times", "how often", kind="int", default=1),),
                examples=("echo this back", "repeat after me"),
            )
        )
        register(Skill("ask", "ask the model", ask))
        register(Skill("boom", "always fails", boom))
        register(Skill("remember", "keeps its request", self.remember))

    @hookimpl
    def register_filters(self, register: Any) -> None:
        register(RewriterSpec("x_to_y", lambda s: Replace("x", "y")))


async def skills_app(
    new_app: AppFactory, home: Path, backend: FakeBackend, **steps: dict[str, object]
) -> tuple[App, TestSkills]:
    settings = make_settings(
        home,
        pipeline={"steps": {"x_to_y": {"enabled": False}, **steps}},
        plugins={"disabled": ["safety", "postprocess", "memory"]},
    )
    plugin = TestSkills()
    plugins = PluginHost()
    await plugins.load(settings, installed=[])  # the built-ins: /help lists the skills
    plugins.add_plugin(plugin, "test-skills")
    await plugins.collect("test-skills")
    app = await new_app(settings, plugins=plugins, backend=backend)
    await app.start()
    return app, plugin


async def test_a_skill_streams_its_pieces_and_its_turn_is_stored(
    new_app: AppFactory, isolated_env: Path
) -> None:
    backend = FakeBackend()
    app, _ = await skills_app(new_app, isolated_env, backend)
    events = await collect(app, "/echo-skill --times 2 one two")
    assert chunks(events) == ["one ", "two ", "one ", "two "]
    reply = events[-1]
    assert isinstance(reply, Reply) and reply.text == "one two one two " and reply.streamed
    assert backend.calls == []  # it never asked the model
    history = await app.engine.store.history(msg("").conversation)
    assert [(m.role, m.content) for m in history] == [
        ("user", "/echo-skill --times 2 one two"),
        ("assistant", "one two one two "),
    ]


async def test_help_shows_a_skill_and_lists_skills(new_app: AppFactory, isolated_env: Path) -> None:
    app, _ = await skills_app(new_app, isolated_env, FakeBackend())
    (shown,) = await collect(app, "/echo-skill --help")
    assert isinstance(shown, Reply)
    assert shown.text.splitlines()[0] == "/echo-skill - say the text back"
    assert "--times - how often (default 1)" in shown.text
    assert "  repeat after me" in shown.text
    (listed,) = await collect(app, "/help")
    assert isinstance(listed, Reply)
    assert "/echo-skill - say the text back" in listed.text and "/help - " in listed.text
    assert await app.engine.store.history(msg("").conversation) == []  # help is not a turn
    names = [info.name for info in AppChat(app).commands()]
    assert "echo-skill" in names and "help" in names


async def test_bad_options_say_what_to_change(new_app: AppFactory, isolated_env: Path) -> None:
    app, _ = await skills_app(new_app, isolated_env, FakeBackend())
    for text, problem in [
        ("/echo-skill --loud hi", "has no option --loud (options: --times)"),
        ("/echo-skill --times many hi", "--times takes a number (int), not 'many'"),
        ("/echo-skill --times", "--times needs a value"),
    ]:
        (error,) = await collect(app, text)
        assert isinstance(error, ReplyError) and error.code == "bad_options"
        assert problem in error.text and "/echo-skill --help" in error.text


async def test_generate_goes_through_the_backend_and_the_output_steps(
    new_app: AppFactory, isolated_env: Path
) -> None:
    backend = FakeBackend()
    app, _ = await skills_app(new_app, isolated_env, backend, x_to_y={"enabled": True})
    backend.enqueue(["xx ", "marks ", "the spot"])
    events = await collect(app, "/ask where is it")
    (call,) = backend.calls
    assert [(m.role, m.content) for m in call.messages] == [("user", "Answer: where is it")]
    assert call.options.max_new_tokens == 8
    assert "".join(chunks(events)) == "yy marks the spot"
    reply = events[-1]
    assert isinstance(reply, Reply) and reply.text == "yy marks the spot"
    assert reply.usage.completion_tokens == 3
    history = await app.engine.store.history(msg("").conversation)
    assert history[-1].content == "yy marks the spot"  # what was shown is what is kept


async def test_the_request_carries_history_and_preferences(
    new_app: AppFactory, isolated_env: Path
) -> None:
    backend = FakeBackend()
    app, plugin = await skills_app(new_app, isolated_env, backend)
    backend.enqueue(["hello back"])
    await collect(app, "hello")
    user = msg("").conversation
    await app.engine.store.set_preference(UserKey.of(user), "language", "German")
    await collect(app, "/remember -- --not-an-option")
    (request,) = plugin.requests
    assert request.text == "--not-an-option" and request.options == {}
    assert [m.content for m in request.history] == ["hello", "hello back"]
    assert request.preferences == {"language": "German"}
    assert request.count_tokens("three words here") >= 3 and request.prompt_budget > 0


async def test_a_skill_that_raises_is_contained_and_the_others_keep_working(
    new_app: AppFactory, isolated_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeBackend()
    app, _ = await skills_app(new_app, isolated_env, backend)
    events = await collect(app, "/boom now")
    assert chunks(events) == ["half "]
    error = events[-1]
    assert isinstance(error, ReplyError) and error.code == "skill_failed"
    reference = re.fullmatch(r"/boom failed \(ref (\w{8})\); it was logged\.", error.text)
    assert reference is not None
    assert any(reference.group(1) in r.getMessage() for r in caplog.records)
    assert "the skill broke" not in error.text
    history = await app.engine.store.history(msg("").conversation)
    assert history[-1].content == "half "  # what was shown is kept
    events = await collect(app, "/echo-skill still here")
    assert isinstance(events[-1], Reply) and events[-1].text == "still here "
    backend.enqueue(["chat works"])
    events = await collect(app, "and chat?")
    assert isinstance(events[-1], Reply) and events[-1].text == "chat works"


async def test_a_failing_model_is_reported_as_the_models_failure(
    new_app: AppFactory, isolated_env: Path
) -> None:
    backend = FakeBackend()
    app, _ = await skills_app(new_app, isolated_env, backend)
    backend.enqueue(["some ", GenerationError("the server went away")])
    events = await collect(app, "/ask anything")
    assert chunks(events) == ["some "]
    error = events[-1]
    assert isinstance(error, ReplyError) and error.code == "backend_error"
    assert app.plugins.infos["test-skills"].hook_errors == 0  # not the skill's fault


class Clashing:
    """Registers a skill under a taken name."""

    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def register_skills(self, register: Any) -> None:
        register(Skill(self.name, "clashes", echo))


class CommandClash:
    @hookimpl
    def register_commands(self, register: Any) -> None:
        register(Command("ask", "clashes with the skill", lambda context: "no"))


@pytest.mark.parametrize(
    ("plugin", "problem"),
    [
        (Clashing("ask"), "skill 'ask' is already registered by plugin 'test-skills'"),
        (CommandClash(), "the name is already taken by the skill of plugin 'test-skills'"),
    ],
)
async def test_a_taken_name_disables_the_second_plugin(plugin: object, problem: str) -> None:
    plugins = PluginHost()
    plugins.add_plugin(TestSkills(), "test-skills")
    await plugins.collect("test-skills")
    plugins.add_plugin(plugin, "late")
    await plugins.collect("late")
    info = plugins.infos["late"]
    assert info.status == "failed" and info.error is not None and problem in info.error
    assert plugins.skills.owner("ask") == "test-skills" and "ask" not in plugins.commands
    assert plugins.infos["test-skills"].registered["skill"] == [
        "echo-skill",
        "ask",
        "boom",
        "remember",
    ]


async def test_a_skill_cannot_take_a_built_in_commands_name(isolated_env: Path) -> None:
    plugins = PluginHost()
    await plugins.load(make_settings(isolated_env), installed=[])
    plugins.add_plugin(Clashing("help"), "clash")
    await plugins.collect("clash")
    info = plugins.infos["clash"]
    assert info.status == "failed"
    assert "already taken by the command of plugin 'commands'" in str(info.error)


def test_skill_values_are_checked() -> None:
    with pytest.raises(ValueError, match="lower-case"):
        Skill("/Bad", "x", echo)
    with pytest.raises(ValueError, match="one-line description"):
        Skill("fine", " ", echo)
    with pytest.raises(ValueError, match="unique and not 'help'"):
        Skill("fine", "x", echo, options=(SkillOption("help", "no"),))
    skill = Skill("s", "x", echo, options=(SkillOption("to", "target", choices=("de", "fr")),))
    assert skill.parse('--to de  keep  "this"') == ({"to": "de"}, 'keep  "this"')
    with pytest.raises(SkillUsageError, match="one of de, fr"):
        skill.parse("--to es text")


async def test_the_skill_example_from_the_docs_works(
    new_app: AppFactory, isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    section = DOCS.read_text().split("## Skills", 1)[1]
    (source,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    (tmp_path / "chatcore_shout.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "chatcore_shout", raising=False)
    import chatcore_shout  # type: ignore[import-not-found]

    plugins = PluginHost()
    plugins.add_plugin(chatcore_shout, "shout")
    await plugins.collect("shout")
    backend = FakeBackend()
    app = await new_app(make_settings(isolated_env), plugins=plugins, backend=backend)
    await app.start()
    events = await collect(app, "/shout hello there")
    assert isinstance(events[-1], Reply) and events[-1].text == "HELLO THERE "
    backend.enqueue(["good ", "morning!"])
    events = await collect(app, "/shout --ask good morning")
    assert isinstance(events[-1], Reply) and events[-1].text == "GOOD MORNING!"
    assert backend.calls[0].messages[-1].content == "Say this loudly: good morning"
