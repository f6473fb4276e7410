"""Small helpers for tests and benchmarks: IPv4/ICMP echo packets and a seeded rng.

Not used by the protocol core; kept in the package so unit tests, the interop test and the
benchmark build packets the same way.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from dataclasses import dataclass

from .device import WireGuardDevice
from .keys import public_key

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
_IPV4_HEADER = struct.Struct(">BBHHHBBH4s4s")
_ICMP_ECHO = struct.Struct(">BBHHH")


def internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = int(sum(struct.unpack(f">{len(data) // 2}H", data)))
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


# A known-answer handshake initiation: fixed keys, rng and wall clock. The unit tests pin its
# bytes; the interop test sends exactly these bytes to wireguard-go, which must accept them.
VECTOR_INITIATOR_PRIVATE = bytes.fromhex("c8d5a95c5d6a7f1d2b0e3e4a0f3b2c1d4e5f60718293a4b5c6d7e8f90a1b2c5d")
VECTOR_RESPONDER_PRIVATE = bytes.fromhex("e0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddee7f")
VECTOR_PRESHARED_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
VECTOR_RNG_SEED = b"firezone-gateway-py wireguard vector"
VECTOR_WALL_CLOCK = 1_700_000_000.25
VECTOR_RESPONDER_ENDPOINT = ("192.0.2.1", 51820)


def vector_initiator() -> tuple[WireGuardDevice, bytes]:
    """The initiator device of the known-answer vector and the initiation it sends first."""
    device = WireGuardDevice(
        VECTOR_INITIATOR_PRIVATE,
        rng=SeededRng(VECTOR_RNG_SEED),
        wall_clock=lambda: VECTOR_WALL_CLOCK,
        under_load=lambda: False,
    )
    responder = public_key(VECTOR_RESPONDER_PRIVATE)
    device.add_peer(responder, VECTOR_PRESHARED_KEY)
    device.set_peer_endpoint(responder, VECTOR_RESPONDER_ENDPOINT)
    out = device.initiate_handshake(responder, 0.0)
    return device, bytes(out.datagrams[0][0])
