"""Per-client resource policy."""

import ipaddress
import logging
import struct

import pytest

from gateway_pkg.resources import CidrResource, DnsResource, Filter, InternetResource
from gateway_pkg.tunnel.packet import TCP_ACK, IpPacket
from gateway_pkg.tunnel.policy import Action, ClientPolicy, TunAddresses
from tests.packets import (
    build_icmp,
    build_icmp_echo,
    build_ipv6,
    build_tcp,
    build_udp,
    verify_checksums,
)

ip = ipaddress.ip_address
net = ipaddress.ip_network
C4, C6 = "100.64.0.2", "fd00:2021:1111::2"
G4, G6 = "100.64.0.1", "fd00:2021:1111::1"
TCP80 = (Filter("tcp", 80, 80),)
ICMP = (Filter("icmp"),)
P4 = [ip(f"100.96.0.{i}") for i in range(1, 5)]
P6 = [ip(f"fd00:2021:1111:8000::{i}") for i in range(1, 5)]


@pytest.fixture
def policy():
    return ClientPolicy(C4, C6, TunAddresses(G4, G6))


def cidr(rid, address, filters=()):
    return CidrResource(rid, net(address), rid, filters)


def test_spoofed_source_dropped(policy):
    policy.add_resource(cidr("r", "10.0.0.0/8"), None)
    v = policy.check_outbound(build_tcp("100.64.0.9", "10.0.0.1", 1, 80), 0)
    assert (v.action, v.reason) == (Action.DROP, "spoofed_source")
    v = policy.check_outbound(build_tcp("fd00:2021:1111::9", "2001:db8::1", 1, 80), 0)
    assert v.reason == "spoofed_source"


def test_gateway_tun_ips_always_reachable(policy):
    assert policy.check_outbound(build_udp(C4, G4, 1, 53535), 0).action is Action.FORWARD
    assert policy.check_outbound(build_udp(C6, G6, 1, 53535), 0).action is Action.FORWARD
    assert policy.check_inbound(build_udp(G4, C4, 53535, 1), 0).action is Action.FORWARD


def test_unauthorized_destination_gets_prohibited(policy):
    original = build_tcp(C4, "10.0.0.1", 40000, 80)
    v = policy.check_outbound(original, 0)
    assert (v.action, v.reason) == (Action.REPLY, "not_authorized")
    reply = IpPacket(v.reply)
    assert (reply.icmp_type, reply.icmp_code) == (3, 13)
    assert str(reply.src_ip) == "10.0.0.1" and str(reply.dst_ip) == C4
    assert verify_checksums(v.reply)


def test_filters(policy):
    policy.add_resource(cidr("r", "10.0.0.0/16", TCP80 + ICMP), None)
    assert policy.check_outbound(build_tcp(C4, "10.0.3.4", 1, 80), 0).action is Action.FORWARD
    v = policy.check_outbound(build_tcp(C4, "10.0.3.4", 1, 81), 0)
    assert (v.action, v.reason) == (Action.REPLY, "filtered")
    assert policy.check_outbound(build_udp(C4, "10.0.3.4", 1, 80), 0).reason == "filtered"
    ping = build_icmp_echo(C4, "10.0.3.4", 1, 1)
    assert policy.check_outbound(ping, 0).action is Action.FORWARD


def test_port_range_and_ipv6(policy):
    policy.add_resource(cidr("r", "2001:db8::/32", (Filter("udp", 1000, 2000),)), None)
    assert policy.check_outbound(build_udp(C6, "2001:db8::5", 1, 1500), 0).action is Action.FORWARD
    v = policy.check_outbound(build_udp(C6, "2001:db8::5", 1, 2001), 0)
    assert v.reason == "filtered" and (IpPacket(v.reply).icmp_type, IpPacket(v.reply).icmp_code) == (1, 1)


def test_empty_filter_list_allows_all(policy):
    policy.add_resource(cidr("r", "10.0.0.1/32"), None)
    assert policy.check_outbound(build_udp(C4, "10.0.0.1", 1, 9), 0).action is Action.FORWARD
    assert policy.check_outbound(build_udp(C4, "10.0.0.2", 1, 9), 0).reason == "not_authorized"


def test_overlapping_resources_union_like_longest_prefix(policy):
    policy.add_resource(cidr("wide", "10.0.0.0/16", TCP80), None)
    policy.add_resource(cidr("narrow", "10.0.1.0/24", (Filter("udp", 53, 53),)), None)
    assert policy.check_outbound(build_tcp(C4, "10.0.1.1", 1, 80), 0).action is Action.FORWARD
    assert policy.check_outbound(build_udp(C4, "10.0.1.1", 1, 53), 0).action is Action.FORWARD
    assert policy.check_outbound(build_udp(C4, "10.0.2.1", 1, 53), 0).reason == "filtered"


def test_internet_resource_allows_everything_but_proxy_ips(policy):
    policy.add_resource(InternetResource("inet"), None)
    assert policy.check_outbound(build_tcp(C4, "8.8.8.8", 1, 443), 0).action is Action.FORWARD
    assert policy.check_outbound(build_tcp(C6, "2001:4860::8888", 1, 443), 0).action is Action.FORWARD
    v = policy.check_outbound(build_tcp(C4, str(P4[0]), 1, 443), 0)
    assert v.reason == "not_authorized"


def test_expiry_enforced_per_packet_and_removed_by_expire(policy):
    policy.add_resource(cidr("r", "10.0.0.0/8"), expires_at=100.0)
    pkt = build_tcp(C4, "10.0.0.1", 1, 80)
    assert policy.check_outbound(pkt, 99.0).action is Action.FORWARD
    v = policy.check_outbound(pkt, 100.0)
    assert (v.action, v.reason) == (Action.REPLY, "expired")
    assert policy.expire(99.0) == []
    assert policy.expire(100.0) == ["r"]
    assert policy.is_empty()
    assert policy.check_outbound(pkt, 100.0).reason == "not_authorized"


def test_set_expiry_extends(policy):
    policy.add_resource(cidr("r", "10.0.0.0/8"), expires_at=100.0)
    pkt = build_tcp(C4, "10.0.0.1", 1, 80)
    assert policy.check_outbound(pkt, 50.0).action is Action.FORWARD  # cached
    assert policy.set_expiry("r", 200.0)
    assert policy.check_outbound(pkt, 150.0).action is Action.FORWARD
    assert not policy.set_expiry("unknown", 1.0)


def test_remove_resource_takes_effect_at_once(policy):
    policy.add_resource(cidr("r", "10.0.0.0/8"), None)
    pkt = build_tcp(C4, "10.0.0.1", 1, 80)
    assert policy.check_outbound(pkt, 0).action is Action.FORWARD
    assert policy.remove_resource("r")
    assert policy.check_outbound(pkt, 0).reason == "not_authorized"
    assert not policy.remove_resource("r")


def test_update_filters(policy, caplog):
    policy.add_resource(cidr("r", "10.0.0.0/8"), None)
    pkt = build_tcp(C4, "10.0.0.1", 1, 22)
    assert policy.check_outbound(pkt, 0).action is Action.FORWARD
    assert policy.update_filters(cidr("r", "10.0.0.0/8", TCP80))
    assert policy.check_outbound(pkt, 0).reason == "filtered"
    with caplog.at_level(logging.ERROR):
        assert not policy.update_filters(InternetResource("r"))
    assert "changed the type" in caplog.text
    assert policy.check_outbound(pkt, 0).reason == "filtered"
    assert not policy.update_filters(cidr("unknown", "10.0.0.0/8"))


def test_malformed_dropped(policy):
    assert policy.check_outbound(b"\x45\x00", 0).reason == "malformed"
    assert policy.check_inbound(b"", 0).reason == "malformed"


def test_later_fragment_needs_allow_all(policy):
    policy.add_resource(cidr("r", "10.0.0.0/8", TCP80), None)
    pkt = bytearray(build_tcp(C4, "10.0.0.1", 1, 80))
    struct.pack_into("!H", pkt, 6, 10)
    assert policy.check_outbound(bytes(pkt), 0).reason == "filtered"


# --- inbound -----------------------------------------------------------------------------


def test_inbound_rules(policy):
    policy.add_resource(cidr("r", "10.0.0.0/16", TCP80), None)
    ok = build_tcp("10.0.0.1", C4, 80, 40000, flags=TCP_ACK)
    assert policy.check_inbound(ok, 0).action is Action.FORWARD
    assert policy.check_inbound(build_tcp("10.0.0.1", C4, 22, 40000), 0).reason == "filtered"
    assert policy.check_inbound(build_tcp("10.1.0.1", C4, 80, 1), 0).reason == "not_authorized"
    v = policy.check_inbound(build_tcp("10.0.0.1", "100.64.0.3", 80, 1), 0)
    assert (v.action, v.reason) == (Action.DROP, "not_for_client")


def test_inbound_icmp_errors_always_allowed(policy):
    quoted = build_udp(C4, "198.51.100.7", 1, 2)[:28]
    error = build_icmp("198.51.100.1", C4, 11, 0, bytes(4) + quoted)
    assert policy.check_inbound(error, 0).action is Action.FORWARD


# --- DNS resources -----------------------------------------------------------------------


def dns(filters=()):
    return DnsResource("d", "*.corp.example", "corp", filters)


def test_setup_nat_requires_authorization_and_matching_domain(policy):
    assert not policy.setup_nat("d", "app.corp.example", P4, [ip("192.0.2.1")], 0)
    policy.add_resource(dns(), None)
    assert not policy.setup_nat("d", "app.other.example", P4, [ip("192.0.2.1")], 0)
    assert policy.setup_nat("d", "App.Corp.Example", P4 + P6, [ip("192.0.2.1")], 0)
    policy.add_resource(cidr("c", "10.0.0.0/8"), None)
    assert not policy.setup_nat("c", "app.corp.example", P4, [], 0)


def test_dns_resource_traffic_is_translated_both_ways(policy):
    policy.add_resource(dns(TCP80), None)
    policy.setup_nat("d", "app.corp.example", P4 + P6, [ip("192.0.2.1"), ip("2001:db8::1")], 0)
    v = policy.check_outbound(build_tcp(C4, str(P4[0]), 40000, 80), 1)
    assert v.action is Action.FORWARD and v.packet is not None
    assert str(IpPacket(bytes(v.packet)).dst_ip) == "192.0.2.1"
    assert verify_checksums(bytes(v.packet))

    r = policy.check_inbound(build_tcp("192.0.2.1", C4, 80, 40000, flags=TCP_ACK), 2)
    assert r.action is Action.FORWARD and IpPacket(bytes(r.packet)).src_ip == P4[0]

    assert policy.check_outbound(build_tcp(C4, str(P4[0]), 40000, 22), 1).reason == "filtered"
    # A proxy IP the client never assigned is not authorized.
    assert policy.check_outbound(build_tcp(C4, "100.96.9.9", 1, 80), 1).reason == "not_authorized"


def test_unresolved_family_answers_host_unreachable(policy):
    policy.add_resource(dns(), None)
    policy.setup_nat("d", "app.corp.example", P4 + P6, [ip("192.0.2.1")], 0)
    v = policy.check_outbound(build_tcp(C6, str(P6[0]), 1, 80), 0)
    assert (v.action, v.reason) == (Action.REPLY, "nat_unmapped")
    assert (IpPacket(v.reply).icmp_type, IpPacket(v.reply).icmp_code) == (1, 3)
    v = policy.check_outbound(build_tcp(C4, str(P4[0]), 1, 80), 0)
    assert v.action is Action.FORWARD


def test_expired_nat_session_answer_dropped(policy):
    policy.add_resource(dns(), None)
    policy.setup_nat("d", "app.corp.example", P4, [ip("192.0.2.1")], 0)
    policy.check_outbound(build_udp(C4, str(P4[0]), 5000, 53), 0)
    answer = build_udp("192.0.2.1", C4, 53, 5000)
    assert policy.check_inbound(answer, 60).action is Action.FORWARD
    v = policy.check_inbound(answer, 60 + 121)
    assert (v.action, v.reason) == (Action.DROP, "nat_no_session")


def test_removing_dns_resource_stops_nat(policy):
    policy.add_resource(dns(), None)
    policy.setup_nat("d", "app.corp.example", P4, [ip("192.0.2.1")], 0)
    policy.check_outbound(build_udp(C4, str(P4[0]), 5000, 53), 0)
    policy.remove_resource("d")
    assert policy.check_outbound(build_udp(C4, str(P4[0]), 5000, 53), 0).reason == "not_authorized"
    assert policy.check_inbound(build_udp("192.0.2.1", C4, 53, 5000), 1).reason == "not_authorized"
    assert policy.nat.session_count() == 0


def test_icmp_error_about_nat_flow_mapped_back(policy):
    policy.add_resource(dns(), None)
    policy.setup_nat("d", "app.corp.example", P6, [ip("2001:db8::1")], 0)
    v = policy.check_outbound(build_udp(C6, str(P6[0]), 5000, 53), 0)
    error = build_icmp("2001:db8::ffff", C6, 1, 4, bytes(4) + bytes(v.packet))
    r = policy.check_inbound(error, 1)
    assert r.action is Action.FORWARD and IpPacket(bytes(r.packet)).src_ip == P6[0]
    assert verify_checksums(bytes(r.packet))


def test_readding_dns_resource_keeps_its_proxy_ips(policy):
    policy.add_resource(dns(), None)
    policy.setup_nat("d", "app.corp.example", P4, [ip("192.0.2.1")], 0)
    policy.add_resource(dns(TCP80), 500.0)
    assert policy.check_outbound(build_tcp(C4, str(P4[0]), 1, 80), 0).action is Action.FORWARD


def test_extension_header_ipv6_packet_checked_by_transport(policy):
    policy.add_resource(cidr("r", "2001:db8::/32", TCP80), None)
    tcp = build_tcp(C6, "2001:db8::1", 1, 22)[40:]
    pkt = build_ipv6(C6, "2001:db8::1", 0, bytes([6, 0]) + bytes(6) + tcp)
    assert policy.check_outbound(pkt, 0).reason == "filtered"
