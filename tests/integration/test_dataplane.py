"""A stock wireguard-go client reaches resources through our gateway, authorized by the dev portal."""

from __future__ import annotations

import time

import pytest

from tests.netlab import NetLab
from tests.procs import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]

HTTP_OK = "resource-allowed-port"
FILTERS = [{"protocol": "tcp", "port_range_start": 80, "port_range_end": 80}, {"protocol": "icmp"}]


def metric(lab, name):
    for line in lab.metrics().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("protocol", ["1.4", "1.3"])
def test_cidr_resource_with_filters(lab, protocol):
    lab.start_gateway()
    lab.serve_http(NetLab.RESOURCE, 80, HTTP_OK)
    lab.serve_http(NetLab.RESOURCE, 8080, "should-not-be-reached")
    flow = lab.authorize({"type": "cidr", "address": "198.18.2.0/24", "filters": FILTERS}, protocol=protocol)
    assert flow["status"] == "authorized", flow
    lab.connect_client(flow, ["198.18.2.0/24"])

    code, out = lab.curl(f"http://{NetLab.RESOURCE}:80/")
    assert code == 0 and HTTP_OK in out, out
    assert lab.client.latest_handshake() > 0

    # The filtered port: the gateway answers ICMP administratively prohibited, so the
    # connection fails at once (curl exit 7, "couldn't connect") instead of running into
    # --max-time (exit 28): the exit code tells the two apart, whatever the machine's speed.
    code, out = lab.curl(f"http://{NetLab.RESOURCE}:8080/", timeout=5)
    assert code == 7, out
    assert metric(lab, 'firezone_gateway_dropped_packets_total{reason="filtered"}') >= 1

    code, out = lab.client_sh("ping", "-c", "1", "-W", "2", NetLab.RESOURCE)
    assert code == 0, out
    assert metric(lab, "firezone_gateway_wireguard_handshakes_total") >= 1
    assert metric(lab, "firezone_gateway_active_peers") == 1


def ping(lab, address, wait=1.0):
    return lab.client_sh("ping", "-c", "1", "-W", str(wait), address)[0] == 0


def test_reject_access_stops_traffic_at_once(lab):
    lab.start_gateway()
    flow = lab.authorize({"type": "cidr", "address": "198.18.2.2/32"})
    lab.connect_client(flow, ["198.18.2.0/24"])
    assert wait_for(lambda: ping(lab, NetLab.RESOURCE), 10, "ping through the tunnel")
    status, body = lab.portal.api("DELETE", f"/v1/flows/{flow['flow_id']}")
    assert status == 200 and body["sent"] == "reject_access"
    # The client had no other resource: handling reject_access removes it (and says goodbye).
    wait_for(lambda: "Removed client" in lab.gateway.output(), 10, "the gateway to handle reject_access")
    # At once, not after some later check: the very next ping gets no answer.
    assert not ping(lab, NetLab.RESOURCE)
    assert metric(lab, "firezone_gateway_active_peers") == 0


def test_expiry_stops_traffic(lab):
    lab.start_gateway()
    expires = int(time.time()) + 4
    flow = lab.authorize({"type": "cidr", "address": "198.18.2.0/24"}, expires_at=expires)
    lab.connect_client(flow, ["198.18.2.0/24"])
    assert wait_for(lambda: ping(lab, NetLab.RESOURCE), 10, "ping before expiry")
    wait_for(lambda: "Authorization expired" in lab.gateway.output(), 20, "the expiry")
    # Not early: read after the gateway said so, so a slow machine cannot break it.
    assert time.time() >= expires
    # No resource left: the client goes in the same check.
    wait_for(lambda: "Removed client" in lab.gateway.output(), 10, "the client to be removed")
    assert not ping(lab, NetLab.RESOURCE)


def test_icmp_follows_the_icmp_filter(lab):
    lab.start_gateway()
    lab.serve_http(NetLab.RESOURCE, 80, HTTP_OK)
    flow = lab.authorize({"type": "cidr", "address": "198.18.2.0/24",
                          "filters": [{"protocol": "tcp", "port_range_start": 80, "port_range_end": 80}]})
    lab.connect_client(flow, ["198.18.2.0/24"])
    code, out = lab.curl(f"http://{NetLab.RESOURCE}/")
    assert code == 0 and HTTP_OK in out
    code, out = lab.client_sh("ping", "-c", "1", "-W", "2", NetLab.RESOURCE)
    assert code != 0 and "Packet filtered" in out, out  # ICMP "administratively prohibited"
    status, _ = lab.portal.api("PATCH", f"/v1/resources/{flow['resource_id']}", {"filters": FILTERS})
    assert status == 200
    assert wait_for(lambda: ping(lab, NetLab.RESOURCE), 5, "ping allowed after resource_updated")


def test_rekey_keeps_traffic_flowing(lab):
    # A 3 s session lifetime on the gateway makes it re-handshake as initiator repeatedly.
    lab.start_gateway({"FIREZONE_WG_REKEY_AFTER_TIME": "3"})
    flow = lab.authorize({"type": "cidr", "address": "198.18.2.0/24"})
    lab.connect_client(flow, ["198.18.2.0/24"])
    assert wait_for(lambda: ping(lab, NetLab.RESOURCE), 10, "first ping")
    _, out = lab.client_sh("ping", "-c", "50", "-i", "0.2", "-W", "1", NetLab.RESOURCE, timeout=30)
    received = int(out.split(" received")[0].rsplit(" ", 1)[1])
    assert received >= 47, out  # at most a few lost while a handshake completes
    assert metric(lab, "firezone_gateway_wireguard_handshakes_total") >= 3
    assert "initiator=True" in lab.gateway.output()


def test_bad_datagrams_are_dropped_and_counted(lab):
    import os
    import socket

    from pyroute2.netns import popns, pushns

    lab.start_gateway()
    flow = lab.authorize({"type": "cidr", "address": "198.18.2.0/24"})
    lab.connect_client(flow, ["198.18.2.0/24"])
    assert wait_for(lambda: ping(lab, NetLab.RESOURCE), 10, "ping")
    pushns(lab.net.ns["client"])
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    finally:
        popns()
    target = (NetLab.GATEWAY_OUTER, 52625)
    junk = [os.urandom(n) for n in (0, 1, 3, 31, 32, 148, 1500)]
    junk += [b"\x01\x00\x00\x00" + os.urandom(144)]  # initiation with a bad mac1
    junk += [b"\x04\x00\x00\x00" + os.urandom(60)]  # transport data for an unknown index
    for data in junk * 20:
        sock.sendto(data, target)
    sock.close()
    wait_for(lambda: metric(lab, 'firezone_gateway_dropped_packets_total{reason="mac1"}') >= 20, 5, "mac1 drops")
    assert metric(lab, 'firezone_gateway_dropped_packets_total{reason="malformed"}') >= 20
    assert metric(lab, 'firezone_gateway_dropped_packets_total{reason="unknown_index"}') >= 20
    assert lab.gateway.running() and ping(lab, NetLab.RESOURCE)


def test_replayed_and_wrong_key_datagrams_are_dropped_and_counted(lab):
    from gateway_pkg.tunnel.packet import IpPacket
    from tests.packets import build_icmp_echo
    from tests.wgpeer import CorePeer

    lab.start_gateway()
    peer = CorePeer(lab.net.ns["client"], NetLab.CLIENT_OUTER)
    stranger = CorePeer(lab.net.ns["client"], NetLab.CLIENT_OUTER, ipv4="100.64.0.10")
    try:
        flow = lab.authorize({"type": "cidr", "address": "198.18.2.0/24"}, client=peer)
        endpoint = (NetLab.GATEWAY_OUTER, flow["gateway"]["port"])
        peer.connect(flow["gateway"]["public_key"], endpoint)
        peer.send(build_icmp_echo(peer.ipv4, NetLab.RESOURCE, 7, 1, b"x"))
        assert peer.pump(lambda p: IpPacket(p).icmp_type == 0, 10) is not None
        transport = [d for d in peer.sent if d[0] == 4 and len(d) > 32]
        for _ in range(5):  # the captured echo request, again and again
            peer.sock.sendto(transport[-1], endpoint)
        wait_for(lambda: metric(lab, 'firezone_gateway_dropped_packets_total{reason="replay"}') >= 5, 5, "replays")

        # A client the portal never authorized: its handshake is refused (its key is unknown).
        stranger.connect(flow["gateway"]["public_key"], endpoint)
        stranger.send(build_icmp_echo(stranger.ipv4, NetLab.RESOURCE, 8, 1, b"x"))
        assert stranger.pump(lambda p: True, 2) is None
        assert metric(lab, 'firezone_gateway_dropped_packets_total{reason="unknown_peer"}') >= 1
        assert lab.gateway.running()
    finally:
        peer.close()
        stranger.close()
