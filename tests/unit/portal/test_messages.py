import base64
import ipaddress

import pytest

from gateway_pkg.portal import messages as m
from gateway_pkg.resources import CidrResource, DnsResource, Filter, InternetResource

KEY = base64.b64encode(b"k" * 32).decode()
PSK = base64.b64encode(b"p" * 32).decode()
CIDR = {"type": "cidr", "id": "r1", "address": "10.0.0.0/16", "name": "net",
        "filters": [{"protocol": "tcp", "port_range_start": 80, "port_range_end": 80}, {"protocol": "icmp"}]}
CLIENT = {"id": "c1", "public_key": KEY, "preshared_key": PSK, "ipv4": "100.64.0.2", "ipv6": "fd00:2021:1111::2"}


def test_init():
    msg = m.parse_ingress("init", {
        "interface": {"ipv4": "100.64.0.1", "ipv6": "fd00:2021:1111::1", "upstream_dns": []},
        "config": {"ipv4_masquerade_enabled": True, "ipv6_masquerade_enabled": True},
        "account_slug": "acme",
        "relays": [{"type": "turn", "id": "x", "addr": "[::1]:3478", "username": "1:s", "password": "p",
                    "expires_at": 1}],
        "authorizations": [{"client_id": "c1", "resource_id": "r1", "expires_at": None}],
    })
    assert isinstance(msg, m.Init)
    assert msg.interface.ipv4 == ipaddress.IPv4Address("100.64.0.1")
    assert msg.relays[0].addr == "[::1]:3478"
    assert msg.authorizations == (m.Authorization("c1", "r1", None),)


def test_init_defaults_and_requires_config():
    msg = m.parse_ingress("init", {"interface": {"ipv4": "100.64.0.1", "ipv6": "fd00::1"}, "config": {}})
    assert msg.relays == () and msg.authorizations == () and msg.account_slug is None
    with pytest.raises(m.MalformedMessage):
        m.parse_ingress("init", {"interface": {"ipv4": "100.64.0.1", "ipv6": "fd00::1"}})


def test_authorize_flow():
    msg = m.parse_ingress("authorize_flow", {
        "ref": "opaque", "resource": CIDR, "client": CLIENT, "expires_at": 1700000000,
        "gateway_ice_credentials": {"username": "u", "password": "p"},
        "client_ice_credentials": {"username": "u2", "password": "p2"}, "actor": {}, "flow_id": "f",
    })
    assert isinstance(msg, m.AuthorizeFlow)
    assert msg.client.public_key == b"k" * 32 and msg.client.preshared_key == b"p" * 32
    assert msg.resource == CidrResource("r1", ipaddress.ip_network("10.0.0.0/16"), "net",
                                        (Filter("tcp", 80, 80), Filter("icmp")))


def test_request_connection_with_domain():
    msg = m.parse_ingress("request_connection", {
        "ref": "r", "expires_at": None,
        "resource": {"type": "dns", "id": "d1", "address": "*.test", "name": "t"},
        "client": {"id": "c1", "payload": {"ice_parameters": {"username": "u", "password": "p"},
                                          "domain": {"name": "app.test", "proxy_ips": ["100.96.0.1"]}},
                   "peer": {"persistent_keepalive": 25, "public_key": KEY, "preshared_key": PSK,
                            "ipv4": "100.64.0.2", "ipv6": "fd00:2021:1111::2"}},
    })
    assert isinstance(msg, m.RequestConnection)
    assert msg.domain == m.DomainPayload("app.test", (ipaddress.ip_address("100.96.0.1"),))
    assert msg.resource == DnsResource("d1", "*.test", "t", ())


def test_allow_access_reject_update_expiry_ice():
    allow = m.parse_ingress("allow_access", {"ref": "r", "client_id": "c1", "resource": {"type": "internet", "id": "i"},
                                             "expires_at": None, "payload": None, "client_ipv4": "100.64.0.2",
                                             "client_ipv6": "fd00:2021:1111::2"})
    assert isinstance(allow, m.AllowAccess) and allow.resource == InternetResource("i")
    assert m.parse_ingress("reject_access", {"client_id": "c", "resource_id": "r"}) == m.RejectAccess("c", "r")
    assert isinstance(m.parse_ingress("resource_updated", CIDR), m.ResourceUpdated)
    assert m.parse_ingress("access_authorization_expiry_updated",
                           {"client_id": "c", "resource_id": "r", "expires_at": 5}).expires_at == 5
    ice = m.parse_ingress("ice_candidates", {"client_id": "c", "candidates": ["candidate:1 1 udp 1 h 1 typ host", 7]})
    assert ice.candidates == ("candidate:1 1 udp 1 h 1 typ host",)
    assert isinstance(m.parse_ingress("invalidate_ice_candidates", {"client_id": "c", "candidates": []}),
                      m.InvalidateIceCandidates)
    rp = m.parse_ingress("relays_presence", {"disconnected_ids": ["a"], "connected": []})
    assert rp.disconnected_ids == ("a",)


@pytest.mark.parametrize(("event", "payload"), [
    ("authorize_flow", {"ref": "r", "resource": CIDR, "client": {**CLIENT, "public_key": "short"}}),
    ("authorize_flow", {"ref": "r", "resource": CIDR, "client": {**CLIENT, "ipv4": "fd00::1"}}),
    ("authorize_flow", {"ref": 1, "resource": CIDR, "client": CLIENT}),
    ("reject_access", {"client_id": "c"}),
    ("resource_updated", {**CIDR, "type": "bogus"}),
    ("resource_updated", {**CIDR, "address": "not-a-cidr"}),
    ("resource_updated", {**CIDR, "filters": [{"protocol": "tcp", "port_range_start": 90, "port_range_end": 80}]}),
    ("resource_updated", {**CIDR, "filters": [{"protocol": "sctp"}]}),
    ("access_authorization_expiry_updated", {"client_id": "c", "resource_id": "r", "expires_at": None}),
    ("init", []),
])
def test_invalid_payloads(event, payload):
    with pytest.raises(m.MalformedMessage):
        m.parse_ingress(event, payload)


def test_unknown_event():
    with pytest.raises(m.UnknownEvent):
        m.parse_ingress("something_new", {})


def test_builders():
    assert m.flow_authorized("r") == ("flow_authorized", {"ref": "r"})
    event, payload = m.connection_ready("r", m.IceCredentials("u", "p"))
    assert event == "connection_ready"
    assert payload["gateway_payload"]["ConnectionAccepted"]["ice_parameters"] == {"username": "u", "password": "p"}
    assert m.broadcast_ice_candidates(["c"], ["x"]) == ("broadcast_ice_candidates",
                                                       {"client_ids": ["c"], "candidates": ["x"]})
    assert m.broadcast_invalidated_ice_candidates(["c"], [])[0] == "broadcast_invalidated_ice_candidates"
