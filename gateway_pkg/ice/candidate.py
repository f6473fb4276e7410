"""ICE candidates (RFC 8445 §5.1, RFC 8839 §5.1): the value, its SDP form, priority and foundation.

The gateway trickles its candidates to clients and receives theirs through the portal as SDP
candidate strings, in the form Firezone (str0m) writes them:

    candidate:<foundation> 1 udp <priority> <ip> <port> typ <type>[ raddr <ip> rport <port>]

Only UDP candidates of component 1 with literal IP addresses are supported; anything else is
refused by `Candidate.from_sdp` and skipped by `parse_candidates`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger(__name__)

Address = tuple[str, int]

# RFC 8445 §5.1.2.2 recommended type preferences.
TYPE_PREFERENCE = {"host": 126, "prflx": 110, "srflx": 100, "relay": 0}
MAX_PRIORITY = (1 << 31) - 1
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]{1,32}")
_PREFIXES = ("a=candidate:", "candidate:")


class CandidateType(StrEnum):
    HOST = "host"
    SRFLX = "srflx"
    PRFLX = "prflx"
    RELAY = "relay"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One UDP transport address an ICE agent can be reached at."""

    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    type: CandidateType
    related_address: str | None = None
    related_port: int | None = None

    @property
    def addr(self) -> Address:
        return (self.address, self.port)

    @property
    def version(self) -> int:
        """The IP version of the address (4 or 6)."""
        return ipaddress.ip_address(self.address).version

    @property
    def local_preference(self) -> int:
        """The local preference encoded in the priority (RFC 8445 §5.1.2.1)."""
        return (self.priority >> 8) & 0xFFFF

    def to_sdp(self) -> str:
        text = (
            f"candidate:{self.foundation} {self.component} {self.transport} {self.priority} "
            f"{self.address} {self.port} typ {self.type.value}"
        )
        if self.related_address is not None and self.related_port is not None:
            text += f" raddr {self.related_address} rport {self.related_port}"
        return text

    @classmethod
    def from_sdp(cls, text: str) -> Candidate:
        """Parse an SDP candidate attribute; ValueError for anything malformed or unsupported."""
        body = text.strip()
        for prefix in _PREFIXES:
            if body.startswith(prefix):
                body = body[len(prefix) :]
                break
        fields = body.split()
        if len(fields) < 8 or len(fields) % 2:
            raise ValueError(f"candidate has {len(fields)} fields: {text!r}")
        foundation_, component, transport, prio, address, port, typ_kw, typ = fields[:8]
        if not _ICE_CHARS.fullmatch(foundation_):
            raise ValueError(f"bad foundation {foundation_!r}")
        if component != "1":
            raise ValueError(f"unsupported component {component!r}")
        if transport.lower() != "udp":
            raise ValueError(f"unsupported transport {transport!r}")
        priority_ = _integer(prio, "priority", 1, MAX_PRIORITY)
        if typ_kw != "typ":
            raise ValueError(f"expected 'typ', got {typ_kw!r}")
        try:
            kind = CandidateType(typ)
        except ValueError:
            raise ValueError(f"unknown candidate type {typ!r}") from None
        related_address: str | None = None
        related_port: int | None = None
        extensions = fields[8:]
        for name, value in zip(extensions[::2], extensions[1::2], strict=True):
            if name == "raddr":
                related_address = _ip(value)
            elif name == "rport":
                related_port = _integer(value, "rport", 0, 65535)
            # Other extension attributes (generation, network-id, ufrag, ...) are ignored.
        if (related_address is None) != (related_port is None):
            raise ValueError("raddr and rport come together")
        return cls(
            foundation=foundation_,
            component=1,
            transport="udp",
            priority=priority_,
            address=_ip(address),
            port=_integer(port, "port", 1, 65535),
            type=kind,
            related_address=related_address,
            related_port=related_port,
        )


def _integer(text: str, what: str, low: int, high: int) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"{what} is not an integer: {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{what} out of range: {value}")
    return value


def _ip(text: str) -> str:
    """A literal IP address in canonical form (no hostnames, no mDNS names, no zone index)."""
    if "%" in text:
        raise ValueError(f"scoped address not supported: {text!r}")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None


def parse_candidates(texts: Iterable[str]) -> list[Candidate]:
    """The candidates that parse; the others are logged at debug level and skipped."""
    candidates = []
    for text in texts:
        try:
            candidates.append(Candidate.from_sdp(text))
        except (ValueError, TypeError, AttributeError) as exc:
            log.debug("skipping ICE candidate %r: %s", text, exc)
    return candidates


def priority(type: CandidateType, local_preference: int = 65535, component: int = 1) -> int:
    """RFC 8445 §5.1.2.1: 2^24 * type preference + 2^8 * local preference + (256 - component)."""
    if not 0 <= local_preference <= 0xFFFF:
        raise ValueError(f"local preference out of range: {local_preference}")
    if not 1 <= component <= 256:
        raise ValueError(f"component out of range: {component}")
    return (TYPE_PREFERENCE[type.value] << 24) + (local_preference << 8) + (256 - component)


def foundation(type: CandidateType, base_ip: str, server: str | None = None) -> str:
    """Equal for candidates of one type, base IP, server and transport (RFC 8445 §5.1.1.3)."""
    key = f"{type.value}|udp|{base_ip}|{server or ''}".encode()
    return hashlib.blake2s(key, digest_size=8).hexdigest()


def sort_by_priority(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Highest priority first (the order we broadcast in)."""
    return sorted(candidates, key=lambda c: c.priority, reverse=True)
