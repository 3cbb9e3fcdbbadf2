"""The ``[adapters.websocket]`` section: where the server listens, who may connect (tokens,
origins, proxies) and the limits that keep one client from taking the server.

``tokens`` is a secret: accepted only from the environment, as a JSON object of token -> user id.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any

import yarl
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from chatcore.config import AdapterSettings

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
_USER_ID = re.compile(r"^[^\x00-\x1f\x7f-\x9f]{1,64}$")
_TOKENS_HELP = (
    "(CHATCORE_ADAPTERS__WEBSOCKET__TOKENS) must be a JSON object mapping each token to a "
    "user id, e.g. "
    '\'{"a-long-random-token": "alice"}\' (tokens of at least 8 characters, '
    "user ids of 1 to 64 printable characters)"
)


class WebSocketSettings(AdapterSettings):
    """``[adapters.websocket]``: the WebSocket chat, its web page and its HTTP endpoints."""

    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8080, ge=0, le=65535)
    tokens: SecretStr = SecretStr("")
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    max_message_bytes: int = Field(16384, ge=512, le=1_048_576)
    heartbeat: float = Field(30.0, ge=0, le=3600)
    max_connections: int = Field(1000, ge=1)
    max_connections_per_ip: int = Field(200, ge=1)
    messages_per_minute: int = Field(120, ge=1)
    messages_per_minute_per_ip: int = Field(3000, ge=1)
    max_pending: int = Field(8, ge=1, le=1000)
    auth_failures_per_minute_per_ip: int = Field(30, ge=1)

    _users: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def users(self) -> dict[str, str]:
        """Token -> user id; empty when no tokens are configured."""
        return dict(self._users)

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens_as_json(cls, value: Any) -> Any:
        if isinstance(value, Mapping):  # given in code as a table
            return json.dumps(dict(value))
        return value

    @model_validator(mode="after")
    def _parse_tokens(self) -> WebSocketSettings:
        # A model-level check, so that a mistake is reported without echoing the secret.
        raw = self.tokens.get_secret_value().strip()
        if not raw:
            return self
        try:
            users = json.loads(raw)
        except ValueError:
            raise ValueError(f"tokens {_TOKENS_HELP}") from None
        if not isinstance(users, dict) or not users:
            raise ValueError(f"tokens {_TOKENS_HELP}")
        for token, user in users.items():
            valid_token = len(token) >= 8 and token == token.strip() and token.isprintable()
            if not (valid_token and isinstance(user, str) and _USER_ID.match(user)):
                raise ValueError(f"tokens {_TOKENS_HELP}")
        self._users = dict(users)
        return self

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalize_origin(origin) for origin in value)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for proxy in value:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"{proxy!r} is not an IP address or network such as 10.0.0.1 or 10.0.0.0/8"
                ) from None
        return value


def normalize_origin(origin: str) -> str:
    """``origin`` as browsers send it (``scheme://host[:port]``, lower case, no default port),
    or ``*``; ``ValueError`` for anything else."""
    if origin == "*":
        return origin
    url = yarl.URL(origin.strip().rstrip("/"))
    if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/"):
        raise ValueError(
            f"{origin!r} is not an origin: use scheme://host[:port] such as "
            "https://chat.example.com, or * for any"
        )
    port = f":{url.explicit_port}" if not url.is_default_port() else ""
    host = url.host if ":" not in url.host else f"[{url.host}]"
    return f"{url.scheme}://{host.lower()}{port}"


def is_loopback(host: str) -> bool:
    """True for a host name or address that only this machine can reach."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
