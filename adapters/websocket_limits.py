"""Limits of the WebSocket adapter: message rates per connection and per client address, open
connections per address and in all, failed logins per address.

Rates are token buckets: ``per_minute`` is both the burst and the sustained rate, so at least
that many messages pass in any minute. State per address is dropped once it is back to fresh.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Clock = Callable[[], float]


class TokenBucket:
    """Admits ``per_minute`` events at once, refilled at ``per_minute`` a minute."""

    __slots__ = ("_clock", "_level", "_per_second", "_updated", "capacity")

    def __init__(self, per_minute: int, clock: Clock = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self._per_second = per_minute / 60.0
        self._clock = clock
        self._level = self.capacity
        self._updated = clock()

    def _refill(self) -> float:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._updated) * self._per_second)
        self._updated = now
        return self._level

    def take(self) -> bool:
        """Take one event if the bucket allows it."""
        if self._refill() >= 1.0:
            self._level -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until one more event would be admitted (0 when one would be now)."""
        missing = 1.0 - self._refill()
        return 0.0 if missing <= 0 else missing / self._per_second

    def full(self) -> bool:
        """Back to its fresh state: forgetting it changes nothing."""
        return self._refill() >= self.capacity


@dataclass
class _Address:
    """What is known about one client address."""

    messages: TokenBucket
    auth_failures: TokenBucket
    connections: int = 0


@dataclass
class Limits:
    """The limits of one server; all state is in memory, per process."""

    max_connections: int
    max_connections_per_ip: int
    messages_per_minute_per_ip: int
    auth_failures_per_minute_per_ip: int
    clock: Clock = time.monotonic
    connections: int = 0
    _addresses: dict[str, _Address] = field(default_factory=dict)

    def _address(self, ip: str) -> _Address:
        ip = limit_key(ip)
        found = self._addresses.get(ip)
        if found is None:
            found = self._addresses[ip] = _Address(
                TokenBucket(self.messages_per_minute_per_ip, self.clock),
                TokenBucket(self.auth_failures_per_minute_per_ip, self.clock),
            )
        return found

    def login_allowed(self, ip: str) -> bool:
        """False while ``ip`` has used up its failed logins for now."""
        found = self._addresses.get(ip)
        return found is None or found.auth_failures.retry_after() == 0.0

    def login_failed(self, ip: str) -> None:
        self._address(ip).auth_failures.take()

    def open_connection(self, ip: str) -> str | None:
        """Count a new connection from ``ip``; or say, as an error code, why it is refused."""
        if self.connections >= self.max_connections:
            return "server_full"
        address = self._address(ip)
        if address.connections >= self.max_connections_per_ip:
            return "too_many_connections"
        address.connections += 1
        self.connections += 1
        return None

    def close_connection(self, ip: str) -> None:
        address = self._addresses.get(ip)
        if address is not None and address.connections > 0:
            address.connections -= 1
            self.connections -= 1

    def take_message(self, ip: str) -> float:
        """Count one frame from ``ip``: 0 when allowed, else the seconds to wait."""
        bucket = self._address(ip).messages
        return 0.0 if bucket.take() else max(bucket.retry_after(), 0.001)

    def forget_idle(self) -> int:
        """Drop addresses with no connection and full buckets; return how many were dropped."""
        idle = [
            ip
            for ip, a in self._addresses.items()
            if a.connections == 0 and a.messages.full() and a.auth_failures.full()
        ]
        for ip in idle:
            del self._addresses[ip]
        return len(idle)

    def tracked(self) -> int:
        """Addresses currently remembered."""
        return len(self._addresses)


def client_address(peer: str | None, forwarded_for: str | None, trusted: Iterable[str]) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the right-most
    address in ``X-Forwarded-For`` that is not a trusted proxy (what the proxies saw)."""
    networks = [ipaddress.ip_network(t, strict=False) for t in trusted]
    address = peer or "unknown"
    if not networks or not _within(address, networks) or not forwarded_for:
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        if not _parses(hop):
            return address  # a malformed header: trust nothing in it
        if not _within(hop, networks):
            return hop
    return address


def _parses(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def limit_key(address: str) -> str:
    """Whose limits an address counts against: itself, or for IPv6 its /64 network (one
    host is handed a whole /64 and could rotate through it)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _within(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
