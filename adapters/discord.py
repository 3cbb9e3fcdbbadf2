"""The Discord adapter as a plugin: its settings section ``[adapters.discord]`` and its
registration. The bot itself (``discord_bot``, on discord.py) is imported only when it starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field, SecretStr, field_validator

from chatcore import hookimpl
from chatcore.adapter_api import AdapterContext
from chatcore.config import AdapterSettings

TOKEN_ENV = "DISCORD_TOKEN"
"""Where the token is read when ``CHATCORE_ADAPTERS__DISCORD__TOKEN`` is not set."""


class DiscordSettings(AdapterSettings):
    """``[adapters.discord]``: the Discord bot (docs/discord.md). The token is a secret: it comes
    only from the environment, ``CHATCORE_ADAPTERS__DISCORD__TOKEN`` or ``DISCORD_TOKEN``."""

    token: SecretStr = SecretStr("")
    direct_messages: bool = True
    reply_in_thread: bool = False
    allowed_guilds: tuple[int, ...] = ()
    denied_guilds: tuple[int, ...] = ()
    allowed_channels: tuple[int, ...] = ()
    denied_channels: tuple[int, ...] = ()
    admins: tuple[int, ...] = ()
    admin_commands: tuple[str, ...] = ()
    public_commands: tuple[str, ...] = ()
    slash_commands: bool = True
    edit_interval: float = Field(1.0, ge=0.1, le=60.0)
    api_base: str = ""
    gateway_url: str = ""

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, or empty for Discord")
        return value.rstrip("/")

    @field_validator("gateway_url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if value and not value.startswith(("ws://", "wss://")):
            raise ValueError("must be a ws:// or wss:// URL, or empty for Discord")
        return value


def create_adapter(context: AdapterContext) -> Any:
    """The Discord adapter; discord.py loads here, not when plugins load."""
    from .discord_bot import DiscordAdapter

    return DiscordAdapter(context)


@hookimpl
def register_adapters(register: Callable[..., None]) -> None:
    register("discord", create_adapter, settings=DiscordSettings)
