"""Configuration: defaults, layering (file, environment), validation errors, secrets."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr
from typer.testing import CliRunner

from chatcore.cli import app
from chatcore.config import (
    ConfigError,
    PluginsSettings,
    Settings,
    _reject_secrets_in_file,
    default_config_path,
    load_settings,
    masked_settings,
)
from chatcore.plugins import PluginHost
from tests.conftest import make_settings

runner = CliRunner()


def _fields(model: type[BaseModel], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.update(_fields(annotation, f"{prefix}{name}."))
        elif annotation is SecretStr:
            continue  # secrets are never in a file: default.toml names them in a comment
        else:
            default = field.default
            out[f"{prefix}{name}"] = list(default) if isinstance(default, tuple) else default
    return out


def _flatten(data: dict[str, object], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


async def test_default_toml_holds_every_setting_with_the_code_default(
    isolated_env: Path,
) -> None:
    settings = make_settings(isolated_env, plugins={"disabled": []})  # every built-in step
    with default_config_path().open("rb") as handle:
        in_file = _flatten(tomllib.load(handle))
    expected = _fields(Settings)
    del expected["adapters"]  # each adapter's section is the model it registers
    host = PluginHost()
    await host.load(settings)
    for name, spec in host.adapters.items():
        expected.update(_fields(spec.settings, f"adapters.{name}."))
    del expected["pipeline.steps"]  # and each step's section is the model it registers
    for name, step in host.filters.items():
        expected.update(_fields(step.settings, f"pipeline.steps.{name}."))
    assert in_file == expected
    # Secrets come from the environment only: the file does not even hold their defaults.
    assert not {"adapters.discord.token", "adapters.websocket.tokens"} & set(in_file)


def test_defaults_load(isolated_env: Path) -> None:
    settings = load_settings()
    assert settings.model.backend == "transformers"
    assert settings.generation.max_new_tokens == 256
    assert settings.home_path == isolated_env
    assert settings.storage_url == f"sqlite:///{isolated_env / 'chatcore.db'}"


def test_user_file_overrides_defaults_and_env_overrides_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = tmp_path / "my.toml"
    user.write_text('[generation]\nmax_new_tokens = 32\nstrategy = "sample"\n')
    settings = load_settings(user)
    assert settings.generation.max_new_tokens == 32
    assert settings.generation.strategy == "sample"
    assert settings.generation.top_p == 0.9  # untouched keys keep their defaults

    monkeypatch.setenv("CHATCORE_GENERATION__MAX_NEW_TOKENS", "64")
    settings = load_settings(user)
    assert settings.generation.max_new_tokens == 64
    assert settings.generation.strategy == "sample"


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "env.toml"
    user.write_text('[context]\nsystem_prompt = "Be terse."\n')
    monkeypatch.setenv("CHATCORE_CONFIG", str(user))
    assert load_settings().context.system_prompt == "Be terse."


def test_plugins_allowlist_variable_is_not_parsed_as_a_section(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHATCORE_PLUGINS", "one,two")
    assert load_settings().plugins.builtin == PluginsSettings().builtin


def test_bad_value_names_key_value_source_and_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHATCORE_GENERATION__MAX_NEW_TOKENS", "0")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    (line,) = caught.value.lines
    assert "generation.max_new_tokens = '0'" in line
    assert "CHATCORE_GENERATION__MAX_NEW_TOKENS" in line
    assert "greater than or equal to 1" in line


def test_bad_value_in_file_names_the_file(tmp_path: Path) -> None:
    user = tmp_path / "bad.toml"
    user.write_text('[generation]\nstrategy = "fast"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(user)
    (line,) = caught.value.lines
    assert "generation.strategy = 'fast'" in line
    assert str(user) in line
    assert "'greedy', 'sample' or 'beam'" in line


def test_unknown_key_lists_the_allowed_ones(tmp_path: Path) -> None:
    user = tmp_path / "typo.toml"
    user.write_text("[generation]\nmax_tokens = 5\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(user)
    (line,) = caught.value.lines
    assert "generation.max_tokens" in line and "not a known key" in line
    assert "max_new_tokens" in line


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[generation\n", "is not valid TOML"),
        ('[storage]\nurl = "not a url"\n', "storage.url = 'not a url'"),
        ('[generation]\nstop = [""]\n', "stop strings must not be empty"),
    ],
)
def test_invalid_files(tmp_path: Path, content: str, expected: str) -> None:
    user = tmp_path / "c.toml"
    user.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_settings(user)
    assert expected in caught.value.lines[0]


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_cli_bad_config_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCORE_GENERATION__TEMPERATURE", "hot")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("config error: generation.temperature = 'hot'")


def test_cli_config_show_prints_valid_toml_with_effective_values(
    monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    monkeypatch.setenv("CHATCORE_GENERATION__MAX_NEW_TOKENS", "64")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    shown = tomllib.loads(result.stdout)
    assert shown["generation"]["max_new_tokens"] == 64
    assert shown["home"] == str(isolated_env)
    assert shown["storage"]["url"].startswith("sqlite:///")


class _WithSecret(BaseModel):
    token: SecretStr = SecretStr("")
    name: str = "bot"


class _SecretSettings(BaseModel):
    discord: _WithSecret = _WithSecret()


def test_secrets_are_masked() -> None:
    shown = masked_settings(_SecretSettings(discord=_WithSecret(token=SecretStr("abc"))))
    assert shown == {"discord": {"token": "********", "name": "bot"}}
    assert "abc" not in repr(shown)


def test_secrets_in_a_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _reject_secrets_in_file(
            {"discord": {"token": "abc"}}, tmp_path / "c.toml", model=_SecretSettings
        )
    (line,) = caught.value.lines
    assert "discord.token is a secret" in line
    assert "CHATCORE_DISCORD__TOKEN" in line


def test_arguments_given_in_code_win_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHATCORE_HOME", str(tmp_path / "from-env"))
    assert Settings(home=str(tmp_path / "from-code")).home_path == tmp_path / "from-code"
    assert load_settings().home_path == tmp_path / "from-env"


def test_cli_version() -> None:
    from chatcore import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"chatcore {__version__}"


def test_database_password_is_masked_in_config_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCORE_STORAGE__URL", "postgresql+psycopg://bot:hunter2@db:5432/chat")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0
    assert "hunter2" not in result.stdout
    assert tomllib.loads(result.stdout)["storage"]["url"] == (
        "postgresql+psycopg://bot:********@db:5432/chat"
    )


def test_database_password_in_a_file_is_refused(tmp_path: Path) -> None:
    user = tmp_path / "c.toml"
    user.write_text('[storage]\nurl = "postgresql://bot:hunter2@db/chat"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(user)
    assert "contains a password" in caught.value.lines[0]
    assert "CHATCORE_STORAGE__URL" in caught.value.lines[0]
    user.write_text('[storage]\nurl = "postgresql://bot@db/chat"\n')
    assert load_settings(user).storage.url == "postgresql://bot@db/chat"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("CHATCORE_GENERATION__STOP", "foo", "generation.stop = 'foo'"),
        ("CHATCORE_PLUGINS__DISABLED", "dice", "must be JSON in the environment"),
        ("CHATCORE_LOGGING", "x", "logging = 'x'"),
        ("CHATCORE_GENERATION_MAX_NEW_TOKENS", "5", "unknown environment variable"),
        ("CHATCORE_GENERATION__MAX_TOKENS", "5", "generation.max_tokens"),
    ],
)
def test_environment_mistakes_are_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("config error:") and expected in line


def test_json_lists_in_the_environment_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCORE_GENERATION__STOP", '["</s>", "User:"]')
    assert load_settings().generation.stop == ("</s>", "User:")


def test_table_value_blames_the_variable_that_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCORE_MODEL", '{"dtype": "fp16"}')
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "(from environment variable CHATCORE_MODEL)" in caught.value.lines[0]


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(tmp_path)
