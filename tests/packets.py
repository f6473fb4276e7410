"""Packet builders and checksum checks for tests and benchmarks.

They live outside the wheel because the gateway never builds TCP, UDP or echo packets
itself; they share the package's one checksum (`internet_checksum`) and its two IP
builders, so what the tests send is framed exactly as the gateway frames its own replies.
Addresses may be given as text, packed bytes or `ipaddress` objects.
"""

from __future__ import annotations

import ipaddress
import struct

from gateway_pkg.resources import IPAddress
from gateway_pkg.tunnel import packet as ip
from gateway_pkg.tunnel.checksum import internet_checksum, pseudo_header_sum
from gateway_pkg.tunnel.packet import (
    ICMPV4_ECHO_REPLY,
    ICMPV4_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_SYN,
    IpPacket,
)

AddressLike = str | bytes | IPAddress


def packed(address: AddressLike) -> bytes:
    if isinstance(address, bytes):
        return address
    if isinstance(address, str):
        return ipaddress.ip_address(address).packed
    return address.packed


def build_ipv4(src: AddressLike, dst: AddressLike, protocol: int, payload: bytes, *, ttl: int = 64) -> bytes:
    return ip.build_ipv4(packed(src), packed(dst), protocol, payload, ttl=ttl)


def build_ipv6(src: AddressLike, dst: AddressLike, next_header: int, payload: bytes, *, hop_limit: int = 64) -> bytes:
    return ip.build_ipv6(packed(src), packed(dst), next_header, payload, hop_limit=hop_limit)


def build_ip(src: AddressLike, dst: AddressLike, protocol: int, payload: bytes, *, ttl: int = 64) -> bytes:
    """IPv4 or IPv6 by the family of `src`."""
    src_b, dst_b = packed(src), packed(dst)
    if len(src_b) != len(dst_b):
        raise ValueError("source and destination families differ")
    if len(src_b) == 4:
        return ip.build_ipv4(src_b, dst_b, protocol, payload, ttl=ttl)
    return ip.build_ipv6(src_b, dst_b, protocol, payload, hop_limit=ttl)


def _l4_checksum(src: bytes, dst: bytes, protocol: int, segment: bytes | bytearray) -> int:
    return internet_checksum(segment, pseudo_header_sum(src, dst, protocol, len(segment)))


def build_udp(src: AddressLike, dst: AddressLike, sport: int, dport: int, payload: bytes = b"") -> bytes:
    src_b, dst_b = packed(src), packed(dst)
    segment = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)
    struct.pack_into("!H", segment, 6, _l4_checksum(src_b, dst_b, PROTO_UDP, segment))
    return build_ip(src_b, dst_b, PROTO_UDP, bytes(segment))


def build_tcp(
    src: AddressLike,
    dst: AddressLike,
    sport: int,
    dport: int,
    *,
    flags: int = TCP_SYN,
    seq: int = 0,
    ack: int = 0,
    payload: bytes = b"",
) -> bytes:
    src_b, dst_b = packed(src), packed(dst)
    segment = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload)
    struct.pack_into("!H", segment, 16, _l4_checksum(src_b, dst_b, PROTO_TCP, segment))
    return build_ip(src_b, dst_b, PROTO_TCP, bytes(segment))


def build_icmp(src: AddressLike, dst: AddressLike, icmp_type: int, code: int, rest: bytes) -> bytes:
    """An ICMP (IPv4) or ICMPv6 message; `rest` follows the 4-byte type/code/checksum."""
    src_b, dst_b = packed(src), packed(dst)
    message = bytearray(struct.pack("!BBH", icmp_type, code, 0) + rest)
    if len(src_b) == 4:
        struct.pack_into("!H", message, 2, internet_checksum(message))
        return ip.build_ipv4(src_b, dst_b, PROTO_ICMP, bytes(message))
    struct.pack_into("!H", message, 2, _l4_checksum(src_b, dst_b, PROTO_ICMPV6, message))
    return ip.build_ipv6(src_b, dst_b, PROTO_ICMPV6, bytes(message))


def build_icmp_echo(
    src: AddressLike,
    dst: AddressLike,
    ident: int,
    seq: int,
    payload: bytes = b"",
    *,
    reply: bool = False,
) -> bytes:
    if len(packed(src)) == 4:
        icmp_type = ICMPV4_ECHO_REPLY if reply else ICMPV4_ECHO_REQUEST
    else:
        icmp_type = ICMPV6_ECHO_REPLY if reply else ICMPV6_ECHO_REQUEST
    return build_icmp(src, dst, icmp_type, 0, struct.pack("!HH", ident, seq) + payload)


def verify_checksums(buf: bytes | bytearray) -> bool:
    """True when the IPv4 header and the TCP/UDP/ICMP checksums are all correct."""
    p = IpPacket(buf)
    if p.version == 4 and internet_checksum(buf[: p.header_len]) not in (0, 0xFFFF):
        return False
    if p.is_fragment:
        return True
    segment = bytes(buf[p.header_len : p.total_len])
    if p.protocol == PROTO_ICMP and p.version == 4:
        return internet_checksum(segment) in (0, 0xFFFF)
    if p.protocol in (PROTO_TCP, PROTO_UDP) or (p.protocol == PROTO_ICMPV6 and p.version == 6):
        if p.protocol == PROTO_UDP and p.version == 4 and segment[6:8] == b"\x00\x00":
            return True  # IPv4 UDP may omit its checksum
        total = internet_checksum(segment, pseudo_header_sum(p.src, p.dst, p.protocol, len(segment)))
        return total in (0, 0xFFFF)
    return True
