"""Issue 12's reproduction through the whole gateway: the DNS server dies under a 1.3 DNS flow.

As a new user would try it: the flag on, a 1.3 flow for an A-only name (TTL 4, SOA minimum
4), the lab's unbound SIGKILLed, one re-authorization 5 s later. The gateway's resolv.conf
has no options, so each query to the dead server takes glibc's default 5 s × 2 attempts:
the whole 10 s resolution limit. The stale A must be applied well before that, the proxy IP
must keep working, the AAAA (whose NODATA expired too) must not be asked again within the
30 s recheck, the outage must be logged once, and the gateway must pick the changed record
up when the server returns.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from tests.lab import LabDns
from tests.netlab import NetLab
from tests.procs import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns, pytest.mark.slow]

OLD, NEW = NetLab.RESOURCE_EXTRA
PROXY = "100.96.0.1"
NAME = "app.lab.test"
LIMIT = 10.0  # the gateway's resolution limit (upstream's DNS_RESOLUTION_TIMEOUT)
PROMPT = 3.0  # "well under the limit"
RECHECK = 30.0
OUTAGE, RECOVERED = "DNS outage:", "DNS outage over:"


def resolutions(lab) -> int:
    return lab.gateway.output().count("Allowed access")


def upstream_queries(lab) -> int:
    found = re.search(r'^firezone_gateway_dns_upstream_queries_total\{path="userspace"\} (\S+)$', lab.metrics(), re.M)
    assert found, "no userspace upstream query counter on /metrics"
    return int(float(found.group(1)))


def reauthorize(lab, flow) -> float:
    """Re-send allow_access; return how long the gateway took to apply it."""
    before = resolutions(lab)
    started = time.monotonic()
    status, _ = lab.portal.api("POST", f"/v1/flows/{flow['flow_id']}/reauthorize")
    assert status == 200
    wait_for(lambda: resolutions(lab) > before, LIMIT + 5, "allow_access applied", interval=0.05)
    return time.monotonic() - started


def fetch(lab) -> str:
    code, out = lab.curl(f"http://{PROXY}/")
    assert code == 0, out  # issue 12, before the fix: host unreachable (no address applied)
    return out.strip()


def test_dns_server_killed_under_a_13_flow(lab):
    records = [f"{NAME}. 4 IN A {OLD}"]
    lab.dns = LabDns(lab.net, records, soa_minimum=4)
    # What killing the DNS server makes the gateway say (the test checks the outage line itself).
    lab.logs.allow(r"DNS outage: no answer from", r"TUN DNS server: no nameserver answered")
    lab.serve_http(OLD, 80, "old-address")
    lab.serve_http(NEW, 80, "new-address")
    lab.start_gateway({"FZFF_GATEWAY_USERSPACE_DNS_A_AAAA_RECORDS": "true"})
    flow = lab.authorize({"type": "dns", "address": NAME, "proxy_ips": [PROXY]}, protocol="1.3")
    assert flow["status"] == "authorized", flow
    resolved = time.monotonic()  # after the resolution: the TTL ends before resolved + 4
    lab.connect_client(flow, ["100.96.0.0/11"])
    assert fetch(lab) == "old-address"

    lab.dns.proc.stop(signal.SIGKILL)
    time.sleep(max(0.0, resolved + 5 - time.monotonic()))  # the TTL running out is the point
    took = reauthorize(lab, flow)
    print(f"re-authorization with the DNS server dead: applied in {took:.2f} s (limit {LIMIT:g} s)")
    assert took < PROMPT < LIMIT, took
    assert fetch(lab) == "old-address"  # the stale A, through the proxy IP

    # The refreshes give up after 5 s × 2 attempts: one outage line, none per query.
    wait_for(lambda: OUTAGE in lab.gateway.output(), 2 * LIMIT, "the outage line")
    asked = upstream_queries(lab)
    took = reauthorize(lab, flow)  # within the 30 s recheck: answered at once, nothing asked
    print(f"re-authorization during the known outage: applied in {took:.2f} s")
    assert took < PROMPT, took
    assert fetch(lab) == "old-address"
    assert upstream_queries(lab) == asked
    failed_at = time.monotonic()

    # The server returns, with the name moved.
    old_dns = lab.dns
    lab.dns = LabDns(lab.net, [f"{NAME}. 4 IN A {NEW}"], soa_minimum=4)
    old_dns.close()
    deadline = failed_at + RECHECK + 15
    while (body := fetch(lab)) != "new-address" and time.monotonic() < deadline:
        time.sleep(1)
        reauthorize(lab, flow)
    assert body == "new-address", "the changed record after the server returned"
    print(f"new address served {time.monotonic() - failed_at:.1f} s after the outage was known")
    output = lab.gateway.output()
    print("\n".join(line for line in output.splitlines() if "DNS outage" in line))
    assert output.count(OUTAGE) == 1 and output.count(RECOVERED) == 1, output
