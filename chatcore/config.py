"""Configuration: typed settings models and the loader that layers their sources.

Lowest to highest priority: ``config/default.toml`` (shipped as ``chatcore.defaults``), the user's
file (``--config PATH`` or ``CHATCORE_CONFIG``), then ``CHATCORE_SECTION__KEY`` environment
variables. Secrets (``SecretStr`` fields) are accepted only from the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import platformdirs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

ENV_PREFIX = "CHATCORE_"
CONFIG_ENV = "CHATCORE_CONFIG"
PLUGINS_ENV = "CHATCORE_PLUGINS"
# Variables with the prefix that are not settings: they must not be parsed as sections.
_NOT_SETTINGS = {CONFIG_ENV.lower(), PLUGINS_ENV.lower()}


class ConfigError(Exception):
    """The configuration is invalid; ``lines`` holds one user-facing line per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Section):
    """Which model answers, and how it is loaded."""

    backend: str = Field("transformers", min_length=1)
    path: str = ""
    gguf_file: str = ""
    dtype: Literal["float32", "bfloat16"] = "float32"
    threads: int = Field(0, ge=0, le=256)


class OpenAISettings(_Section):
    """The server of the ``openai`` backend: any OpenAI-compatible ``/v1/chat/completions``
    (docs/openai.md). Used only when ``model.backend = "openai"``."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    """The model name the server knows; empty: the only one the server lists."""
    api_key: SecretStr = SecretStr("")
    """A secret: only from the environment (``CHATCORE_OPENAI__API_KEY``)."""
    tokenizer: str = ""
    """A local Hugging Face tokenizer folder or ``tokenizer.json`` to count prompt tokens with;
    empty: a conservative estimate from the text's size."""
    connect_timeout: float = Field(10.0, gt=0, le=600)
    read_timeout: float = Field(120.0, gt=0, le=3600)
    retries: int = Field(3, ge=0, le=20)
    retry_backoff: float = Field(1.0, ge=0, le=60)
    max_retry_wait: float = Field(30.0, ge=0, le=3600)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(
                "must be the server's http:// or https:// address, usually ending in /v1, "
                "e.g. http://127.0.0.1:8000/v1"
            )
        return value.rstrip("/")


class GenerationSettings(_Section):
    """How replies are decoded; also the per-call options a backend receives."""

    max_new_tokens: int = Field(256, ge=1, le=32768)
    strategy: Literal["greedy", "sample", "beam"] = "greedy"
    temperature: float = Field(0.7, gt=0.0, le=5.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    top_k: int = Field(50, ge=0)
    num_beams: int = Field(4, ge=2, le=16)
    repetition_penalty: float = Field(1.1, ge=1.0, le=2.0)
    stop: tuple[str, ...] = ()
    seed: int = Field(-1, ge=-1)

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in value):
            raise ValueError("stop strings must not be empty")
        return value


class ContextSettings(_Section):
    """What goes into the prompt and how many tokens it may take."""

    system_prompt: str = "You are a helpful AI assistant."
    window: int = Field(0, ge=0)
    history_limit: int = Field(200, ge=2)
    extra_share: float = Field(0.25, gt=0.0, le=0.9)


class StorageSettings(_Section):
    """Where state is stored."""

    url: str = ""
    max_conversations_in_memory: int = Field(10_000, ge=1)
    conversation_wait: float = Field(120.0, ge=0.0, le=3600.0)
    """Seconds a message waits while another process handles its conversation."""

    @field_validator("url")
    @classmethod
    def _looks_like_url(cls, value: str) -> str:
        if value and not re.match(r"^[a-z][a-z0-9]*(\+[a-z0-9]+)?://", value):
            raise ValueError(
                "must be a database URL such as sqlite:///path/to/chat.db or "
                "postgresql+psycopg://user@host/db, or empty for the default"
            )
        return value


class AdapterSettings(_Section):
    """The base of an adapter's section ``[adapters.<name>]``: each adapter registers a subclass
    with its own keys, validated when the app is built, with the same one-line errors and
    secret rules as the core settings. Values from the environment arrive as text: tables and
    lists are JSON there."""

    enabled: bool = False
    """Whether ``chatcore run`` starts this adapter."""

    @model_validator(mode="before")
    @classmethod
    def _json_from_environment(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        return _json_fields(cls, data)


class MemorySettings(_Section):
    """What chatcore learns and keeps about each user (docs/memory.md)."""

    learn: bool = True
    recall: int = Field(3, ge=0, le=50)
    embedder: Literal["minilm", "hashing"] = "minilm"
    min_score: float = Field(0.35, ge=-1.0, le=1.0)
    summaries: bool = True
    retention_days: float = Field(0, ge=0)


class PluginsSettings(_Section):
    """Which plugins load. Entry-point plugins load unless disabled or left out of
    ``CHATCORE_PLUGINS`` (a comma-separated allowlist, when set)."""

    builtin: tuple[str, ...] = (
        "backends",
        "commands",
        "memory",
        "safety",
        "postprocess",
        "terminal",
        "websocket",
        "discord",
    )
    disabled: tuple[str, ...] = ()
    hook_timeout: float = Field(10.0, gt=0, le=3600)
    command_timeout: float = Field(60.0, gt=0, le=3600)
    max_failures: int = Field(5, ge=0)


class PipelineSettings(_Section):
    """The reply pipeline's steps (docs/pipeline.md)."""

    steps: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Raw ``[pipeline.steps.<name>]`` sections; each is validated by ``step_settings``
    against the settings model its step registered."""


class LimitsSettings(_Section):
    """What one user may ask of the model, and how much the model does at once
    (docs/pipeline.md, Limits). Each limit is per process, except ``daily_tokens`` on a
    database store, which every process sharing the database counts together."""

    messages_per_minute: int = Field(0, ge=0, le=100_000)
    """Per user, every message (commands too): the refill rate of a token bucket; 0: off."""
    burst: int = Field(10, ge=1, le=100_000)
    """Messages a user may send at once before the rate applies (the bucket's size)."""
    daily_tokens: int = Field(0, ge=0)
    """Per user and UTC day, prompt plus completion tokens of model replies; 0: off."""
    max_generations: int = Field(8, ge=0, le=10_000)
    """Replies generated at once in this process; 0: no cap."""
    max_queued: int = Field(32, ge=0, le=100_000)
    """Replies waiting for a free generation, in arrival order; beyond them: refused."""
    generation_timeout: float = Field(300.0, ge=0, le=86_400)
    """Seconds one generation may run; then it stops, keeping what was shown. 0: off."""


class LifecycleSettings(_Section):
    """How the process stops."""

    shutdown_timeout: float = Field(10.0, gt=0, le=600)


class LoggingSettings(_Section):
    """Log output (to standard error)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    home: str = ""
    model: ModelSettings = ModelSettings()
    generation: GenerationSettings = GenerationSettings()
    context: ContextSettings = ContextSettings()
    storage: StorageSettings = StorageSettings()
    memory: MemorySettings = MemorySettings()
    openai: OpenAISettings = OpenAISettings()
    adapters: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Raw ``[adapters.<name>]`` sections; each is validated by ``section_settings`` against
    the model its adapter registered."""
    plugins: PluginsSettings = PluginsSettings()
    pipeline: PipelineSettings = PipelineSettings()
    limits: LimitsSettings = LimitsSettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    logging: LoggingSettings = LoggingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments given in code win, then the environment; ``load_settings`` adds the files.
        if isinstance(env_settings, EnvSettingsSource):
            env_settings.env_vars = {
                k: v for k, v in env_settings.env_vars.items() if k.lower() not in _NOT_SETTINGS
            }
        return (init_settings, env_settings)

    _origin: dict[tuple[str, ...], Path] = PrivateAttr(default_factory=dict)
    """Which file set each value that came from a file (for error messages)."""
    _explicit: frozenset[tuple[str, ...]] | None = PrivateAttr(default=None)
    """What the user's file and the environment set (``load_settings``); None: built in code."""

    def is_explicit(self, *loc: str) -> bool:
        """Whether the setting at ``loc`` (e.g. ``"generation", "top_k"``) was chosen, in the
        user's file, the environment or in code, rather than left at its default: a backend
        refuses what it cannot honour only when it was chosen."""
        if self._explicit is not None:
            return any(loc[:n] in self._explicit for n in range(1, len(loc) + 1))
        node: BaseModel = self
        for part in loc:
            if part not in node.model_fields_set:
                return False
            child = getattr(node, part)
            if not isinstance(child, BaseModel):
                return True
            node = child
        return True

    @property
    def home_path(self) -> Path:
        """The data directory: ``home`` (``CHATCORE_HOME``) or the platform's user data dir."""
        if self.home:
            return Path(self.home).expanduser()
        return Path(platformdirs.user_data_dir("chatcore", appauthor=False))

    @property
    def storage_url(self) -> str:
        """The database URL, defaulting to SQLite in the data directory."""
        return self.storage.url or f"sqlite:///{self.home_path / 'chatcore.db'}"

    @property
    def context_reserve(self) -> int:
        """Tokens kept free for the reply."""
        return self.generation.max_new_tokens


def default_config_path() -> Path:
    """The shipped ``default.toml``."""
    return Path(str(resources.files("chatcore.defaults").joinpath("default.toml")))


def load_settings(config_file: str | Path | None = None) -> Settings:
    """Load and validate the configuration; raise ``ConfigError`` with one line per problem."""
    if config_file is None and os.environ.get(CONFIG_ENV):
        config_file = os.environ[CONFIG_ENV]
    files = [default_config_path()]
    if config_file is not None:
        path = Path(config_file).expanduser()
        if path.is_dir():
            raise ConfigError([f"config error: config file {path} is a directory, not a file"])
        if not path.is_file():
            raise ConfigError([f"config error: config file {path} does not exist"])
        files.append(path)
    _check_environment(os.environ)

    merged: dict[str, Any] = {}
    origin: dict[tuple[str, ...], Path] = {}
    for path in files:
        data = _read_toml(path)
        _reject_secrets_in_file(data, path)
        _reject_url_password_in_file(data, path)
        for loc in _leaf_paths(data):
            origin[loc] = path
        _deep_merge(merged, data)

    class _FromFiles(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            first = super().settings_customise_sources(
                settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
            )
            return (*first, InitSettingsSource(settings_cls, init_kwargs=merged))

    try:
        loaded = _FromFiles()
    except ValidationError as error:
        raise ConfigError(_describe(error, origin)) from None
    except SettingsError as error:  # a value the environment source could not parse
        raise ConfigError([f"config error: {error}"]) from None
    settings = Settings.model_validate(dict(loaded))
    settings._origin = origin
    defaults = default_config_path()
    settings._explicit = frozenset(
        {loc for loc, path in origin.items() if path != defaults} | _environment_locs(os.environ)
    )
    _check_consistency(settings)
    return settings


M = TypeVar("M", bound=AdapterSettings)
S = TypeVar("S", bound=BaseModel)


def section_settings(settings: Settings, name: str, model: type[M]) -> M:
    """Validate the section ``[adapters.<name>]`` against ``model``; raise ``ConfigError`` with
    one line per problem, naming where each value came from. Secrets in files are refused."""
    return _validate_section(settings, ("adapters", name), settings.adapters.get(name, {}), model)


def step_settings(settings: Settings, name: str, model: type[S]) -> S:
    """Validate the section ``[pipeline.steps.<name>]`` against the settings ``model`` the step
    registered, with the same one-line errors as ``section_settings``; a step without a section
    gets the model's defaults. Tables and lists from the environment are JSON."""
    raw = settings.pipeline.steps.get(name, {})
    return _validate_section(settings, ("pipeline", "steps", name), _json_fields(model, raw), model)


def _validate_section(
    settings: Settings, prefix: tuple[str, ...], raw: Mapping[str, Any], model: type[S]
) -> S:
    secrets_in_files = [
        f"config error: {'.'.join(loc)} is a secret and must not be in "
        f"{settings._origin[loc]}; remove it there and set the environment variable "
        f"{_env_name(loc)} instead"
        for loc in ((*prefix, *path) for path in _secret_paths(model))
        if loc in settings._origin
    ]
    if secrets_in_files:
        raise ConfigError(secrets_in_files)
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, settings._origin, prefix, model)) from None


def _json_fields(model: type[BaseModel], data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with the text values of list and table fields decoded as JSON, where they are
    JSON: the environment can only give text."""
    decoded = dict(data)
    for name, value in data.items():
        field = model.model_fields.get(name)
        if field is not None and isinstance(value, str) and _is_structured(field.annotation):
            with contextlib.suppress(ValueError):
                decoded[name] = json.loads(value)
    return decoded


def _check_consistency(settings: Settings) -> None:
    """Refuse, before any model loads, combinations of valid values that cannot work."""
    window, reply = settings.context.window, settings.generation.max_new_tokens
    if window and reply >= window:
        raise ConfigError(
            [
                f"config error: generation.max_new_tokens = {reply} leaves no room for the prompt "
                f"in context.window = {window}; lower generation.max_new_tokens or raise "
                "context.window"
            ]
        )


def _section(annotation: Any) -> type[BaseModel] | None:
    """The model of a field whose value is a section (a nested table), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _env_name(loc: tuple[str, ...]) -> str:
    """The environment variable that sets the setting at ``loc``."""
    return ENV_PREFIX + "__".join(loc).upper()


_URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+]*://[^:/@]*:)([^@/]+)(@)")


def mask_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``********``."""
    return _URL_PASSWORD.sub(r"\1********\3", url)


def _reject_url_password_in_file(data: Mapping[str, Any], path: Path) -> None:
    storage = data.get("storage")
    url = storage.get("url") if isinstance(storage, Mapping) else None
    if isinstance(url, str) and _URL_PASSWORD.match(url):
        raise ConfigError(
            [
                f"config error: storage.url in {path} contains a password; set the whole URL "
                f"in the environment variable {ENV_PREFIX}STORAGE__URL instead, or use the "
                "database's own password file (for PostgreSQL, ~/.pgpass)"
            ]
        )


def _check_environment(environ: Mapping[str, str]) -> None:
    """Catch what pydantic-settings would ignore or crash on: misspelled ``CHATCORE_*``
    variables, and list or table values that are not JSON."""
    lines = []
    sections = ", ".join(Settings.model_fields)
    for name, value in sorted(environ.items()):
        if not name.upper().startswith(ENV_PREFIX) or name.lower() in _NOT_SETTINGS:
            continue
        loc = tuple(name[len(ENV_PREFIX) :].lower().split("__"))
        model: type[BaseModel] = Settings
        for depth, part in enumerate(loc):
            field = model.model_fields.get(part)
            if field is None:
                if depth == 0:
                    lines.append(
                        f"config error: unknown environment variable {name}; settings are "
                        f"CHATCORE_SECTION__KEY (two underscores), sections: {sections}"
                    )
                break  # an unknown key inside a section is reported by validation
            annotation = field.annotation
            nested = _section(annotation)
            if nested is not None and depth + 1 < len(loc):
                model = nested
                continue
            if depth + 1 == len(loc) and _is_structured(annotation) and not _is_json(value):
                example = '\'["a", "b"]\'' if "tuple" in str(annotation) else "a JSON object"
                lines.append(
                    f"config error: {'.'.join(loc)} = {value!r} (from environment variable "
                    f"{name}): must be JSON in the environment, e.g. {example}"
                )
            break
    if lines:
        raise ConfigError(lines)


def _environment_locs(environ: Mapping[str, str]) -> set[tuple[str, ...]]:
    """The settings ``CHATCORE_SECTION__KEY`` variables set."""
    return {
        tuple(name[len(ENV_PREFIX) :].lower().split("__"))
        for name in environ
        if name.upper().startswith(ENV_PREFIX) and name.lower() not in _NOT_SETTINGS
    }


def _is_structured(annotation: Any) -> bool:
    if _section(annotation) is not None:
        return True
    return str(annotation).startswith(("tuple", "list", "dict"))


def _is_json(value: str) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def masked_settings(settings: BaseModel) -> dict[str, Any]:
    """The settings as plain data, with every secret replaced by ``'********'``."""
    out: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            out[name] = masked_settings(value)
        elif isinstance(value, SecretStr):
            out[name] = "********" if value.get_secret_value() else ""
        elif isinstance(value, tuple):
            out[name] = list(value)
        else:
            out[name] = value
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"config error: {path} is not valid TOML: {error}"]) from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            [
                f"config error: {path} is not UTF-8 text (byte {error.start} cannot be decoded); "
                "save it as UTF-8"
            ]
        ) from None
    except OSError as error:
        raise ConfigError([f"config error: cannot read {path}: {error.strerror}"]) from None


def _secret_paths(
    model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        nested = _section(annotation)
        if nested is not None:
            yield from _secret_paths(nested, (*prefix, name))
        elif annotation is SecretStr or "SecretStr" in str(annotation):
            yield (*prefix, name)


def _reject_secrets_in_file(
    data: Mapping[str, Any], path: Path, model: type[BaseModel] = Settings
) -> None:
    lines = []
    for loc in _secret_paths(model):
        node: Any = data
        for part in loc:
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            lines.append(
                f"config error: {'.'.join(loc)} is a secret and must not be in {path}; "
                f"remove it there and set the environment variable {_env_name(loc)} instead"
            )
    if lines:
        raise ConfigError(lines)


def _leaf_paths(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in data.items():
        if isinstance(value, Mapping):
            yield from _leaf_paths(value, (*prefix, key))
        else:
            yield (*prefix, key)


def _deep_merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def _describe(
    error: ValidationError,
    origin: Mapping[tuple[str, ...], Path],
    prefix: tuple[str, ...] = (),
    root: type[BaseModel] | None = None,
) -> list[str]:
    """One line per validation error of ``root`` (the settings, or a section at ``prefix``)."""
    lines = []
    present = {name.upper() for name in os.environ}
    for item in error.errors():
        relative = tuple(str(part) for part in item["loc"])
        loc = (*prefix, *relative)
        key = ".".join(loc)
        # The value came from the longest prefix of its path that the environment or a file set.
        prefixes = [loc[:n] for n in range(len(loc), 0, -1)]
        env = next((_env_name(p) for p in prefixes if _env_name(p) in present), None)
        found = next((origin[p] for p in prefixes if p in origin), None)
        if env is not None:
            source = f"from environment variable {env}"
        else:
            source = f"from {found}" if found else "from defaults"
        if item["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(relative[:-1], root or Settings)) or "none"
            lines.append(
                f"config error: {key} ({source}) is not a known key; allowed here: {allowed}"
            )
            continue
        value = item.get("input")
        shown = repr(value) if not isinstance(value, dict) else "a table"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"config error: {key} = {shown} ({source}): {message}")
    return lines


def _allowed_keys(loc: tuple[str, ...], model: type[BaseModel]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(part)
        nested = _section(field.annotation) if field is not None else None
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)
