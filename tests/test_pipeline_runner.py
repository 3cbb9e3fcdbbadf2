"""The pipeline as the engine runs it, on the fake backend with test steps: input policies
(block, redact, warn), output steps on the stream (hold-back across pieces, order, blocking),
steps that fail (detectors fail closed, rewriters pass through), step sections in the config,
and what is counted and logged (never the offending text)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from chatcore import hookimpl
from chatcore.app import App
from chatcore.config import ConfigError, load_settings
from chatcore.events import FinishReason, Message, Reply, ReplyChunk, ReplyError, ReplyEvent
from chatcore.generation.fake import FakeBackend
from chatcore.pipeline.steps import (
    DetectorSettings,
    DetectorSpec,
    Finding,
    RewriterSettings,
    RewriterSpec,
    StepContext,
    TextFilter,
)
from chatcore.plugins import PluginHost
from tests.conftest import AppFactory, make_settings

SECRET = "SECRET-4242"


def msg(text: str) -> Message:
    return Message(text=text, user="alice", channel="c1", platform="test")


async def collect(app: App, text: str) -> list[ReplyEvent]:
    return [event async for event in app.engine.handle(msg(text))]


class Pattern:
    """A detector of one regular expression, as a category."""

    def __init__(self, pattern: str, category: str, max_span: int) -> None:
        self.pattern = re.compile(pattern)
        self.category = category
        self.max_span = max_span
        self.reasons: Mapping[str, str] = {category: f"it contains a {category}"}
        self.calls = 0

    def find(self, text: str) -> Sequence[Finding]:
        self.calls += 1
        return [Finding(self.category, m.start(), m.end()) for m in self.pattern.finditer(text)]


class Exploding:
    max_span = 4
    reasons: Mapping[str, str] = {}

    def find(self, text: str) -> Sequence[Finding]:
        raise ValueError(f"cannot read {text!r}")  # the text must not reach the log


class Sleepy:
    max_span = 4
    reasons: Mapping[str, str] = {}

    def find(self, text: str) -> Sequence[Finding]:
        time.sleep(3)
        return []


class Stuck:
    """A rewriter whose filter never returns from its first piece."""

    def open(self, ctx: StepContext) -> TextFilter:  # the argument's name is the plugin's
        return self

    def feed(self, text: str) -> str:
        time.sleep(3)
        return text

    def flush(self, finish_reason: FinishReason) -> str:
        return ""


class Replace:
    """A rewriter replacing one string by another in each piece; ``fail_at`` raises on that
    piece (counted from 1)."""

    def __init__(self, old: str, new: str, fail_at: int = 0) -> None:
        self.old, self.new, self.fail_at = old, new, fail_at

    def open(self, context: StepContext) -> TextFilter:
        return _ReplaceFilter(self, context)


class _ReplaceFilter:
    def __init__(self, rewriter: Replace, context: StepContext) -> None:
        self.rewriter = rewriter
        self.context = context
        self.pieces = 0

    def feed(self, text: str) -> str:
        self.pieces += 1
        if self.pieces == self.rewriter.fail_at:
            raise RuntimeError(f"broken on {text!r}")
        if self.rewriter.old in text:
            self.context.report("replaced", "changed")
        return text.replace(self.rewriter.old, self.rewriter.new)

    def flush(self, finish_reason: FinishReason) -> str:
        return ""


class TestSteps:
    """A plugin registering the test steps."""

    __test__ = False

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def register_filters(self, register: Any) -> None:
        register(
            DetectorSpec("secrets", lambda s: Pattern(r"SECRET-\d+", "secret", 16), help="secrets")
        )
        register(DetectorSpec("banned", lambda s: Pattern(r"forbidden", "banned", 9)))
        register(DetectorSpec("exploding", lambda s: Exploding()))
        register(DetectorSpec("sleepy", lambda s: Sleepy()))
        register(RewriterSpec("x_to_y", lambda s: Replace("x", "y")))
        register(RewriterSpec("y_to_z", lambda s: Replace("y", "z")))
        register(RewriterSpec("leak", lambda s: Replace("KEY", SECRET)))
        register(RewriterSpec("flaky", lambda s: Replace("a", "A", fail_at=2)))
        register(RewriterSpec("stuck", lambda s: Stuck()))

    @hookimpl
    def message_received(self, message: Message) -> None:
        self.seen.append(message.text)


OFF: dict[str, dict[str, object]] = {
    name: {"enabled": False} for name in ("x_to_y", "y_to_z", "leak", "flaky", "stuck")
}


async def steps_app(
    new_app: AppFactory,
    home: Path,
    steps: dict[str, dict[str, object]],
    backend: FakeBackend,
    **sections: dict[str, object],
) -> tuple[App, TestSteps]:
    plugin = TestSteps()
    plugins = PluginHost()
    plugins.add_plugin(plugin, "test-steps")
    await plugins.collect("test-steps")
    settings = make_settings(home, pipeline={"steps": {**OFF, **steps}}, **sections)
    app = await new_app(settings, plugins=plugins, backend=backend)
    await app.start()
    return app, plugin


def chunks(events: Sequence[ReplyEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, ReplyChunk)]


def counted(app: App, step: str, stage: str, category: str, action: str) -> float:
    value = app.metrics.registry.get_sample_value(
        "chatcore_pipeline_actions_total",
        {"step": step, "stage": stage, "category": category, "action": action},
    )
    return value or 0.0


# -- input ----------------------------------------------------------------------------------


async def test_a_blocked_message_makes_no_model_call_and_is_never_stored_or_logged(
    new_app: AppFactory, isolated_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeBackend()
    app, plugin = await steps_app(new_app, isolated_env, {"secrets": {"input": "block"}}, backend)
    caplog.set_level(logging.DEBUG)
    (error,) = await collect(app, f"my code is {SECRET}, keep it")
    assert isinstance(error, ReplyError) and error.code == "blocked"
    assert error.text == "I can't answer that message: it contains a secret (secret)."
    assert backend.calls == []
    assert plugin.seen == []  # hooks never see a blocked message
    assert await app.engine.store.history(msg("").conversation) == []
    assert counted(app, "secrets", "input", "secret", "blocked") == 1
    assert "secrets blocked secret (input)" in caplog.text
    assert "4242" not in caplog.text


async def test_a_redacted_message_is_redacted_for_the_model_the_hooks_the_store_and_the_log(
    new_app: AppFactory, isolated_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeBackend()
    steps = {"secrets": {"input": "redact"}}
    app, plugin = await steps_app(new_app, isolated_env, steps, backend)
    caplog.set_level(logging.DEBUG)
    events = await collect(app, f"my code is {SECRET}, keep it")
    assert isinstance(events[-1], Reply)
    redacted = "my code is [secret removed], keep it"
    assert backend.calls[0].messages[-1].content == redacted
    assert plugin.seen == [redacted]
    stored = await app.engine.store.history(msg("").conversation)
    assert stored[0].content == redacted
    assert "4242" not in caplog.text and "4242" not in events[-1].text  # type: ignore[union-attr]
    assert counted(app, "secrets", "input", "secret", "redacted") == 1


async def test_a_warned_message_goes_on_unchanged_and_is_counted(
    new_app: AppFactory, isolated_env: Path
) -> None:
    backend = FakeBackend()
    app, _ = await steps_app(new_app, isolated_env, {"banned": {"input": "warn"}}, backend)
    events = await collect(app, "is this forbidden?")
    assert isinstance(events[-1], Reply)
    assert backend.calls[0].messages[-1].content == "is this forbidden?"
    assert counted(app, "banned", "input", "banned", "warned") == 1


async def test_input_steps_see_commands_too(new_app: AppFactory, isolated_env: Path) -> None:
    app, _ = await steps_app(new_app, isolated_env, {"secrets": {"input": "block"}}, FakeBackend())
    (error,) = await collect(app, f"/nope {SECRET}")
    assert isinstance(error, ReplyError) and error.code == "blocked"


async def test_a_detector_that_raises_fails_closed_and_is_named_without_the_text(
    new_app: AppFactory, isolated_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeBackend()
    app, _ = await steps_app(new_app, isolated_env, {"exploding": {"input": "warn"}}, backend)
    caplog.set_level(logging.DEBUG)
    (error,) = await collect(app, "private words")
    assert isinstance(error, ReplyError) and error.code == "blocked"
    assert "step_failed" in error.text
    assert backend.calls == []
    assert "step exploding raised ValueError" in caplog.text
    assert "private" not in caplog.text
    assert counted(app, "exploding", "input", "step_failed", "blocked") == 1


async def test_a_detector_that_runs_out_of_time_fails_closed(
    new_app: AppFactory, isolated_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeBackend()
    steps = {"sleepy": {"input": "warn"}}
    app, _ = await steps_app(new_app, isolated_env, steps, backend, plugins={"hook_timeout": 0.2})
    (error,) = await collect(app, "hello")
    assert isinstance(error, ReplyError) and error.code == "blocked"
    assert backend.calls == []
    assert "step sleepy did not finish in time" in caplog.text


# -- output ---------------------------------------------------------------------------------


async def test_a_finding_split_across_pieces_never_reaches_a_chunk_the_store_or_the_log(
    new_app: AppFactory, isolated_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeBackend()
    app, _ = await steps_app(new_app, isolated_env, {"secrets": {"output": "redact"}}, backend)
    caplog.set_level(logging.DEBUG)
    pieces = ["Your code ", "is SEC", "RET-", "42", "42", " and that", " is all", "."]
    backend.enqueue(pieces)
    events = await collect(app, "what is my code?")
    shown = chunks(events)
    assert "".join(shown) == "Your code is [secret removed] and that is all."
    assert len(shown) > 1  # it still streams
    for piece in shown:
        assert not any(part in piece for part in ("SEC", "RET-", "42"))
    reply = events[-1]
    assert isinstance(reply, Reply) and reply.text == "".join(shown)
    stored = await app.engine.store.history(msg("").conversation)
    assert stored[-1].content == reply.text
    assert "4242" not in caplog.text
    assert counted(app, "secrets", "output", "secret", "redacted") == 1


async def test_a_block_on_output_stops_generation_and_keeps_what_was_shown(
    new_app: AppFactory, isolated_env: Path
) -> None:
    backend = FakeBackend()
    app, _ = await steps_app(new_app, isolated_env, {"banned": {"output": "block"}}, backend)
    # Generating past the block would raise here: the stream must be closed before that.
    backend.enqueue(
        ["All fine here. ", "forbidden", " and then some more text", RuntimeError("went on")]
    )
    events = await collect(app, "tell me")
    error = events[-1]
    assert isinstance(error, ReplyError) and error.code == "blocked"
    assert error.text.startswith("The reply was stopped: it contains a banned (banned).")
    shown = "".join(chunks(events))
    assert "forbidden" not in shown and shown.startswith("All fine")
    assert backend.active == 0
    stored = await app.engine.store.history(msg("").conversation)
    assert [m.content for m in stored] == ["tell me", shown]


async def test_a_detector_that_raises_on_the_stream_stops_the_reply(
    new_app: AppFactory, isolated_env: Path
) -> None:
    backend = FakeBackend()
    app, _ = await steps_app(new_app, isolated_env, {"exploding": {"output": "warn"}}, backend)
    backend.enqueue(["one", " two"])
    events = await collect(app, "hi")
    assert isinstance(events[-1], ReplyError) and events[-1].code == "blocked"
    assert chunks(events) == []


@pytest.mark.parametrize(("first", "second", "expected"), [(1, 2, "z z"), (2, 1, "y y")])
async def test_rewriters_run_in_the_configured_order(
    new_app: AppFactory, isolated_env: Path, first: int, second: int, expected: str
) -> None:
    backend = FakeBackend()
    steps = {"x_to_y": {"order": first}, "y_to_z": {"order": second}}
    app, _ = await steps_app(new_app, isolated_env, steps, backend)
    backend.enqueue(["x", " x"])
    events = await collect(app, "hi")
    assert "".join(chunks(events)) == expected
    assert counted(app, "x_to_y", "output", "replaced", "changed") == 2


@pytest.mark.parametrize(("leak", "caught"), [(1, True), (300, False)])
async def test_detectors_and_rewriters_share_one_order(
    new_app: AppFactory, isolated_env: Path, leak: int, caught: bool
) -> None:
    backend = FakeBackend()
    steps = {"leak": {"order": leak, "enabled": True}, "secrets": {"output": "redact"}}
    app, _ = await steps_app(new_app, isolated_env, steps, backend)
    backend.enqueue(["the KEY is here"])
    shown = "".join(chunks(await collect(app, "hi")))
    assert (shown == "the [secret removed] is here") is caught
    assert (SECRET in shown) is not caught


async def test_a_rewriter_that_raises_is_left_out_and_its_input_passes_through(
    new_app: AppFactory, isolated_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeBackend()
    app, _ = await steps_app(new_app, isolated_env, {"flaky": {"enabled": True}}, backend)
    backend.enqueue(["a", "a", "a"])
    events = await collect(app, "hi")
    assert isinstance(events[-1], Reply)
    assert "".join(chunks(events)) == "Aaa"  # the first piece rewritten, then passed through
    assert "rewriter flaky raised RuntimeError" in caplog.text
    assert "broken on" not in caplog.text


async def test_a_rewriter_that_runs_out_of_time_is_left_out_and_the_later_steps_still_run(
    new_app: AppFactory, isolated_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeBackend()
    steps = {"stuck": {"enabled": True, "order": 1}, "x_to_y": {"enabled": True, "order": 2}}
    app, _ = await steps_app(new_app, isolated_env, steps, backend, plugins={"hook_timeout": 0.2})
    backend.enqueue(["x", "x", "x"])
    events = await collect(app, "hi")
    assert isinstance(events[-1], Reply)
    assert "".join(chunks(events)) == "yyy"
    assert "rewriter stuck did not finish in time" in caplog.text


async def test_without_output_steps_pieces_go_straight_through(
    new_app: AppFactory, isolated_env: Path
) -> None:
    backend = FakeBackend()
    app, _ = await steps_app(new_app, isolated_env, {"secrets": {"input": "block"}}, backend)
    assert app.engine.steps.outputs == []
    backend.enqueue(["a", "b", "c"])
    assert chunks(await collect(app, "hi")) == ["a", "b", "c"]


# -- registration and configuration -------------------------------------------------------


async def test_steps_are_listed_by_kind_and_owner() -> None:
    plugins = PluginHost()
    plugins.add_plugin(TestSteps(), "test-steps")
    await plugins.collect("test-steps")
    registered = plugins.infos["test-steps"].registered
    assert registered["detector"] == ["secrets", "banned", "exploding", "sleepy"]
    assert registered["rewriter"] == ["x_to_y", "y_to_z", "leak", "flaky", "stuck"]
    assert plugins.filters.owner("leak") == "test-steps"

    class Again:
        @hookimpl
        def register_filters(self, register: Any) -> None:
            register(DetectorSpec("secrets", lambda s: Exploding()))

    plugins.add_plugin(Again(), "again")
    await plugins.collect("again")
    assert plugins.infos["again"].status == "failed"
    assert "step 'secrets' is already registered by plugin 'test-steps'" in (
        plugins.infos["again"].error or ""
    )
    assert plugins.filters.owner("secrets") == "test-steps"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("not a spec", "expects a chatcore.pipeline.steps.DetectorSpec or RewriterSpec"),
        (DetectorSpec("Bad-Name", lambda s: Exploding()), "step name 'Bad-Name' must be"),
        (
            DetectorSpec("wrong", lambda s: Exploding(), settings=RewriterSettings),  # type: ignore[arg-type]
            "must subclass chatcore.pipeline.steps.DetectorSettings",
        ),
    ],
)
async def test_a_bad_step_registration_fails_its_plugin(spec: object, problem: str) -> None:
    class Bad:
        @hookimpl
        def register_filters(self, register: Any) -> None:
            register(spec)

    plugins = PluginHost()
    plugins.add_plugin(Bad(), "bad")
    await plugins.collect("bad")
    assert plugins.infos["bad"].status == "failed"
    assert problem in (plugins.infos["bad"].error or "")


class Strict(DetectorSettings):
    limit: int = 10


async def test_a_bad_step_section_is_one_line_naming_the_file_and_key(
    new_app: AppFactory, isolated_env: Path, tmp_path: Path
) -> None:
    class WithSettings:
        @hookimpl
        def register_filters(self, register: Any) -> None:
            register(DetectorSpec("strict", lambda s: Exploding(), settings=Strict))

    config = tmp_path / "bad.toml"
    for body, expected in [
        (
            'input = "maybe"',
            "config error: pipeline.steps.strict.input = 'maybe' (from {file}): Input should "
            "be 'block', 'redact', 'warn' or 'off'",
        ),
        (
            "limits = 3",
            "config error: pipeline.steps.strict.limits (from {file}) is not a known key; "
            "allowed here: order, input, output, limit",
        ),
    ]:
        config.write_text(f"[pipeline.steps.strict]\n{body}\n")
        settings = load_settings(config)
        plugins = PluginHost()
        plugins.add_plugin(WithSettings(), "with-settings")
        await plugins.collect("with-settings")
        with pytest.raises(ConfigError) as raised:
            await new_app(settings, plugins=plugins, backend=FakeBackend())
        assert raised.value.lines == [expected.format(file=config)]


async def test_step_sections_from_the_environment(
    new_app: AppFactory, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATCORE_PIPELINE__STEPS__SECRETS__INPUT", "block")
    monkeypatch.setenv("CHATCORE_MODEL__BACKEND", "fake")
    settings = load_settings()
    assert settings.pipeline.steps["secrets"] == {"input": "block"}
    plugins = PluginHost()
    plugins.add_plugin(TestSteps(), "test-steps")
    await plugins.collect("test-steps")
    backend = FakeBackend()
    app = await new_app(settings, plugins=plugins, backend=backend)
    await app.start()
    (error,) = await collect(app, SECRET)
    assert isinstance(error, ReplyError) and error.code == "blocked"


async def test_a_section_for_an_unknown_step_warns_only_when_it_sets_something(
    new_app: AppFactory, isolated_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    steps: dict[str, dict[str, object]] = {"nosuch": {"input": "block"}, "empty": {}}
    settings = make_settings(isolated_env, pipeline={"steps": steps})
    with caplog.at_level(logging.WARNING):
        await new_app(settings, plugins=PluginHost(), backend=FakeBackend())
    assert "[pipeline.steps.nosuch] is set but no plugin registers a step named 'nosuch'" in (
        caplog.text
    )
    assert "empty" not in caplog.text


async def test_a_detector_that_cannot_be_made_stops_the_start(
    new_app: AppFactory, isolated_env: Path
) -> None:
    def broken(settings: DetectorSettings) -> Exploding:
        raise OSError("no word list")

    class Broken:
        @hookimpl
        def register_filters(self, register: Any) -> None:
            register(DetectorSpec("broken", broken))

    plugins = PluginHost()
    plugins.add_plugin(Broken(), "broken-plugin")
    await plugins.collect("broken-plugin")
    settings = make_settings(isolated_env, pipeline={"steps": {"broken": {"input": "block"}}})
    app = await new_app(settings, plugins=plugins, backend=FakeBackend())
    with pytest.raises(Exception, match="step 'broken' \\(plugin 'broken-plugin'\\) failed"):
        await app.start()


DOCS = Path(__file__).resolve().parents[1] / "docs" / "pipeline.md"


async def test_the_step_example_from_the_docs_works(
    new_app: AppFactory, isolated_env: Path
) -> None:
    section = DOCS.read_text().split("## Writing a step", 1)[1]
    (source,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(compile(source, str(DOCS), "exec"), namespace)

    class Example:
        register_filters = staticmethod(namespace["register_filters"])

    plugins = PluginHost()
    plugins.add_plugin(Example(), "example")
    await plugins.collect("example")
    assert plugins.infos["example"].registered == {
        "detector": ["tickets"],
        "rewriter": ["shouting"],
    }
    steps = {"tickets": {"input": "redact", "output": "block"}}
    backend = FakeBackend()
    settings = make_settings(isolated_env, pipeline={"steps": steps})
    app = await new_app(settings, plugins=plugins, backend=backend)
    await app.start()
    backend.enqueue(["FINE. ", "See TICKET-77", " for more, and more after it"])
    events = await collect(app, "about TICKET-123 please")
    assert backend.calls[0].messages[-1].content == "about [ticket removed] please"
    shown = "".join(chunks(events))
    assert shown.startswith("fine") and "TICKET" not in shown  # held back, then blocked
    assert isinstance(events[-1], ReplyError) and events[-1].code == "blocked"


async def test_the_built_in_rewriters_stop_generation_at_a_loop_or_an_end_token(
    new_app: AppFactory, isolated_env: Path
) -> None:
    backend = FakeBackend()
    app = await new_app(make_settings(isolated_env, plugins={"disabled": []}), backend=backend)
    await app.start()
    assert "repetition" in app.plugins.filters and "role_markers" in app.plugins.filters
    backend.enqueue(["I can help."] + [" Sorry."] * 300)
    events = await collect(app, "help")
    reply = events[-1]
    assert isinstance(reply, Reply) and reply.text == "I can help. Sorry."
    assert reply.usage.completion_tokens < 60  # stopped soon after the loop, not after 301
    backend.enqueue(["Hello", " there.", "<|im_end|>", "<|im_start|>user", " more"] + [" x"] * 50)
    reply = (await collect(app, "hi"))[-1]
    assert isinstance(reply, Reply) and reply.text == "Hello there."
    assert reply.usage.completion_tokens == 3


@pytest.mark.parametrize("seed", range(6))
async def test_the_built_in_detectors_redact_a_streamed_reply_that_still_streams(
    new_app: AppFactory, isolated_env: Path, seed: int
) -> None:
    import random

    text = (
        "Sure! Here is a short note about your account and what happens next with it. "
        "Your card 4111 1111 1111 1111 is on file, mail jane.doe@example.com or call "
        "+44 20 7946 0958; the key sk-abcdEFGH1234ijklMNOP5678qrst is revoked. What the f*ck. "
        "That is all for today, and the rest of this reply is plain words that should stream."
    )
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), 60))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    backend = FakeBackend()
    app = await new_app(make_settings(isolated_env, plugins={"disabled": []}), backend=backend)
    await app.start()
    backend.enqueue(pieces)
    events = await collect(app, "tell me")
    chunks = [e.text for e in events if isinstance(e, ReplyChunk)]
    shown = "".join(chunks)
    for secret in ("4111 1111 1111 1111", "sk-abcdEFGH1234ijklMNOP5678qrst", "f*ck"):
        assert secret not in shown and all(secret not in c for c in chunks)
    assert "[card_number removed]" in shown and "[secret removed]" in shown
    assert "jane.doe@example.com" in shown  # e-mail addresses are only counted by default
    # It streams: plain words come out a few words behind, not all at the end (holding back
    # max_span, 400 characters, would show this reply in one or two pieces).
    assert len(chunks) > 10


LEAKY = (
    "Noted. The api key for the staging server is 9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c and the "
    "password for the bank website is Hunter2Rocks99! as you asked. Honestly, you are a "
    "worthless waste of space today. Card: 4111-1111-1111-1111. Ring the hotline on "
    "+1 415 555 0132 tomorrow."
)


@pytest.mark.parametrize("seed", range(8))
async def test_a_streamed_reply_is_redacted_as_if_it_came_whole(
    new_app: AppFactory, isolated_env: Path, seed: int
) -> None:
    import random

    settings = make_settings(isolated_env, plugins={"disabled": ["postprocess"]})
    backend = FakeBackend()
    app = await new_app(settings, backend=backend)
    await app.start()
    backend.enqueue([LEAKY])
    whole = (await collect(app, "go"))[-1]
    assert isinstance(whole, Reply)
    for raw in ("9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c", "Hunter2Rocks99", "worthless", "4111-1111"):
        assert raw not in whole.text
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(LEAKY)), 40))
    backend.enqueue([LEAKY[a:b] for a, b in zip([0, *cuts], [*cuts, len(LEAKY)], strict=True)])
    streamed = (await collect(app, "again"))[-1]
    assert isinstance(streamed, Reply) and streamed.text == whole.text
