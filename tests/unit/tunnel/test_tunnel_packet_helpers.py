"""The header helpers are the hot paths' shortcut past `IpPacket`: they must never read a
field differently from it, on valid packets, on mutated ones and on plain noise."""

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_pkg.tunnel.packet import (
    DST_OFFSET,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    SRC_OFFSET,
    IpPacket,
    PacketError,
    destination,
    fixed_header,
    total_length,
    version,
)
from tests.packets import build_icmp, build_icmp_echo, build_ip, build_ipv4, build_ipv6, build_tcp, build_udp

CHECKS = settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
_IPV6_EXTENSIONS = {0, 43, 44, 60}


def _parse(data: bytes) -> IpPacket | None:
    try:
        return IpPacket(data)
    except PacketError:
        return None


def assert_agree(data: bytes) -> None:
    p = _parse(data)
    v = version(data)
    header = fixed_header(data)
    if p is not None:
        assert v == p.version
        assert destination(data) == p.dst
        assert total_length(data) == p.total_len
        assert header is not None and header[0] == p.version
        if p.version == 4 or data[6] not in _IPV6_EXTENSIONS:
            assert header[1:] == (p.header_len, p.protocol)
        else:
            assert header[1] == 40 and p.header_len >= 48
        start = SRC_OFFSET[p.version]
        assert data[start : start + len(p.src)] == p.src
        start = DST_OFFSET[p.version]
        assert data[start : start + len(p.dst)] == p.dst
    if v is None:
        # Nothing an IP parser could use: every helper declines and IpPacket refuses.
        assert p is None
        assert (destination(data), total_length(data), fixed_header(data)) == (None,) * 3
    else:
        dst = destination(data)
        assert dst is not None and len(dst) == (4 if v == 4 else 16)
        assert type(dst) is bytes  # usable as a dict key
    if header is None:
        assert p is None
    else:
        assert header[1] <= len(data)  # the whole IP header is there to rewrite


v4_addresses = st.ip_addresses(v=4)
v6_addresses = st.ip_addresses(v=6)
address_pairs = st.tuples(v4_addresses, v4_addresses) | st.tuples(v6_addresses, v6_addresses)
ports = st.integers(0, 65535)
payloads = st.binary(max_size=64)


@st.composite
def valid_packets(draw):
    src, dst = draw(address_pairs)
    kind = draw(st.sampled_from(["tcp", "udp", "echo", "error", "other"]))
    if kind == "tcp":
        packet = build_tcp(src, dst, draw(ports), draw(ports), flags=draw(st.integers(0, 255)), payload=draw(payloads))
    elif kind == "udp":
        packet = build_udp(src, dst, draw(ports), draw(ports), draw(payloads))
    elif kind == "echo":
        packet = build_icmp_echo(src, dst, draw(ports), draw(ports), draw(payloads), reply=draw(st.booleans()))
    elif kind == "error":
        quoted = build_udp(dst, src, draw(ports), draw(ports), draw(payloads))
        packet = build_icmp(src, dst, 3 if src.version == 4 else 1, draw(st.integers(0, 15)), bytes(4) + quoted)
    else:
        packet = build_ip(src, dst, draw(st.sampled_from([2, 47, 50, 132])), draw(payloads))
    # WireGuard pads to 16 bytes; the header's own length still tells where the packet ends.
    return packet, packet + bytes(draw(st.integers(0, 15)))


@st.composite
def noise(draw):
    """Bytes that start like an IP header but may be anything after the version nibble."""
    first = draw(st.sampled_from([0x40, 0x60])) | draw(st.integers(0, 15))
    return bytes([first]) + draw(st.binary(max_size=80))


@CHECKS
@given(valid_packets())
def test_helpers_agree_with_ip_packet_on_valid_packets(case):
    packet, padded = case
    assert _parse(packet) is not None
    assert_agree(packet)
    assert_agree(padded)
    assert total_length(padded) == len(packet)


@CHECKS
@given(st.binary(max_size=80) | noise())
def test_helpers_agree_with_ip_packet_on_arbitrary_bytes(data):
    assert_agree(data)


@CHECKS
@given(valid_packets(), st.lists(st.tuples(st.integers(0, 79), st.integers(0, 255)), max_size=4), st.integers(0, 90))
def test_helpers_agree_with_ip_packet_on_mutated_packets(case, flips, cut):
    data = bytearray(case[1])
    for at, value in flips:
        if at < len(data):
            data[at] = value
    assert_agree(bytes(data[:cut]))
    assert_agree(bytes(data))


def test_ipv4_options_and_ipv6_extension_headers():
    with_options = bytearray(build_ipv4("10.0.0.1", "10.0.0.2", PROTO_UDP, bytes(4) + struct.pack("!HHHH", 1, 2, 8, 0)))
    with_options[0] = 0x46  # the first 4 payload bytes become options
    assert fixed_header(bytes(with_options)) == (4, 24, PROTO_UDP)
    assert_agree(bytes(with_options))
    udp = build_udp("2001:db8::1", "2001:db8::2", 1000, 2000, b"x")[40:]
    hop_by_hop = bytes([PROTO_UDP, 0]) + bytes(6)
    packet = build_ipv6("2001:db8::1", "2001:db8::2", 0, hop_by_hop + udp)
    assert fixed_header(packet) == (6, 40, 0)  # quotes are not walked
    assert IpPacket(packet).protocol == PROTO_UDP
    assert_agree(packet)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x45",
        bytes(19),
        b"\x45" + bytes(18),  # one byte short of an IPv4 header
        b"\x60" + bytes(38),  # one byte short of an IPv6 header
        b"\x65" + bytes(30),  # long enough for IPv4, says IPv6
        b"\x55" + bytes(60),  # version 5
        b"\x00" + bytes(60),
    ],
)
def test_too_short_or_not_ip(data):
    assert version(data) is None
    assert (destination(data), total_length(data), fixed_header(data)) == (None,) * 3
    with pytest.raises(PacketError):
        IpPacket(data)


@pytest.mark.parametrize(
    ("ihl", "total", "expected"),
    [(5, 20, 20), (5, 19, None), (4, 40, None), (0, 40, None), (15, 60, 60), (15, 59, None), (6, 1000, 1000)],
)
def test_total_length_refuses_contradicting_ipv4_lengths(ihl, total, expected):
    header = bytearray(build_ipv4("10.0.0.1", "10.0.0.2", PROTO_TCP, bytes(40)))
    header[0] = 0x40 | ihl
    header[2:4] = total.to_bytes(2, "big")
    assert total_length(bytes(header)) == expected


def test_addresses_are_the_header_fields():
    cases = [("192.0.2.1", "198.51.100.2", 4, 20, PROTO_ICMP), ("2001:db8::1", "fd00::2", 6, 40, PROTO_ICMPV6)]
    for src, dst, v, header_len, proto in cases:
        packet = build_icmp_echo(src, dst, 1, 1)
        assert destination(packet) == ipaddress.ip_address(dst).packed
        assert fixed_header(packet) == (v, header_len, proto)
