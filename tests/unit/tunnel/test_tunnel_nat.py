"""The DNS-resource NAT table."""

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from gateway_pkg.tunnel.checksum import internet_checksum
from gateway_pkg.tunnel.nat import (
    PROXY_NET_V4,
    PROXY_NET_V6,
    REASON_NO_SESSION,
    REASON_UNMAPPED,
    DnsResourceNat,
    is_proxy_ip,
)
from gateway_pkg.tunnel.packet import (
    TCP_ACK,
    TCP_RST,
    IpPacket,
)
from tests.packets import (
    build_icmp,
    build_icmp_echo,
    build_tcp,
    build_udp,
    verify_checksums,
)

ip = ipaddress.ip_address
CLIENT4, CLIENT6 = "100.64.0.2", "fd00:2021:1111::2"
P4 = [ip(f"100.96.0.{i}") for i in range(1, 5)]
P6 = [ip(f"fd00:2021:1111:8000::{i}") for i in range(1, 5)]
R4 = [ip("192.0.2.10"), ip("192.0.2.11")]
R6 = [ip("2001:db8::10")]


def make_nat(resolved=R4 + R6):
    nat = DnsResourceNat()
    nat.setup("res", "app.example.com", P4 + P6, resolved, now=0.0)
    return nat


def test_proxy_ranges():
    assert is_proxy_ip(ip("100.96.0.1").packed)
    assert is_proxy_ip(ip("100.127.255.255").packed)
    assert not is_proxy_ip(ip("100.64.0.1").packed)
    assert is_proxy_ip(ip("fd00:2021:1111:8000::1").packed)
    assert is_proxy_ip(ip("fd00:2021:1111:8000::1f:ffff").packed)
    assert not is_proxy_ip(ip("fd00:2021:1111:8000::20:0").packed)
    assert not is_proxy_ip(ip("fd00:2021:1111::1").packed)


@given(st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16))
def test_proxy_ranges_agree_with_ipaddress(raw):
    net = PROXY_NET_V4 if len(raw) == 4 else PROXY_NET_V6
    assert is_proxy_ip(raw) == (ip(raw) in net)


def test_round_robin_per_family_without_cross_family_fallback():
    nat = make_nat()
    assert [nat.real_ip(p.packed) for p in P4] == [r.packed for r in (R4 * 2)]
    assert all(nat.real_ip(p.packed) == R6[0].packed for p in P6)
    only_v6 = make_nat(resolved=R6)
    assert all(only_v6.real_ip(p.packed) is None for p in P4)
    assert only_v6.has_proxy(P4[0].packed)


def test_tcp_outbound_and_reply():
    nat = make_nat()
    out = nat.translate_outbound(IpPacket(build_tcp(CLIENT4, P4[0], 40000, 443)), now=1.0)
    p = IpPacket(bytes(out))
    assert p.dst_ip == R4[0] and (p.src_port, p.dst_port) == (40000, 443)
    assert verify_checksums(bytes(out))

    reply = IpPacket(build_tcp(R4[0], CLIENT4, 443, 40000, flags=TCP_ACK))
    session = nat.lookup_inbound(reply, now=2.0)
    assert session is not None and not isinstance(session, str)
    back = bytes(nat.rewrite_inbound(reply, session, now=2.0))
    q = IpPacket(back)
    assert q.src_ip == P4[0] and q.dst_port == 40000
    assert verify_checksums(back)


def test_unmapped_family():
    nat = make_nat(resolved=R6)
    assert nat.translate_outbound(IpPacket(build_udp(CLIENT4, P4[0], 1, 53)), 0) == REASON_UNMAPPED


def test_two_proxies_to_one_real_ip_get_distinct_outside_ports():
    nat = make_nat()
    # P4[0] and P4[2] both map to R4[0]; same client port to both.
    a = IpPacket(bytes(nat.translate_outbound(IpPacket(build_udp(CLIENT4, P4[0], 5000, 53)), 0)))
    b = IpPacket(bytes(nat.translate_outbound(IpPacket(build_udp(CLIENT4, P4[2], 5000, 53)), 0)))
    assert a.dst == b.dst == R4[0].packed
    assert a.src_port == 5000 and b.src_port != 5000
    for pkt, proxy in ((a, P4[0]), (b, P4[2])):
        reply = IpPacket(build_udp(R4[0], CLIENT4, 53, pkt.src_port, b"answer"))
        session = nat.lookup_inbound(reply, 1)
        back = bytes(nat.rewrite_inbound(reply, session, 1))
        q = IpPacket(back)
        assert q.src_ip == proxy and q.dst_port == 5000
        assert verify_checksums(back)


def test_udp_session_expires_after_two_minutes():
    nat = make_nat()
    nat.translate_outbound(IpPacket(build_udp(CLIENT4, P4[1], 5000, 53)), 0)
    reply = IpPacket(build_udp(R4[1], CLIENT4, 53, 5000))
    assert nat.lookup_inbound(reply, 119.0) is not None
    nat.rewrite_inbound(reply, nat.lookup_inbound(reply, 119.0), 119.0)  # refreshes
    assert nat.lookup_inbound(reply, 200.0) is not None
    assert nat.lookup_inbound(reply, 400.0) == REASON_NO_SESSION
    assert nat.session_count() == 0


def test_tcp_session_lives_two_hours_and_rst_ends_it():
    nat = make_nat()
    nat.translate_outbound(IpPacket(build_tcp(CLIENT4, P4[1], 40000, 22)), 0)
    reply = IpPacket(build_tcp(R4[1], CLIENT4, 22, 40000, flags=TCP_ACK))
    assert nat.lookup_inbound(reply, 7000.0) is not None
    nat.translate_outbound(IpPacket(build_tcp(CLIENT4, P4[1], 40000, 22, flags=TCP_RST)), 7001.0)
    assert nat.lookup_inbound(reply, 7002.0) is None
    assert nat.session_count() == 0


def test_icmpv6_echo():
    nat = make_nat()
    out = bytes(nat.translate_outbound(IpPacket(build_icmp_echo(CLIENT6, P6[0], 77, 1, b"hi")), 0))
    assert IpPacket(out).dst_ip == R6[0]
    assert verify_checksums(out)
    reply = IpPacket(build_icmp_echo(R6[0], CLIENT6, 77, 1, b"hi", reply=True))
    back = bytes(nat.rewrite_inbound(reply, nat.lookup_inbound(reply, 1), 1))
    assert IpPacket(back).src_ip == P6[0] and verify_checksums(back)


def test_icmp_echo_id_rewritten_on_collision():
    nat = make_nat()
    nat.translate_outbound(IpPacket(build_icmp_echo(CLIENT4, P4[0], 9, 1)), 0)
    out = bytes(nat.translate_outbound(IpPacket(build_icmp_echo(CLIENT4, P4[2], 9, 1)), 0))
    assert IpPacket(out).icmp_id != 9 and verify_checksums(out)


def _icmp_error_about(translated: bytes, router: str, client: str, v6: bool) -> bytes:
    quote = translated[: 48 if not v6 else 48 + 20]
    if v6:
        return build_icmp(router, client, 1, 4, bytes(4) + quote)  # port unreachable
    return build_icmp(router, client, 3, 3, bytes(4) + quote)


def test_icmp_error_is_mapped_back_v4():
    nat = make_nat()
    nat.translate_outbound(IpPacket(build_udp(CLIENT4, P4[0], 5000, 53)), 0)
    # Second flow on the same port forces a different outside port.
    translated = bytes(nat.translate_outbound(IpPacket(build_udp(CLIENT4, P4[2], 5000, 53)), 0))
    error = _icmp_error_about(translated, "198.51.100.1", CLIENT4, v6=False)
    out = nat.translate_icmp_error(IpPacket(error), 1)
    assert out is not None
    p = IpPacket(bytes(out))
    assert p.src_ip == P4[2] and p.is_icmp_error
    assert verify_checksums(bytes(out))
    inner = IpPacket(bytes(out[28:]) + b"")  # whole inner UDP header is quoted
    assert inner.dst_ip == P4[2] and inner.src_port == 5000
    assert internet_checksum(out[28:48]) in (0, 0xFFFF)  # inner IPv4 header checksum


def test_icmp_error_is_mapped_back_v6():
    nat = make_nat()
    translated = bytes(nat.translate_outbound(IpPacket(build_tcp(CLIENT6, P6[1], 40000, 443)), 0))
    error = _icmp_error_about(translated, R6[0].compressed, CLIENT6, v6=True)
    out = nat.translate_icmp_error(IpPacket(error), 1)
    assert out is not None
    assert IpPacket(bytes(out)).src_ip == P6[1]
    assert verify_checksums(bytes(out))
    assert ip(bytes(out[48 + 24 : 48 + 40])) == P6[1]


def test_icmp_error_without_session_is_left_alone():
    nat = make_nat()
    translated = build_udp(CLIENT4, R4[0], 5000, 53)
    error = _icmp_error_about(translated, "198.51.100.1", CLIENT4, v6=False)
    assert nat.translate_icmp_error(IpPacket(error), 1) is None


def test_open_sessions_keep_their_real_ip_and_new_sessions_follow_the_new_answer():
    nat = make_nat()
    nat.translate_outbound(IpPacket(build_tcp(CLIENT4, P4[0], 40000, 443)), 0)
    nat.setup("res", "app.example.com", P4 + P6, [ip("203.0.113.7")], now=10.0)
    assert nat.real_ip(P4[0].packed) == ip("203.0.113.7").packed
    out = IpPacket(bytes(nat.translate_outbound(IpPacket(build_tcp(CLIENT4, P4[0], 40000, 443)), 11)))
    assert out.dst_ip == R4[0]  # the open connection keeps flowing to the old address
    fresh = IpPacket(bytes(nat.translate_outbound(IpPacket(build_tcp(CLIENT4, P4[0], 40001, 443)), 12)))
    assert fresh.dst_ip == ip("203.0.113.7")


def test_reassignment_to_another_domain_resets_the_table():
    nat = make_nat()
    nat.translate_outbound(IpPacket(build_tcp(CLIENT4, P4[0], 40000, 443)), 0)
    nat.setup("res", "other.example.com", P4[:1], [ip("203.0.113.7")], now=1.0)
    assert nat.session_count() == 0
    assert nat.real_ip(P4[0].packed) == ip("203.0.113.7").packed
    assert not nat.has_proxy(P4[1].packed)


def test_remove_resource_drops_mappings_and_sessions():
    nat = make_nat()
    nat.translate_outbound(IpPacket(build_tcp(CLIENT4, P4[0], 40000, 443)), 0)
    nat.remove_resource("res")
    assert nat.session_count() == 0 and not nat.has_proxy(P4[0].packed)


def test_udp_without_checksum_stays_without():
    nat = make_nat()
    pkt = bytearray(build_udp(CLIENT4, P4[0], 5000, 53, b"x"))
    struct.pack_into("!H", pkt, 26, 0)
    out = nat.translate_outbound(IpPacket(bytes(pkt)), 0)
    assert out[26:28] == b"\x00\x00"
    assert verify_checksums(bytes(out))
