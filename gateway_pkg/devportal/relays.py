"""TURN relays the development portal hands out, with coturn REST-style credentials.

coturn with `use-auth-secret` accepts username `<expiry unix>:<salt>` and password
`base64(HMAC-SHA1(static-auth-secret, username))` in realm `firezone`. Gateways get a salt
derived from their public key (as upstream), clients a random one. See docs/devportal.md
and ../shared/reference/firezone-gateway-facts.md §2.4 (the relay object). No I/O here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway_pkg.settings import Invalid, port_number

REALM = "firezone"
GATEWAY_TTL = 90 * 24 * 3600  # upstream: 90 days for `init` and `relays_presence`


class InvalidRelay(ValueError):
    """A relay address list the portal refuses; the message says why."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    expires_at: int


def mint(secret: str, salt: str, expires_at: int) -> Credentials:
    """coturn REST credentials: `<expires_at>:<salt>`, base64(HMAC-SHA1(secret, username))."""
    username = f"{expires_at}:{salt}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return Credentials(username, base64.b64encode(digest).decode(), expires_at)


def gateway_salt(public_key: str) -> str:
    """Upstream's salt for a gateway: base64 of sha256 of its public key (URL-safe, unpadded)."""
    return base64.urlsafe_b64encode(hashlib.sha256(public_key.encode()).digest()).decode().rstrip("=")


def client_salt() -> str:
    return secrets.token_urlsafe(16)


def parse_addr(text: str) -> str:
    """`ip:port` or `[v6]:port` → the canonical form; InvalidRelay otherwise."""
    raw = text.strip()
    host, sep, port_text = raw.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if not sep or not host:
        raise InvalidRelay(f"relay address must be IP:PORT or [IPv6]:PORT, got {text!r}")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise InvalidRelay(f"relay address needs an IP address, got {text!r}") from None
    if ip.version == 6 and not bracketed:
        raise InvalidRelay(f"an IPv6 relay address is written [IPv6]:PORT, got {text!r}")
    if ip.version == 4 and bracketed:
        raise InvalidRelay(f"only IPv6 addresses go in brackets, got {text!r}")
    try:
        port = port_number(port_text, minimum=1)
    except Invalid:
        raise InvalidRelay(f"relay address needs a port (1-65535), got {text!r}") from None
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def parse_addrs(items: Iterable[Any]) -> tuple[str, ...]:
    """One relay's addresses: at most one IPv4 and one IPv6 (upstream's dual-stack relay)."""
    addrs: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidRelay(f"relay addresses must be strings, got {item!r}")
        addrs.append(parse_addr(item))
    if not addrs:
        raise InvalidRelay("a relay needs at least one address")
    families = [a.startswith("[") for a in addrs]
    if len(addrs) > 2 or len(set(families)) != len(families):
        raise InvalidRelay(f"a relay has at most one IPv4 and one IPv6 address, got {', '.join(addrs)}")
    return tuple(addrs)


def parse_relay_arg(text: str) -> tuple[str, ...]:
    """`--relay 198.18.9.1:3478,[fd00:9::1]:3478`: one relay, comma-separated addresses."""
    return parse_addrs(text.split(","))


@dataclass(frozen=True)
class Relay:
    id: str
    addrs: tuple[str, ...]

    def entries(self, creds: Credentials) -> list[dict[str, Any]]:
        """The relay objects of `init` / `relays_presence`: one per address, one id."""
        return [{"type": "turn", "id": self.id, "addr": addr, "username": creds.username,
                 "password": creds.password, "expires_at": creds.expires_at} for addr in self.addrs]

    def view(self, creds: Credentials) -> dict[str, Any]:
        """What a client is given (GET /v1/relays, flow answers)."""
        return {"id": self.id, "addrs": list(self.addrs), "username": creds.username,
                "password": creds.password, "realm": REALM, "expires_at": creds.expires_at}


class RelayBook:
    """The configured relays and the secret their credentials are minted with."""

    def __init__(self, secret: str | None, ttl: int = GATEWAY_TTL) -> None:
        self._secret = secret
        self.ttl = ttl
        self.relays: dict[str, Relay] = {}

    def __repr__(self) -> str:
        return f"RelayBook(relays={list(self.relays.values())!r}, ttl={self.ttl})"

    @property
    def enabled(self) -> bool:
        return self._secret is not None

    def add(self, addrs: tuple[str, ...], relay_id: str | None = None) -> Relay:
        if self._secret is None:
            raise InvalidRelay("no TURN secret: start the portal with --turn-secret-file")
        relay = Relay(relay_id or str(uuid.uuid4()), addrs)
        self.relays[relay.id] = relay
        return relay

    def remove(self, relay_id: str) -> Relay | None:
        return self.relays.pop(relay_id, None)

    def _mint(self, salt: str, now: float | None) -> Credentials:
        assert self._secret is not None
        return mint(self._secret, salt, int(time.time() if now is None else now) + self.ttl)

    def gateway_entries(self, public_key: str, relays: Iterable[Relay] | None = None,
                        now: float | None = None) -> list[dict[str, Any]]:
        """Relay objects for one gateway (all relays unless `relays` is given)."""
        chosen = list(self.relays.values() if relays is None else relays)
        if not chosen or self._secret is None:
            return []
        creds = self._mint(gateway_salt(public_key), now)
        return [entry for relay in chosen for entry in relay.entries(creds)]

    def client_views(self, now: float | None = None) -> list[dict[str, Any]]:
        """Every relay with fresh client credentials (a random salt per call)."""
        if self._secret is None:
            return []
        creds = self._mint(client_salt(), now)
        return [relay.view(creds) for relay in self.relays.values()]
