"""DNS resources through the tunnel: the client lands on a changed record only when the
gateway's cache lets it (record TTL with the flag on, a fixed time with it off)."""

from __future__ import annotations

import ipaddress
import time

import pytest

from gateway_pkg.tunnel import p2p_control
from gateway_pkg.tunnel.packet import IpPacket
from tests.netlab import NetLab
from tests.packets import build_icmp_echo
from tests.procs import wait_for
from tests.wgpeer import CorePeer

pytestmark = [pytest.mark.integration, pytest.mark.netns]

OLD, NEW = NetLab.RESOURCE_EXTRA
PROXY = "100.96.0.1"
FLAG = "gateway-userspace-dns-a-aaaa-records"


def resolutions(lab):
    return lab.gateway.output().count("Allowed access")


def reauthorize_and_fetch(lab, flow):
    """Re-send allow_access (a fresh resolution through the cache), wait until the gateway
    applied it, then fetch through the proxy IP. Returns the body (old-/new-address)."""
    before = resolutions(lab)
    status, _ = lab.portal.api("POST", f"/v1/flows/{flow['flow_id']}/reauthorize")
    assert status == 200
    wait_for(lambda: resolutions(lab) > before, 12, "allow_access applied")
    code, out = lab.curl(f"http://{PROXY}/")
    assert code == 0, out
    return out.strip()


def setup_dns_flow(lab, ttl, extra_env):
    """Returns the times just before and just after the gateway resolved the name: bounds
    taken on the right side of the event, so that a slow machine cannot break them."""
    dns = lab.start_dns([f"app.lab.test. {ttl} IN A {OLD}"])
    lab.serve_http(OLD, 80, "old-address")
    lab.serve_http(NEW, 80, "new-address")
    lab.start_gateway(extra_env)
    body = {"type": "dns", "address": "app.lab.test", "proxy_ips": [PROXY]}
    before = time.monotonic()
    flow = lab.authorize(body, protocol="1.3")
    assert flow["status"] == "authorized", flow  # connection_ready came after the resolution
    after = time.monotonic()
    lab.connect_client(flow, ["100.96.0.0/11"])
    code, out = lab.curl(f"http://{PROXY}/")
    assert code == 0 and out.strip() == "old-address", out
    return dns, flow, before, after


def test_flag_on_via_dev_portal_follows_the_record_ttl(lab):
    ttl = 4
    lab.portal.api("PUT", "/v1/flags", {FLAG: True})
    env = {"FIREZONE_NO_TELEMETRY": "false", "FIREZONE_FEATURE_FLAGS_URL": lab.portal.url + "/decide",
           "FIREZONE_FEATURE_FLAGS_INTERVAL": "1"}
    dns, flow, before, _ = setup_dns_flow(lab, ttl, env)
    assert f"feature flag {FLAG} is now True" in lab.gateway.output()
    queries = dns.queries()
    dns.replace("app.lab.test", f"app.lab.test. {ttl} IN A {NEW}")
    # Within the TTL: served from the gateway's cache, no query reaches the server.
    assert reauthorize_and_fetch(lab, flow) == "old-address"
    assert dns.queries() == queries
    # After the TTL: the next re-authorization resolves again and lands on the new address
    # (the deadline only caps the poll, and is far below the legacy path's 30 s).
    wait_for(lambda: reauthorize_and_fetch(lab, flow) == "new-address", ttl + 12, "new address after the TTL")
    assert time.monotonic() - before >= ttl  # not before the TTL ran out
    assert dns.queries() > queries


def test_flag_off_uses_the_fixed_legacy_time(lab):
    legacy = 6  # the injectable stand-in for upstream's 30 s
    dns, flow, before, after = setup_dns_flow(lab, 1, {"FIREZONE_DNS_LEGACY_TTL": str(legacy)})
    assert f"{FLAG} is now True" not in lab.gateway.output()
    queries = dns.queries()
    dns.replace("app.lab.test", f"app.lab.test. 1 IN A {NEW}")
    # This sleep stays: outliving the record's own 1 s TTL is the behaviour under test
    # (counted from `after`, when the resolution was surely done; nothing to poll for).
    time.sleep(max(0.0, after + 1.5 - time.monotonic()))
    assert reauthorize_and_fetch(lab, flow) == "old-address"  # 1 s TTL ignored: fixed time
    assert dns.queries() == queries
    wait_for(lambda: reauthorize_and_fetch(lab, flow) == "new-address", legacy + 12, "new address")
    assert time.monotonic() - before >= legacy  # not before the fixed time ran out


def test_flag_flips_at_runtime_through_the_dev_portal(lab):
    env = {"FIREZONE_NO_TELEMETRY": "false", "FIREZONE_FEATURE_FLAGS_URL": lab.portal.url + "/decide",
           "FIREZONE_FEATURE_FLAGS_INTERVAL": "0.5"}
    lab.start_dns(["app.lab.test. 60 IN A 198.18.2.3"])
    lab.start_gateway(env)
    lab.portal.api("PUT", "/v1/flags", {FLAG: True})
    wait_for(lambda: f"{FLAG} is now True" in lab.gateway.output(), 10, "flag on")
    lab.portal.api("PUT", "/v1/flags", {FLAG: False})
    wait_for(lambda: f"{FLAG} is now False" in lab.gateway.output(), 10, "flag off again")


def test_14_assigned_ips_path_with_our_own_client(lab):
    """wireguard-go cannot send p2p-control packets: a client on our sans-I/O core does."""
    lab.start_dns([f"app.lab.test. 60 IN A {NetLab.RESOURCE}"])
    lab.start_gateway({"FZFF_GATEWAY_USERSPACE_DNS_A_AAAA_RECORDS": "true"})
    peer = CorePeer(lab.net.ns["client"], NetLab.CLIENT_OUTER)
    try:
        flow = lab.authorize({"type": "dns", "address": "*.lab.test", "domain": "app.lab.test",
                              "proxy_ips": [PROXY]}, protocol="1.4", client=peer)
        assert flow["status"] == "authorized", flow
        peer.connect(flow["gateway"]["public_key"], (NetLab.GATEWAY_OUTER, flow["gateway"]["port"]))

        def domain_status(packet):
            return p2p_control.is_p2p_control(packet) and isinstance(p2p_control.decode(packet),
                                                                     p2p_control.DomainStatus)

        peer.send(p2p_control.encode_assigned_ips(flow["resource_id"], "app.lab.test",
                                                  [ipaddress.ip_address(PROXY)]))
        answer = peer.pump(domain_status, 10)
        assert answer is not None, "no DomainStatus"
        status = p2p_control.decode(answer)
        assert status.active and status.domain == "app.lab.test"

        # Through the proxy IP: the echo reaches the resolved address and comes back NAT-ed.
        peer.send(build_icmp_echo(peer.ipv4, PROXY, 0x4242, 1, b"through-nat"))
        reply = peer.pump(lambda p: not p2p_control.is_p2p_control(p) and IpPacket(p).icmp_type == 0, 5)
        assert reply is not None, "no echo reply through the proxy IP"
        assert str(IpPacket(reply).src_ip) == PROXY

        # A domain outside the resource's pattern is answered Inactive at once.
        peer.send(p2p_control.encode_assigned_ips(flow["resource_id"], "other.example",
                                                  [ipaddress.ip_address("100.96.0.2")]))
        answer = peer.pump(domain_status, 10)
        assert answer is not None and not p2p_control.decode(answer).active
    finally:
        peer.close()
