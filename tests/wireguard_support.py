"""What the WireGuard unit tests, the wireguard-go interop test and the core benchmark
share: ICMP echo packets, a seeded rng and the known-answer handshake vector.

Kept in one module so the unit tests pin exactly the initiation bytes the interop test
sends to wireguard-go, and every side builds its echo packets alike.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from gateway_pkg.tunnel.packet import (
    ICMPV4_ECHO_REQUEST,
    ICMPV6_ECHO_REQUEST,
    IpPacket,
    PacketError,
)
from gateway_pkg.wireguard.device import WireGuardDevice
from gateway_pkg.wireguard.keys import public_key
from tests.packets import build_icmp_echo

_ECHO_REQUESTS = frozenset({ICMPV4_ECHO_REQUEST, ICMPV6_ECHO_REQUEST})


def icmp_echo(
    source: str,
    destination: str,
    *,
    identifier: int,
    sequence: int,
    payload: bytes = b"",
    reply: bool = False,
) -> bytes:
    """An echo request (or reply) of 28 + len(payload) bytes over IPv4, 48 + over IPv6."""
    return build_icmp_echo(source, destination, identifier, sequence, payload, reply=reply)


@dataclass(frozen=True)
class IcmpEcho:
    source: str
    destination: str
    kind: int
    identifier: int
    sequence: int
    payload: bytes


def parse_icmp_echo(packet: bytes) -> IcmpEcho | None:
    """The echo request/reply in `packet`, or None if it is something else."""
    try:
        p = IpPacket(packet)
    except PacketError:
        return None
    if p.icmp_id is None or p.icmp_type is None:
        return None
    start = p.header_len
    (sequence,) = struct.unpack_from("!H", p.buf, start + 6)
    return IcmpEcho(
        str(p.src_ip),
        str(p.dst_ip),
        p.icmp_type,
        p.icmp_id,
        sequence,
        p.buf[start + 8 : p.total_len],
    )


def echo_reply_for(request: bytes) -> bytes | None:
    """What a host answers to an echo request; None for anything else."""
    echo = parse_icmp_echo(request)
    if echo is None or echo.kind not in _ECHO_REQUESTS:
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
