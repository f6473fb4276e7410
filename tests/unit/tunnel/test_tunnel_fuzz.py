"""Arbitrary and mutated bytes into every decoder: only the documented outcomes."""

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_pkg.resources import CidrResource, DnsResource, InternetResource
from gateway_pkg.tunnel import icmp
from gateway_pkg.tunnel import p2p_control as p2p
from gateway_pkg.tunnel.packet import IpPacket, PacketError
from gateway_pkg.tunnel.policy import Action, ClientPolicy, TunAddresses, Verdict
from tests.packets import (
    build_icmp,
    build_icmp_echo,
    build_tcp,
    build_udp,
)

ip = ipaddress.ip_address
C4, C6 = "100.64.0.2", "fd00:2021:1111::2"
P4 = [ip("100.96.0.1"), ip("100.96.0.2")]
P6 = [ip("fd00:2021:1111:8000::1")]

FUZZ = settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)


def make_policy() -> ClientPolicy:
    policy = ClientPolicy(C4, C6, TunAddresses("100.64.0.1", "fd00:2021:1111::1"))
    policy.add_resource(CidrResource("c", ipaddress.ip_network("10.0.0.0/8"), "c"), None)
    policy.add_resource(InternetResource("i"), 1e12)
    policy.add_resource(DnsResource("d", "**.corp.example", "d"), None)
    policy.setup_nat("d", "a.corp.example", P4 + P6, [ip("192.0.2.1"), ip("2001:db8::1")], 0)
    return policy


SEEDS = [
    build_tcp(C4, "10.0.0.1", 1, 80, payload=b"x" * 10),
    build_udp(C6, "2001:db8::9", 1, 53, b"abc"),
    build_tcp(C4, str(P4[0]), 40000, 443),
    build_icmp_echo(C6, str(P6[0]), 5, 1, b"ping"),
    build_udp("192.0.2.1", C4, 53, 5000, b"answer"),
    build_icmp("198.51.100.1", C4, 3, 3, bytes(4) + build_udp(C4, "192.0.2.1", 5000, 53)[:28]),
    build_icmp("2001:db8::ff", C6, 1, 4, bytes(4) + build_tcp(C6, "2001:db8::1", 9, 9)),
    p2p.encode_assigned_ips("d", "a.corp.example", P4),
]


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.integers(0, 2))
        if op == 0 and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == 1:
            data = data[: draw(st.integers(0, len(data)))]
        else:
            data += draw(st.binary(max_size=20))
    return bytes(data)


packets = st.binary(max_size=200) | mutated()


@FUZZ
@given(packets)
def test_ip_packet_raises_only_packet_error(data):
    try:
        p = IpPacket(data)
    except PacketError:
        return
    repr(p)
    assert p.header_len <= p.total_len <= len(data)


@FUZZ
@given(packets)
def test_icmp_replies_never_raise(data):
    for build in (icmp.prohibited, icmp.unreachable):
        reply = build(data)
        if reply is not None:
            IpPacket(reply)


@FUZZ
@given(packets)
def test_p2p_decode_raises_only_its_error(data):
    if not p2p.is_p2p_control(data):
        return
    try:
        p2p.decode(data)
    except p2p.P2pControlError:
        pass


@FUZZ
@given(st.binary(max_size=300))
def test_p2p_decode_any_payload(body):
    packet = p2p.encode(p2p.ASSIGNED_IPS, body)
    try:
        p2p.decode(packet)
    except p2p.P2pControlError:
        pass


@FUZZ
@given(st.lists(packets, min_size=1, max_size=5), st.floats(0, 1e6))
def test_policy_returns_a_verdict_for_anything(batch, now):
    policy = make_policy()
    for data in batch:
        for check in (policy.check_outbound, policy.check_inbound):
            verdict = check(data, now)
            assert isinstance(verdict, Verdict)
            if verdict.action is Action.FORWARD and verdict.packet is not None:
                IpPacket(bytes(verdict.packet))
            if verdict.action is Action.REPLY:
                assert verdict.reply is not None and verdict.reason
            if verdict.action is Action.DROP:
                assert verdict.reason


_FIELDS = [
    "version",
    "src",
    "dst",
    "protocol",
    "header_len",
    "total_len",
    "is_fragment",
    "src_port",
    "dst_port",
    "tcp_flags",
    "icmp_type",
    "icmp_code",
    "icmp_id",
]
_NOP_OPTIONS = b"\x01\x01\x01\x01"


def _fields(data):
    try:
        p = IpPacket(data)
    except PacketError:
        return None
    return {f: getattr(p, f) for f in _FIELDS}


@FUZZ
@given(packets)
def test_ipv4_options_change_only_the_header_length(data):
    """The same IPv4 packet with and without options parses alike; IpPacket reads the
    option-less form in a single unpack and the other through its general path, so this
    also proves the two paths agree."""
    if len(data) < 20:
        return
    plain = bytearray(data)
    plain[0] = 0x45
    total = int.from_bytes(plain[2:4], "big")
    if total > 0xFFFF - 4:
        return
    with_options = bytearray(plain[:20]) + _NOP_OPTIONS + plain[20:]
    with_options[0] = 0x46
    with_options[2:4] = (total + 4).to_bytes(2, "big")
    expected = _fields(bytes(plain))
    if expected is not None:
        expected["header_len"] += 4
        expected["total_len"] += 4
    assert _fields(bytes(with_options)) == expected
