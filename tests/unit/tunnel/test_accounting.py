"""Which resource a forwarded packet counts for, and what /metrics shows per resource and client."""

from __future__ import annotations

import ipaddress

from prometheus_client import REGISTRY
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway_pkg.resources import CidrResource, DnsResource, InternetResource
from gateway_pkg.tunnel import metrics
from gateway_pkg.tunnel.accounting import Accounting, ClientCounters, ResourceCounters
from gateway_pkg.tunnel.policy import Action, ClientPolicy, TunAddresses
from tests.packets import build_tcp, build_udp

C4, C6 = "100.64.0.2", "fd00:2021:1111::2"
G4, G6 = "100.64.0.1", "fd00:2021:1111::1"
P4 = [ipaddress.ip_address("100.96.0.1")]


def cidr(rid: str, address: str) -> CidrResource:
    return CidrResource(rid, ipaddress.ip_network(address), f"name-{rid}")


def test_the_most_specific_resource_gets_the_packet() -> None:
    accounting = Accounting()
    policy = ClientPolicy(C4, C6, TunAddresses(G4, G6), accounting)
    policy.add_resource(cidr("wide", "10.0.0.0/8"), None)
    policy.add_resource(cidr("narrow", "10.1.0.0/16"), None)
    policy.add_resource(InternetResource("internet"), None)
    policy.add_resource(DnsResource("app", "app.corp.example", "App"), None)
    policy.setup_nat("app", "app.corp.example", P4, [ipaddress.ip_address("192.0.2.1")], 0)

    def counted_for(dst: str) -> str | None:
        verdict = policy.check_outbound(build_udp(C4, dst, 40000, 53), 1)
        assert verdict.action is Action.FORWARD
        return None if verdict.resource is None else verdict.resource.id

    assert counted_for("10.1.2.3") == "narrow"
    assert counted_for("10.2.0.1") == "wide"
    assert counted_for("198.51.100.1") == "internet"
    assert counted_for("100.96.0.1") == "app"  # a proxy IP: the DNS resource, NAT or not
    assert counted_for(G4) is None  # the gateway itself (its TUN DNS server) is no resource
    answer = policy.check_inbound(build_udp("10.1.2.3", C4, 53, 40000), 1)
    assert answer.resource is not None and answer.resource.id == "narrow"
    nat_answer = policy.check_inbound(build_udp("192.0.2.1", C4, 53, 40000), 1)
    assert nat_answer.resource is not None and nat_answer.resource.id == "app"


def test_resource_counters_are_shared_between_clients_and_outlive_a_removal() -> None:
    accounting = Accounting()
    one = ClientPolicy(C4, C6, TunAddresses(G4, G6), accounting)
    two = ClientPolicy("100.64.0.3", "fd00:2021:1111::3", TunAddresses(G4, G6), accounting)
    one.add_resource(cidr("r", "10.0.0.0/8"), None)
    two.add_resource(cidr("r", "10.0.0.0/8"), None)
    first = one.check_outbound(build_tcp(C4, "10.0.0.1", 1, 80), 1).resource
    second = two.check_outbound(build_tcp("100.64.0.3", "10.0.0.1", 1, 80), 1).resource
    assert first is second is accounting.resources["r"]
    one.remove_resource("r")
    one.add_resource(CidrResource("r", ipaddress.ip_network("10.0.0.0/8"), "renamed"), None)
    assert accounting.resources["r"] is first and first.name == "renamed"


class _View:
    def __init__(self) -> None:
        self.client = ClientCounters()
        self.resource = ResourceCounters(cidr("r1", "10.0.0.0/8"))

    def client_counters(self) -> list[tuple[str, ClientCounters, list[str]]]:
        return [("client-a", self.client, ["r1"])]

    def resource_counters(self) -> list[ResourceCounters]:
        return [self.resource]

    def connected_clients(self) -> int:
        return 1

    def active_flows(self) -> int | None:
        return None


def _scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_per_client_series_only_when_asked_for() -> None:
    view = _View()
    view.client.packets_in, view.client.bytes_in, view.client.handshakes = 3, 300, 2
    view.client.handshake_failures["unconfirmed"] = 1
    view.resource.packets_out, view.resource.bytes_out = 5, 500
    try:
        metrics.watch_clients(view, per_client=False)
        off = _scrape()
        assert ({"resource_id": "r1", "direction": "out"}, 500.0) in off["firezone_gateway_resource_bytes_total"]
        assert off["firezone_gateway_resource_flows"] == [({"resource_id": "r1"}, 1.0)]
        assert off["firezone_gateway_connected_clients"] == [({}, 1.0)]
        assert not any(name.startswith("firezone_gateway_client_") for name in off)
        assert not any("client-a" in labels.values() for rows in off.values() for labels, _ in rows)

        metrics.watch_clients(view, per_client=True)
        on = _scrape()
        assert ({"client_id": "client-a", "direction": "in"}, 300.0) in on["firezone_gateway_client_bytes_total"]
        assert on["firezone_gateway_client_handshakes_total"] == [({"client_id": "client-a"}, 2.0)]
        assert on["firezone_gateway_client_handshake_failures_total"] == [
            ({"client_id": "client-a", "reason": "unconfirmed"}, 1.0)]
    finally:
        metrics._clients.clear()
