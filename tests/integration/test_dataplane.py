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
    # connection fails at once (curl exit 7) instead of timing out (exit 28).
    started = time.monotonic()
    code, out = lab.curl(f"http://{NetLab.RESOURCE}:8080/", timeout=5)
    assert code == 7, out
    assert time.monotonic() - started < 2.5
    assert metric(lab, 'firezone_gateway_dropped_packets_total{reason="filtered"}') >= 1

    code, out = lab.client_sh("ping", "-c", "1", "-W", "2", NetLab.RESOURCE)
    assert code == 0, out
    assert metric(lab, "firezone_gateway_wireguard_handshakes_total") >= 1
    assert metric(lab, "firezone_gateway_active_peers") == 1
