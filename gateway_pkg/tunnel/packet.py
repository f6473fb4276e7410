"""Minimal IPv4/IPv6 packet views, checksum helpers and builders.

This is the parsing layer under the per-packet policy and NAT, so it is written for the
hot path: one `IpPacket` per packet, fields read with `struct.unpack_from` straight from
the buffer, no copies of the payload.

Public API:
- `IpPacket(buf)`: parse an IP packet; raises `PacketError` (and nothing else) when the
  bytes are not a well-formed IPv4/IPv6 packet with a complete TCP/UDP/ICMP header.
  Attributes: `buf`, `version` (4|6), `src`/`dst` (packed bytes), `protocol` (the L4
  protocol after IPv6 extension headers), `header_len` (offset of the L4 header),
  `total_len`, `is_fragment` (a non-first fragment: no L4 header), `src_port`/`dst_port`
  (TCP/UDP, else None), `tcp_flags`, `icmp_type`/`icmp_code` (ICMP/ICMPv6, else None),
  `icmp_id` (echo request/reply identifier, else None); `src_ip`/`dst_ip` give
  `ipaddress` objects on demand; `is_icmp_error`.
- `internet_checksum(data, initial=0)`, `checksum_adjust(checksum, old, new)` (RFC 1624),
  `pseudo_header_sum(...)`.
- Builders for tests, ICMP and p2p-control: `build_ipv4`, `build_ipv6`, `build_ip`,
  `build_udp`, `build_tcp`, `build_icmp_echo`.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

from gateway_pkg.resources import IPAddress

PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17
PROTO_ICMPV6: Final = 58

TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_ACK: Final = 0x10

ICMPV4_ECHO_REPLY: Final = 0
ICMPV4_DEST_UNREACHABLE: Final = 3
ICMPV4_ECHO_REQUEST: Final = 8
ICMPV6_DEST_UNREACHABLE: Final = 1
ICMPV6_ECHO_REQUEST: Final = 128
ICMPV6_ECHO_REPLY: Final = 129

# RFC 792/1122 and RFC 4443: the messages that report an error about another packet.
# Source quench (4) and parameter problem (12) included; redirects (5) too, since they
# also quote the offending packet.
ICMPV4_ERROR_TYPES: Final = frozenset({3, 4, 5, 11, 12})
ICMPV6_ERROR_TYPES: Final = frozenset({1, 2, 3, 4})
_ECHO_TYPES: Final = frozenset({ICMPV4_ECHO_REQUEST, ICMPV4_ECHO_REPLY, ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY})

# IPv6 extension headers we walk over to reach the transport header. Others (ESP, AH,
# mobility, ...) end the walk: the packet's protocol is then that header's number.
_IPV6_EXT_HOP_BY_HOP: Final = 0
_IPV6_EXT_ROUTING: Final = 43
_IPV6_EXT_FRAGMENT: Final = 44
_IPV6_EXT_DEST_OPTS: Final = 60
_IPV6_SKIPPABLE: Final = frozenset({_IPV6_EXT_HOP_BY_HOP, _IPV6_EXT_ROUTING, _IPV6_EXT_DEST_OPTS})
# Bound the walk so a packet made only of extension headers cannot make us loop long.
_IPV6_MAX_EXT_HEADERS: Final = 8

_PLAIN_V4_PROTOCOLS: Final = frozenset({PROTO_TCP, PROTO_UDP, PROTO_ICMP})
_L4_MIN_LEN: Final = {PROTO_TCP: 20, PROTO_UDP: 8, PROTO_ICMP: 8, PROTO_ICMPV6: 8}

_unpack_ipv4 = struct.Struct("!BxHxxHBB").unpack_from  # ver/ihl, total len, frag, ttl, proto
# IPv4 without options + the first 6 bytes of L4: total len, frag, proto, src, dst, 3 words
_unpack_plain_ipv4 = struct.Struct("!2xH2xHxB2x4s4sHHH").unpack_from
_unpack_u16 = struct.Struct("!H").unpack_from
_unpack_ports = struct.Struct("!HH").unpack_from
_unpack_icmp = struct.Struct("!BBxxH").unpack_from  # type, code, identifier


class PacketError(ValueError):
    """The bytes are not a packet this layer can reason about (truncated, bad header)."""


class IpPacket:
    """A parsed view of one IP packet. The buffer is not copied."""

    __slots__ = (
        "buf",
        "dst",
        "dst_port",
        "header_len",
        "icmp_code",
        "icmp_id",
        "icmp_type",
        "is_fragment",
        "protocol",
        "src",
        "src_port",
        "tcp_flags",
        "total_len",
        "version",
    )

    buf: bytes
    version: int
    src: bytes
    dst: bytes
    protocol: int
    header_len: int
    total_len: int
    is_fragment: bool
    src_port: int | None
    dst_port: int | None
    tcp_flags: int
    icmp_type: int | None
    icmp_code: int | None
    icmp_id: int | None

    def __init__(self, buf: bytes | bytearray) -> None:
        if type(buf) is not bytes:
            # Slices of bytes are bytes: the address fields then need no second copy.
            buf = bytes(buf)
        self.buf = buf
        n = len(buf)
        if n < 20:
            raise PacketError("shorter than an IP header")
        first = buf[0]
        if first == 0x45 and n >= 28 and self._parse_plain_ipv4(buf, n):
            return
        version = first >> 4
        if version == 4:
            ver_ihl, total_len, frag, _ttl, proto = _unpack_ipv4(buf)
            ihl = (ver_ihl & 0x0F) * 4
            if ihl < 20 or total_len < ihl or total_len > n:
                raise PacketError("bad IPv4 header or total length")
            self.src = buf[12:16]
            self.dst = buf[16:20]
            offset = ihl
            # Only non-first fragments lack the transport header.
            fragmented = (frag & 0x1FFF) != 0
        elif version == 6:
            if n < 40:
                raise PacketError("shorter than an IPv6 header")
            total_len = 40 + _unpack_u16(buf, 4)[0]
            if total_len > n:
                raise PacketError("IPv6 payload length beyond the buffer")
            proto = buf[6]
            self.src = buf[8:24]
            self.dst = buf[24:40]
            offset = 40
            fragmented = False
            hops = 0
            while proto in _IPV6_SKIPPABLE or proto == _IPV6_EXT_FRAGMENT:
                hops += 1
                if hops > _IPV6_MAX_EXT_HEADERS or offset + 8 > total_len:
                    raise PacketError("IPv6 extension headers too long or truncated")
                next_proto = buf[offset]
                if proto == _IPV6_EXT_FRAGMENT:
                    if _unpack_u16(buf, offset + 2)[0] & 0xFFF8:
                        fragmented = True
                    offset += 8
                else:
                    offset += (buf[offset + 1] + 1) * 8
                proto = next_proto
            if offset > total_len:
                raise PacketError("IPv6 extension headers truncated")
        else:
            raise PacketError("not IPv4 or IPv6")

        self.version = version
        self.protocol = proto
        self.header_len = offset
        self.total_len = total_len
        self.is_fragment = fragmented
        self.src_port = None
        self.dst_port = None
        self.tcp_flags = 0
        self.icmp_type = None
        self.icmp_code = None
        self.icmp_id = None
        if fragmented:
            return
        need = _L4_MIN_LEN.get(proto)
        if need is None:
            return
        if offset + need > total_len:
            raise PacketError("transport header truncated")
        if proto in (PROTO_TCP, PROTO_UDP):
            self.src_port, self.dst_port = _unpack_ports(buf, offset)
            if proto == PROTO_TCP:
                self.tcp_flags = buf[offset + 13]
        elif (proto == PROTO_ICMP and version == 4) or (proto == PROTO_ICMPV6 and version == 6):
            icmp_type, self.icmp_code, ident = _unpack_icmp(buf, offset)
            self.icmp_type = icmp_type
            if icmp_type in _ECHO_TYPES:
                self.icmp_id = ident

    def _parse_plain_ipv4(self, buf: bytes, n: int) -> bool:
        """The common case in one unpack: IPv4 without options, not fragmented,
        TCP/UDP/ICMP. False sends the packet through the general path."""
        total_len, frag, proto, src, dst, w0, w1, w2 = _unpack_plain_ipv4(buf)
        if proto not in _PLAIN_V4_PROTOCOLS or frag & 0x1FFF or total_len > n:
            return False
        if total_len < 20 + _L4_MIN_LEN[proto]:
            return False
        self.version = 4
        self.src = src
        self.dst = dst
        self.protocol = proto
        self.header_len = 20
        self.total_len = total_len
        self.is_fragment = False
        if proto == PROTO_ICMP:
            self.src_port = self.dst_port = None
            self.tcp_flags = 0
            icmp_type = w0 >> 8
            self.icmp_type = icmp_type
            self.icmp_code = w0 & 0xFF
            self.icmp_id = w2 if icmp_type in _ECHO_TYPES else None
            return True
        self.src_port = w0
        self.dst_port = w1
        self.tcp_flags = buf[33] if proto == PROTO_TCP else 0
        self.icmp_type = self.icmp_code = self.icmp_id = None
        return True

    @property
    def src_ip(self) -> IPAddress:
        return ipaddress.ip_address(self.src)

    @property
    def dst_ip(self) -> IPAddress:
        return ipaddress.ip_address(self.dst)

    @property
    def is_icmp_error(self) -> bool:
        if self.icmp_type is None:
            return False
        if self.version == 4:
            return self.icmp_type in ICMPV4_ERROR_TYPES
        return self.icmp_type in ICMPV6_ERROR_TYPES

    @property
    def payload(self) -> memoryview:
        """The bytes after the IP header chain (the L4 header and its data)."""
        return memoryview(self.buf)[self.header_len : self.total_len]

    def __repr__(self) -> str:
        return (
            f"IpPacket(v{self.version} {self.src_ip} -> {self.dst_ip} proto={self.protocol} "
            f"sport={self.src_port} dport={self.dst_port} icmp={self.icmp_type}/{self.icmp_code})"
        )


# --- checksums --------------------------------------------------------------------------
# The ones' complement sum of 16-bit words equals the big-endian integer of the data
# modulo 0xFFFF (2**16 == 1 mod 0xFFFF), which CPython computes in C: much faster than a
# Python loop over words.


def _fold(total: int) -> int:
    """Reduce a sum to a ones' complement 16-bit value (0 is represented as 0xFFFF)."""
    s = total % 0xFFFF
    return 0xFFFF if s == 0 and total != 0 else s


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 checksum of `data`, with `initial` (e.g. a pseudo-header sum) added in."""
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    s = _fold(int.from_bytes(data, "big") + initial)
    return 0xFFFF - s if s else 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """The (unfolded) sum of the TCP/UDP/ICMPv6 pseudo-header for IPv4 or IPv6."""
    return int.from_bytes(src, "big") + int.from_bytes(dst, "big") + protocol + length


def checksum_adjust(checksum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3: the checksum after 16-bit-aligned bytes `old` became `new`."""
    s = _fold((0xFFFF - checksum) - int.from_bytes(old, "big") + int.from_bytes(new, "big"))
    return 0xFFFF - s


def checksum_adjust_u16(checksum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3 for one 16-bit field (a port or an ICMP identifier)."""
    s = _fold((0xFFFF - checksum) - old + new)
    return 0xFFFF - s


# --- builders ---------------------------------------------------------------------------

AddressLike = str | bytes | IPAddress


def packed(address: AddressLike) -> bytes:
    """Packed bytes of an address given as text, bytes or an `ipaddress` object."""
    if isinstance(address, bytes):
        return address
    if isinstance(address, str):
        return ipaddress.ip_address(address).packed
    return address.packed


def ipv4_header_checksum(header: bytes | bytearray) -> int:
    return internet_checksum(header)


def build_ipv4(
    src: AddressLike,
    dst: AddressLike,
    protocol: int,
    payload: bytes,
    *,
    ttl: int = 64,
    ident: int = 0,
) -> bytes:
    """An IPv4 packet without options; the header checksum is filled in."""
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(payload),
            ident,
            0,
            ttl,
            protocol,
            0,
            packed(src),
            packed(dst),
        )
    )
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return bytes(header) + payload


def build_ipv6(
    src: AddressLike,
    dst: AddressLike,
    next_header: int,
    payload: bytes,
    *,
    hop_limit: int = 64,
) -> bytes:
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, hop_limit, packed(src), packed(dst))
    return header + payload


def build_ip(src: AddressLike, dst: AddressLike, protocol: int, payload: bytes, *, ttl: int = 64) -> bytes:
    """IPv4 or IPv6 by the family of `src`."""
    src_b, dst_b = packed(src), packed(dst)
    if len(src_b) != len(dst_b):
        raise ValueError("source and destination families differ")
    if len(src_b) == 4:
        return build_ipv4(src_b, dst_b, protocol, payload, ttl=ttl)
    return build_ipv6(src_b, dst_b, protocol, payload, hop_limit=ttl)


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
        return build_ipv4(src_b, dst_b, PROTO_ICMP, bytes(message))
    struct.pack_into("!H", message, 2, _l4_checksum(src_b, dst_b, PROTO_ICMPV6, message))
    return build_ipv6(src_b, dst_b, PROTO_ICMPV6, bytes(message))


def build_icmp_echo(
    src: AddressLike,
    dst: AddressLike,
    ident: int,
    seq: int,
    payload: bytes = b"",
    *,
    reply: bool = False,
) -> bytes:
    v4 = len(packed(src)) == 4
    if v4:
        icmp_type = ICMPV4_ECHO_REPLY if reply else ICMPV4_ECHO_REQUEST
    else:
        icmp_type = ICMPV6_ECHO_REPLY if reply else ICMPV6_ECHO_REQUEST
    return build_icmp(src, dst, icmp_type, 0, struct.pack("!HH", ident, seq) + payload)


def verify_checksums(buf: bytes | bytearray) -> bool:
    """True when the IPv4 header and the TCP/UDP/ICMP checksums are all correct.

    For tests and diagnostics, not the hot path.
    """
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
