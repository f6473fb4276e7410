"""Small helpers for tests and benchmarks: IPv4/ICMP echo packets and a seeded rng.

Not used by the protocol core; kept in the package so unit tests, the interop test and the
benchmark build packets the same way.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from dataclasses import dataclass

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
_IPV4_HEADER = struct.Struct(">BBHHHBBH4s4s")
_ICMP_ECHO = struct.Struct(">BBHHH")


def internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_packet(source: str, destination: str, protocol: int, payload: bytes, ttl: int = 64) -> bytes:
    header = bytearray(
        _IPV4_HEADER.pack(
            0x45,
            0,
            20 + len(payload),
            0,
            0x4000,  # don't fragment
            ttl,
            protocol,
            0,
            ipaddress.IPv4Address(source).packed,
            ipaddress.IPv4Address(destination).packed,
        )
    )
    struct.pack_into(">H", header, 10, internet_checksum(bytes(header)))
    return bytes(header) + payload


def icmp_echo(
    source: str,
    destination: str,
    *,
    identifier: int,
    sequence: int,
    payload: bytes = b"",
    reply: bool = False,
) -> bytes:
    kind = ICMP_ECHO_REPLY if reply else ICMP_ECHO_REQUEST
    message = bytearray(_ICMP_ECHO.pack(kind, 0, 0, identifier, sequence) + payload)
    struct.pack_into(">H", message, 2, internet_checksum(bytes(message)))
    return ipv4_packet(source, destination, 1, bytes(message))


@dataclass(frozen=True)
class IcmpEcho:
    source: str
    destination: str
    kind: int
    identifier: int
    sequence: int
    payload: bytes


def parse_icmp_echo(packet: bytes) -> IcmpEcho | None:
    """The echo request/reply in an IPv4 packet, or None if it is something else."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 1:
        return None
    header_len = (packet[0] & 0x0F) * 4
    kind, _code, _sum, identifier, sequence = _ICMP_ECHO.unpack_from(packet, header_len)
    if kind not in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY):
        return None
    return IcmpEcho(
        str(ipaddress.IPv4Address(packet[12:16])),
        str(ipaddress.IPv4Address(packet[16:20])),
        kind,
        identifier,
        sequence,
        packet[header_len + 8 :],
    )


def echo_reply_for(request: bytes) -> bytes | None:
    echo = parse_icmp_echo(request)
    if echo is None or echo.kind != ICMP_ECHO_REQUEST:
        return None
    return icmp_echo(
        echo.destination,
        echo.source,
        identifier=echo.identifier,
        sequence=echo.sequence,
        payload=echo.payload,
        reply=True,
    )


class SeededRng:
    """Deterministic byte source (SHAKE-256 stream) standing in for os.urandom in tests."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._calls = 0

    def __call__(self, n: int) -> bytes:
        self._calls += 1
        return hashlib.shake_256(self._seed + self._calls.to_bytes(8, "little")).digest(n)
