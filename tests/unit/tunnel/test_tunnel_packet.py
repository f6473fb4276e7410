"""IP packet views and builders (the checksums: test_checksum.py)."""

import ipaddress
import struct

import pytest

from gateway_pkg.tunnel.packet import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_RST,
    TCP_SYN,
    IpPacket,
    PacketError,
)
from tests.packets import (
    build_icmp,
    build_icmp_echo,
    build_ipv6,
    build_tcp,
    build_udp,
    verify_checksums,
)

V4A, V4B = "100.64.0.2", "10.0.0.5"
V6A, V6B = "fd00:2021:1111::2", "2001:db8::5"


def test_ipv4_tcp_fields():
    p = IpPacket(build_tcp(V4A, V4B, 40000, 443, flags=TCP_SYN | TCP_RST))
    assert p.version == 4
    assert p.src_ip == ipaddress.ip_address(V4A)
    assert p.dst_ip == ipaddress.ip_address(V4B)
    assert p.protocol == PROTO_TCP
    assert (p.src_port, p.dst_port) == (40000, 443)
    assert p.tcp_flags & TCP_RST
    assert p.icmp_type is None and p.icmp_id is None
    assert not p.is_fragment


def test_ipv6_udp_fields():
    p = IpPacket(build_udp(V6A, V6B, 5353, 53, b"query"))
    assert p.version == 6 and p.protocol == PROTO_UDP
    assert (p.src_port, p.dst_port) == (5353, 53)
    assert bytes(p.payload)[8:] == b"query"


@pytest.mark.parametrize(("src", "dst", "proto"), [(V4A, V4B, PROTO_ICMP), (V6A, V6B, PROTO_ICMPV6)])
def test_icmp_echo_fields(src, dst, proto):
    p = IpPacket(build_icmp_echo(src, dst, ident=0x1234, seq=7, payload=b"ping"))
    assert p.protocol == proto
    assert p.icmp_id == 0x1234
    assert p.icmp_code == 0
    assert not p.is_icmp_error


def test_icmp_error_has_no_identifier():
    p = IpPacket(build_icmp(V4A, V4B, 3, 13, bytes(4) + build_udp(V4B, V4A, 1, 2)[:28]))
    assert p.is_icmp_error and p.icmp_id is None


def test_ipv6_extension_headers_are_skipped():
    udp = build_udp(V6A, V6B, 1000, 2000, b"x")
    segment = udp[40:]
    # hop-by-hop (8 bytes) -> destination options (16 bytes) -> UDP
    hop = bytes([60, 0]) + bytes(6)
    dest = bytes([PROTO_UDP, 1]) + bytes(14)
    p = IpPacket(build_ipv6(V6A, V6B, 0, hop + dest + segment))
    assert p.protocol == PROTO_UDP
    assert p.header_len == 40 + 8 + 16
    assert (p.src_port, p.dst_port) == (1000, 2000)


def test_ipv6_later_fragment_has_no_ports():
    frag = bytes([PROTO_TCP, 0]) + struct.pack("!HI", 185 << 3, 1)
    p = IpPacket(build_ipv6(V6A, V6B, 44, frag + b"rest-of-data"))
    assert p.is_fragment and p.protocol == PROTO_TCP and p.dst_port is None


def test_ipv4_later_fragment_has_no_ports():
    pkt = bytearray(build_udp(V4A, V4B, 1, 2, b"abc"))
    struct.pack_into("!H", pkt, 6, 100)  # fragment offset 100
    p = IpPacket(bytes(pkt))
    assert p.is_fragment and p.dst_port is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x45" + bytes(10),
        b"\x00" * 40,  # version 0
        build_tcp(V4A, V4B, 1, 2)[:30],  # TCP header cut
        build_udp(V6A, V6B, 1, 2)[:44],  # UDP header cut
    ],
)
def test_malformed_raise_packet_error(data):
    with pytest.raises(PacketError):
        IpPacket(data)


def test_ipv4_trailing_bytes_beyond_total_length_are_ignored():
    pkt = build_udp(V4A, V4B, 1, 2, b"abc")
    p = IpPacket(pkt + b"padding")
    assert p.total_len == len(pkt)


@pytest.mark.parametrize(
    "builder",
    [
        lambda: build_tcp(V4A, V4B, 1, 2, payload=b"abc"),
        lambda: build_tcp(V6A, V6B, 1, 2, payload=b"abcd"),
        lambda: build_udp(V4A, V4B, 1, 2, b"odd"),
        lambda: build_udp(V6A, V6B, 1, 2, b""),
        lambda: build_icmp_echo(V4A, V4B, 1, 2, b"x"),
        lambda: build_icmp_echo(V6A, V6B, 1, 2, b"xy"),
    ],
)
def test_builders_produce_valid_checksums(builder):
    assert verify_checksums(builder())


def test_verify_checksums_detects_corruption():
    pkt = bytearray(build_tcp(V4A, V4B, 1, 2, payload=b"abc"))
    pkt[-1] ^= 0xFF
    assert not verify_checksums(bytes(pkt))
