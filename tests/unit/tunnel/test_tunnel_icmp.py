"""ICMP prohibited / unreachable replies."""

import pytest

from gateway_pkg.tunnel import icmp
from gateway_pkg.tunnel.packet import PROTO_ICMP, PROTO_ICMPV6, IpPacket
from tests.packets import (
    build_icmp,
    build_tcp,
    build_udp,
    verify_checksums,
)

CLIENT4, RES4 = "100.64.0.2", "10.0.0.5"
CLIENT6, RES6 = "fd00:2021:1111::2", "2001:db8::5"


def test_ipv4_prohibited_reply():
    original = build_tcp(CLIENT4, RES4, 40000, 22)
    reply = icmp.prohibited(original)
    assert reply is not None
    p = IpPacket(reply)
    assert p.version == 4 and p.protocol == PROTO_ICMP
    assert p.src == IpPacket(original).dst and p.dst == IpPacket(original).src
    assert (p.icmp_type, p.icmp_code) == (3, 13)
    assert bytes(p.payload)[8:] == original  # the whole (short) original is quoted
    assert verify_checksums(reply)


def test_ipv6_prohibited_reply():
    original = build_udp(CLIENT6, RES6, 5000, 53, b"q")
    reply = icmp.prohibited(original)
    assert reply is not None
    p = IpPacket(reply)
    assert p.version == 6 and p.protocol == PROTO_ICMPV6
    assert (p.icmp_type, p.icmp_code) == (1, 1)
    assert str(p.src_ip) == RES6 and str(p.dst_ip) == CLIENT6
    assert verify_checksums(reply)


def test_unreachable_codes():
    r4 = IpPacket(icmp.unreachable(build_tcp(CLIENT4, RES4, 1, 2)))
    r6 = IpPacket(icmp.unreachable(build_tcp(CLIENT6, RES6, 1, 2)))
    assert (r4.icmp_type, r4.icmp_code) == (3, 1)
    assert (r6.icmp_type, r6.icmp_code) == (1, 3)


@pytest.mark.parametrize(("src", "dst", "limit"), [(CLIENT4, RES4, 576), (CLIENT6, RES6, 1280)])
def test_quote_is_bounded(src, dst, limit):
    original = build_udp(src, dst, 1, 2, bytes(1400))
    reply = icmp.prohibited(original)
    assert len(reply) == limit
    quoted = bytes(IpPacket(reply).payload)[8:]
    assert original.startswith(quoted)
    assert verify_checksums(reply)


def test_no_error_about_an_error():
    error = build_icmp(CLIENT4, RES4, 3, 3, bytes(4) + build_udp(RES4, CLIENT4, 1, 2)[:28])
    assert icmp.prohibited(error) is None


def test_no_error_to_multicast_or_unspecified_source():
    assert icmp.prohibited(build_udp("224.0.0.1", RES4, 1, 2)) is None
    assert icmp.prohibited(build_udp("::", RES6, 1, 2)) is None


def test_garbage_gives_none():
    assert icmp.prohibited(b"\x45garbage") is None
