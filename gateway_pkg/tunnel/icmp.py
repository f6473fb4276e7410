"""ICMP error replies the gateway sends back through the tunnel to a client.

- `prohibited(packet)`: destination unreachable, "communication administratively
  prohibited" (ICMPv4 type 3 code 13, RFC 1812; ICMPv6 type 1 code 1, RFC 4443): the
  answer to a packet the client's policy does not allow.
- `unreachable(packet)`: host unreachable (ICMPv4 type 3 code 1) / address unreachable
  (ICMPv6 type 1 code 3): the answer for a DNS-resource proxy IP that maps to no real
  address (the name did not resolve in that family), as upstream does since PR #10623.
- `destination_unreachable(packet, v4_code, v6_code)`: the general form.

Each takes the offending packet (parsed `IpPacket` or raw bytes) and returns the reply
packet, or None where the RFCs forbid an error (RFC 1122 §3.2.2, RFC 4443 §2.4(e)): in
answer to an ICMP error, to a non-first fragment, or to a multicast/broadcast/unspecified
source. The reply's source is the original destination and its destination the original
source; it quotes as much of the original as fits in 576 bytes (IPv4, RFC 1812 §4.3.2.3)
or 1280 bytes (IPv6, RFC 4443 §2.4(c)).
"""

from __future__ import annotations

import struct
from typing import Final

from gateway_pkg.tunnel.checksum import internet_checksum, pseudo_header_sum
from gateway_pkg.tunnel.packet import (
    ICMPV4_DEST_UNREACHABLE,
    ICMPV6_DEST_UNREACHABLE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    IpPacket,
    PacketError,
    build_ipv4,
    build_ipv6,
)

ICMPV4_CODE_HOST_UNREACHABLE: Final = 1
ICMPV4_CODE_ADMIN_PROHIBITED: Final = 13
ICMPV6_CODE_ADMIN_PROHIBITED: Final = 1
ICMPV6_CODE_ADDRESS_UNREACHABLE: Final = 3

IPV4_MAX_ERROR_LEN: Final = 576
IPV6_MAX_ERROR_LEN: Final = 1280
_ICMP_ERROR_HEADER: Final = 8  # type, code, checksum, 4 unused bytes
_REPLY_TTL: Final = 64


def _may_answer(p: IpPacket) -> bool:
    if p.is_fragment or p.is_icmp_error:
        return False
    if p.version == 4:
        src = p.src
        # 0.0.0.0, limited broadcast, multicast (224/4) and class E (240/4).
        return src != b"\x00\x00\x00\x00" and src[0] < 224
    return p.src[0] != 0xFF and p.src != bytes(16)


def destination_unreachable(packet: IpPacket | bytes | bytearray, v4_code: int, v6_code: int) -> bytes | None:
    """A destination-unreachable reply to `packet`, or None where none may be sent."""
    try:
        p = packet if isinstance(packet, IpPacket) else IpPacket(packet)
    except PacketError:
        return None
    if not _may_answer(p):
        return None
    original = bytes(p.buf[: p.total_len])
    if p.version == 4:
        quoted = original[: IPV4_MAX_ERROR_LEN - 20 - _ICMP_ERROR_HEADER]
        message = bytearray(struct.pack("!BBHI", ICMPV4_DEST_UNREACHABLE, v4_code, 0, 0))
        message += quoted
        struct.pack_into("!H", message, 2, internet_checksum(message))
        return build_ipv4(p.dst, p.src, PROTO_ICMP, bytes(message), ttl=_REPLY_TTL)
    quoted = original[: IPV6_MAX_ERROR_LEN - 40 - _ICMP_ERROR_HEADER]
    message = bytearray(struct.pack("!BBHI", ICMPV6_DEST_UNREACHABLE, v6_code, 0, 0))
    message += quoted
    checksum = internet_checksum(message, pseudo_header_sum(p.dst, p.src, PROTO_ICMPV6, len(message)))
    struct.pack_into("!H", message, 2, checksum)
    return build_ipv6(p.dst, p.src, PROTO_ICMPV6, bytes(message), hop_limit=_REPLY_TTL)


def prohibited(packet: IpPacket | bytes | bytearray) -> bytes | None:
    """ "Communication administratively prohibited" in answer to `packet`."""
    return destination_unreachable(packet, ICMPV4_CODE_ADMIN_PROHIBITED, ICMPV6_CODE_ADMIN_PROHIBITED)


def unreachable(packet: IpPacket | bytes | bytearray) -> bytes | None:
    """Host (IPv4) / address (IPv6) unreachable in answer to `packet`."""
    return destination_unreachable(packet, ICMPV4_CODE_HOST_UNREACHABLE, ICMPV6_CODE_ADDRESS_UNREACHABLE)
