"""``/prefs``: a user lists, sets and unsets their preferences, which shape every prompt; on
the SQL store they survive a restart."""

from __future__ import annotations

from pathlib import Path

from chatcore.events import Reply, ReplyError
from chatcore.generation.fake import FakeBackend
from chatcore.memory.sql import SqlStore
from tests.conftest import AppFactory, make_settings
from tests.test_engine import collect, msg


async def _say(app: object, text: str, user: str = "alice") -> str:
    (*_, final) = await collect(app.engine.handle(msg(text, user=user)))  # type: ignore[attr-defined]
    assert isinstance(final, Reply | ReplyError)
    return final.text


async def test_preferences_are_set_listed_unset_and_shape_the_prompt(
    isolated_env: Path, new_app: AppFactory
) -> None:
    backend = FakeBackend()
    app = await new_app(make_settings(isolated_env), backend=backend)
    await app.start()
    assert (await _say(app, "/prefs")).startswith("No preferences yet. Usage: /prefs")
    assert await _say(app, "/prefs set language french") == "Saved: language = French."
    assert await _say(app, "/prefs set name Sam") == "Saved: name = Sam."
    refused = await _say(app, "/prefs set language Klingonese")
    assert refused.startswith("Not saved: unknown language 'Klingonese'")
    refused = await _say(app, "/prefs set colour blue")
    assert refused.startswith("Not saved: unknown preference")
    listing = await _say(app, "/prefs")
    assert "  name = Sam (you set it)" in listing and "  language = French (you set it)" in listing
    await _say(app, "hello")
    system = backend.calls[-1].messages[0].content
    assert system.startswith(app.settings.context.system_prompt)
    assert "Sam" in system and "French" in system
    await _say(app, "hello", user="bob")  # another user: untouched
    assert "Sam" not in backend.calls[-1].messages[0].content
    assert await _say(app, "/prefs unset name") == "Removed your name preference."
    assert await _say(app, "/prefs unset name") == "You had no name preference."
    assert (await _say(app, "/prefs nonsense")).startswith("Usage: /prefs")
    await _say(app, "hello again")
    assert "Sam" not in backend.calls[-1].messages[0].content


async def test_prefs_takes_its_action_in_any_case_and_ends_a_refusal_once(
    isolated_env: Path, new_app: AppFactory
) -> None:
    app = await new_app(make_settings(isolated_env))
    await app.start()
    assert await _say(app, "/prefs SET Name Sam") == "Saved: name = Sam."
    assert await _say(app, "/prefs  Set tone formal") == "Saved: tone = formal."
    assert await _say(app, "/prefs UnSet name") == "Removed your name preference."
    refused = await _say(app, "/prefs set name")
    assert refused == "Not saved: give a value for name, e.g. /prefs set name ..."
    refused = await _say(app, "/prefs set length forever")
    assert refused.startswith("Not saved: length is one of ") and refused.endswith("'forever'.")


async def test_preferences_survive_a_restart_on_the_sql_store(
    isolated_env: Path, new_app: AppFactory
) -> None:
    settings = make_settings(isolated_env, storage={"url": f"sqlite:///{isolated_env / 'p.db'}"})
    first = await new_app(settings, backend=FakeBackend(), store=SqlStore(settings.storage_url))
    await first.start()
    assert await _say(first, "/prefs set length short") == "Saved: length = short."
    await first.close()
    backend = FakeBackend()
    second = await new_app(settings, backend=backend, store=SqlStore(settings.storage_url))
    await second.start()
    assert "length = short" in await _say(second, "/prefs")
    await _say(second, "hello")
    assert "short" in backend.calls[-1].messages[0].content.lower()
