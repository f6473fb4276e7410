"""The in-band p2p control protocol."""

import ipaddress
import json

import pytest

from gateway_pkg.tunnel import p2p_control as p2p
from gateway_pkg.tunnel.packet import IpPacket
from tests.packets import build_udp

PROXY_IPS = [ipaddress.ip_address(f"100.96.0.{i}") for i in range(1, 5)] + [
    ipaddress.ip_address(f"fd00:2021:1111:8000::{i}") for i in range(1, 5)
]


def test_assigned_ips_roundtrip():
    packet = p2p.encode_assigned_ips("r-1", "app.example.com", PROXY_IPS)
    assert p2p.is_p2p_control(packet)
    event = p2p.decode(packet)
    assert event == p2p.AssignedIps("r-1", "app.example.com", tuple(PROXY_IPS))


def test_wire_layout():
    packet = p2p.encode_domain_status("r-1", "app.example.com", active=True)
    p = IpPacket(packet)  # a valid IPv6 packet
    assert p.version == 6 and p.protocol == 0xFF
    assert p.src == bytes(16) and p.dst == bytes(16)
    assert packet[40:48] == bytes([1, 0, 0, 0, 0, 0, 0, 0])
    assert json.loads(packet[48:]) == {
        "resource": "r-1",
        "domain": "app.example.com",
        "status": "Active",
    }


def test_domain_status_inactive_and_unknown_status():
    assert p2p.decode(p2p.encode_domain_status("r", "d", active=False)).active is False
    body = json.dumps({"resource": "r", "domain": "d", "status": "what_is_this"}).encode()
    packet = p2p.encode(p2p.DOMAIN_STATUS, body)
    assert p2p.decode(packet) == p2p.DomainStatus("r", "d", False)


def test_goodbye():
    packet = p2p.encode_goodbye()
    assert p2p.is_p2p_control(packet)
    assert p2p.decode(packet) == p2p.Goodbye()
    assert len(packet) == 48


def test_unknown_event_type_is_reported_not_raised():
    assert p2p.decode(p2p.encode(9, b"{}")) == p2p.UnknownEvent(9)


def test_ordinary_packets_are_not_control():
    assert not p2p.is_p2p_control(build_udp("fd00:2021:1111::2", "2001:db8::1", 1, 2))
    # An IPv4 packet that looks like control from byte 6 on: the version decides.
    v4 = bytearray(build_udp("100.64.0.2", "10.0.0.1", 1, 2, bytes(40)))
    v4[6], v4[8:40] = 0xFF, bytes(32)
    assert not p2p.is_p2p_control(bytes(v4))
    assert not p2p.is_p2p_control(b"")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"resource": "r", "domain": "d"}',
        b'{"resource": "r", "domain": "d", "proxy_ips": ["nope"]}',
        b'{"resource": 1, "domain": "d", "proxy_ips": []}',
        b"\xff\xfe",
    ],
)
def test_bad_assigned_ips(body):
    with pytest.raises(p2p.P2pControlError):
        p2p.decode(p2p.encode(p2p.ASSIGNED_IPS, body))


def test_length_beyond_buffer():
    packet = bytearray(p2p.encode_goodbye())
    packet[4:6] = (500).to_bytes(2, "big")
    with pytest.raises(p2p.P2pControlError):
        p2p.decode(bytes(packet))
