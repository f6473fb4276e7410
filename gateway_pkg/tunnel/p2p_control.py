"""Firezone's in-band p2p control protocol between a client and the gateway.

Control events travel inside the WireGuard tunnel as IPv6 packets with source and
destination `::` and next header 0xFF. The IPv6 payload is an 8-byte header whose first
byte is the event type (the other seven are reserved, sent as zero), followed by JSON.
The protocol is event based and unreliable; the client re-sends AssignedIps, and every
event is idempotent.

Event types: 0 AssignedIps (client -> gateway), 1 DomainStatus (gateway -> client),
2 Goodbye (either way, empty payload).

Public API:
- `is_p2p_control(packet) -> bool`: cheap test, run on every decrypted packet first.
- `decode(packet) -> AssignedIps | DomainStatus | Goodbye | UnknownEvent`; raises
  `P2pControlError` (a `ValueError`) for anything malformed, never another exception.
- `encode_domain_status(resource, domain, active)`, `encode_goodbye()`,
  `encode_assigned_ips(resource, domain, proxy_ips)` (the client side, for tests);
  `encode(event_type, payload)` frames any event type and raw payload, which the typed
  encoders build on and tests use to craft events the typed ones never produce.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Final

from gateway_pkg.resources import IPAddress
from gateway_pkg.tunnel.packet import build_ipv6, total_length, version

ASSIGNED_IPS: Final = 0
DOMAIN_STATUS: Final = 1
GOODBYE: Final = 2

NEXT_HEADER: Final = 0xFF
_HEADER_LEN: Final = 8
_UNSPECIFIED: Final = bytes(16)
_BOTH_UNSPECIFIED: Final = _UNSPECIFIED + _UNSPECIFIED  # source and destination
# Upstream sizes the largest AssignedIps (a 253-byte name and 8 addresses) at 402 bytes;
# anything much larger is not a control event we produce or accept.
MAX_PAYLOAD: Final = 1280 - 40 - _HEADER_LEN

STATUS_ACTIVE: Final = "Active"
STATUS_INACTIVE: Final = "Inactive"


class P2pControlError(ValueError):
    """A control packet that cannot be decoded."""


@dataclass(frozen=True, slots=True)
class AssignedIps:
    resource: str
    domain: str
    proxy_ips: tuple[IPAddress, ...]


@dataclass(frozen=True, slots=True)
class DomainStatus:
    resource: str
    domain: str
    active: bool


@dataclass(frozen=True, slots=True)
class Goodbye:
    pass


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """An event type this version does not know; ignored for forward compatibility."""

    event_type: int


P2pEvent = AssignedIps | DomainStatus | Goodbye | UnknownEvent


def is_p2p_control(packet: bytes | bytearray) -> bool:
    """True for an IPv6 packet `::` -> `::` with next header 0xFF."""
    # Byte 6 first: it is 0xFF for almost no ordinary packet (IPv4: flags and fragment
    # offset), so the test costs one comparison on the traffic it runs for.
    return (
        len(packet) >= 40 + _HEADER_LEN
        and packet[6] == NEXT_HEADER
        and version(packet) == 6
        and packet[8:40] == _BOTH_UNSPECIFIED
    )


def encode(event_type: int, payload: bytes) -> bytes:
    """One control packet: the 8-byte event header and `payload` (JSON for known events)."""
    body = bytes((event_type, 0, 0, 0, 0, 0, 0, 0)) + payload
    if len(body) > MAX_PAYLOAD + _HEADER_LEN:
        raise ValueError("control payload too large")
    # Hop limit 0, as upstream: the packet never leaves the tunnel.
    return build_ipv6(_UNSPECIFIED, _UNSPECIFIED, NEXT_HEADER, body, hop_limit=0)


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def encode_domain_status(resource: str, domain: str, active: bool) -> bytes:
    status = STATUS_ACTIVE if active else STATUS_INACTIVE
    return encode(DOMAIN_STATUS, _json({"resource": resource, "domain": domain, "status": status}))


def encode_goodbye() -> bytes:
    return encode(GOODBYE, b"")


def encode_assigned_ips(resource: str, domain: str, proxy_ips: list[IPAddress] | tuple[IPAddress, ...]) -> bytes:
    return encode(
        ASSIGNED_IPS,
        _json({"resource": resource, "domain": domain, "proxy_ips": [str(ip) for ip in proxy_ips]}),
    )


def _payload_object(payload: bytes) -> dict[str, object]:
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise P2pControlError(f"payload is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise P2pControlError("payload is not a JSON object")
    return obj


def _str_field(obj: dict[str, object], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise P2pControlError(f"missing or invalid {key!r}")
    return value


def decode(packet: bytes | bytearray) -> P2pEvent:
    """Decode one control packet (check `is_p2p_control` first)."""
    if not is_p2p_control(packet):
        raise P2pControlError("not a p2p control packet")
    length = total_length(packet)
    if length is None or length < 40 + _HEADER_LEN or length > len(packet):
        raise P2pControlError("bad payload length")
    event_type = packet[40]
    payload = bytes(packet[40 + _HEADER_LEN : length])
    if event_type == GOODBYE:
        return Goodbye()
    if event_type == ASSIGNED_IPS:
        obj = _payload_object(payload)
        ips = obj.get("proxy_ips")
        if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
            raise P2pControlError("missing or invalid 'proxy_ips'")
        try:
            proxy_ips = tuple(ipaddress.ip_address(ip) for ip in ips)
        except ValueError as e:
            raise P2pControlError(f"bad proxy IP: {e}") from None
        return AssignedIps(_str_field(obj, "resource"), _str_field(obj, "domain"), proxy_ips)
    if event_type == DOMAIN_STATUS:
        obj = _payload_object(payload)
        # Unknown statuses read as Inactive, as upstream's `#[serde(other)]`.
        active = obj.get("status") == STATUS_ACTIVE
        return DomainStatus(_str_field(obj, "resource"), _str_field(obj, "domain"), active)
    return UnknownEvent(event_type)
