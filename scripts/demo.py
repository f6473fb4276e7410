#!/usr/bin/env python3
"""`make demo-netns`: a gateway joins the development portal and carries a WireGuard client's traffic.

Everything runs on this machine in network namespaces the demo creates and removes:
the dev portal, our gateway, a stock wireguard-go client, HTTP resources and unbound.
Each step prints what it proves; the summary table at the end is the result.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import netlab
from tests.lab import LAB_TOKEN, Lab
from tests.procs import DevPortalProc, wait_for

PROXY = "100.96.0.1"
FLAG = "gateway-userspace-dns-a-aaaa-records"
TTL = 5


class Demo:
    def __init__(self) -> None:
        self.rows: list[tuple[str, bool, str]] = []
        self.started = time.monotonic()

    def step(self, title: str) -> None:
        print(f"\n[{time.monotonic() - self.started:5.1f}s] ▶ {title}", flush=True)

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        mark = "✓" if ok else "✗"
        print(f"        {mark} {what}{(': ' + detail) if detail else ''}", flush=True)
        self.rows.append((what, ok, detail))
        return ok

    def summary(self) -> bool:
        width = max(len(r[0]) for r in self.rows)
        print("\n" + "=" * (width + 40))
        print(f"{'check'.ljust(width)}  result  detail")
        print("-" * (width + 40))
        for what, ok, detail in self.rows:
            print(f"{what.ljust(width)}  {'PASS' if ok else 'FAIL':6}  {detail}")
        print("=" * (width + 40))
        passed = all(ok for _, ok, _ in self.rows)
        print(f"{sum(ok for _, ok, _ in self.rows)} passed, {sum(not ok for _, ok, _ in self.rows)} failed "
              f"in {time.monotonic() - self.started:.1f} s")
        return passed


def print_gateways(lab: Lab) -> None:
    print(f"        {'name':14} {'external_id':18} {'tunnel ipv4':15} {'version':8} joined")
    for gw in lab.portal.gateways():
        print(f"        {gw['name']:14} {gw['external_id'][:16] + '…':18} {gw['ipv4']:15} {gw['version']:8} "
              f"{gw['joined']}")


def fetch(lab: Lab, url: str) -> str:
    code, out = lab.curl(url)
    return out.strip() if code == 0 else f"(curl exit {code})"


def run(demo: Demo, lab: Lab) -> None:
    net = lab.net
    demo.step("Resources: HTTP on 198.18.2.2 ports 80 and 8080, two web servers for a DNS name, unbound")
    lab.serve_http(netlab.NetLab.RESOURCE, 80, "hello from the resource, port 80")
    lab.serve_http(netlab.NetLab.RESOURCE, 8080, "port 8080 should be filtered")
    old, new = netlab.NetLab.RESOURCE_EXTRA
    lab.serve_http(old, 80, "old-address")
    lab.serve_http(new, 80, "new-address")
    dns = lab.start_dns([f"app.lab.test. {TTL} IN A {old}"])

    demo.step("Gateway: firezone-gateway-init (NAT, sysctls), then firezone-gateway joins the dev portal")
    lab.portal.api("PUT", "/v1/flags", {FLAG: True})
    lab.start_gateway({"FIREZONE_NO_TELEMETRY": "false", "FIREZONE_FEATURE_FLAGS_URL": lab.portal.url + "/decide",
                       "FIREZONE_FEATURE_FLAGS_INTERVAL": "2", "RUST_LOG": "info"})
    print_gateways(lab)
    demo.check("gateway joined the portal", lab.gateway_record()["joined"], "GET /v1/gateways")
    demo.check("/readyz", lab.readyz() == 200, "200 once joined and the TUN device is up")

    demo.step("Client: wireguard-go, authorized by the dev portal for 198.18.2.0/24, tcp/80 + icmp")
    filters = [{"protocol": "tcp", "port_range_start": 80, "port_range_end": 80}, {"protocol": "icmp"}]
    flow = lab.authorize({"type": "cidr", "address": "198.18.2.0/24", "filters": filters}, protocol="1.3")
    demo.check("portal flow authorized", flow["status"] == "authorized", "request_connection → connection_ready")
    lab.connect_client(flow, ["198.18.2.0/24", "100.96.0.0/11"])
    body = fetch(lab, f"http://{netlab.NetLab.RESOURCE}/")
    demo.check("WireGuard handshake", lab.client.latest_handshake() > 0, "wireguard-go ⇄ our gateway")
    demo.check("HTTP to the allowed port", "port 80" in body, body)
    started = time.monotonic()
    body = fetch(lab, f"http://{netlab.NetLab.RESOURCE}:8080/")
    demo.check("filtered port refused", body.startswith("(curl exit 7)") and time.monotonic() - started < 2,
               "ICMP administratively prohibited")
    code, out = lab.client_sh("ping", "-c", "3", "-i", "0.2", "-W", "1", netlab.NetLab.RESOURCE)
    rtt = out.strip().splitlines()[-1].split("=")[-1].strip() if code == 0 else out.strip()[-60:]
    demo.check("ping through the tunnel", code == 0, rtt)

    demo.step(f"DNS resource app.lab.test (record TTL {TTL} s), flag {FLAG} on via the dev portal")
    before = lab.gateway.output().count("Allowed access")
    dns_flow = lab.authorize({"type": "dns", "address": "app.lab.test", "proxy_ips": [PROXY]}, protocol="1.3")
    wait_for(lambda: lab.gateway.output().count("Allowed access") > before, 12, "allow_access")
    resolved_at = time.monotonic()
    demo.check("gateway resolved the name before allowing it", "resolved=1" in lab.gateway.output(),
               "allow_access (1.3) with the domain")
    demo.check("client reaches the name by its proxy IP", fetch(lab, f"http://{PROXY}/") == "old-address",
               f"{PROXY} → {old}")
    dns.replace("app.lab.test", f"app.lab.test. {TTL} IN A {new}")
    print(f"        record changed: app.lab.test → {new}")

    def reauthorized_fetch() -> str:
        before = lab.gateway.output().count("Allowed access")
        lab.portal.api("POST", f"/v1/flows/{dns_flow['flow_id']}/reauthorize")
        wait_for(lambda: lab.gateway.output().count("Allowed access") > before, 12, "allow_access")
        return fetch(lab, f"http://{PROXY}/")

    queries = dns.queries()
    body = reauthorized_fetch()
    demo.check("within the TTL: old address, from the cache", body == "old-address" and dns.queries() == queries,
               f"{time.monotonic() - resolved_at:.1f} s after resolving, no query to unbound")
    try:
        wait_for(lambda: reauthorized_fetch() == "new-address", TTL + 10, "new address", interval=0.5)
        elapsed = time.monotonic() - resolved_at
        demo.check("after the TTL: the new address", elapsed >= TTL - 0.5, f"after {elapsed:.1f} s (TTL {TTL} s)")
    except AssertionError as exc:
        demo.check("after the TTL: the new address", False, str(exc))

    demo.step("Revoke: DELETE the cidr flow → reject_access")
    lab.portal.api("DELETE", f"/v1/flows/{flow['flow_id']}")
    code, _ = lab.client_sh("ping", "-c", "1", "-W", "1", netlab.NetLab.RESOURCE)
    demo.check("traffic stops at once", code != 0, "reject_access")
    metrics = lab.metrics()
    handshakes = next((ln.split()[-1] for ln in metrics.splitlines()
                       if ln.startswith("firezone_gateway_wireguard_handshakes_total")), "?")
    demo.check("metrics exported", "firezone_gateway_packets_total" in metrics, f"handshakes={handshakes}")
    del net


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the lab running until Ctrl-C")
    args = parser.parse_args()
    reason = netlab.available()
    if reason:
        print(f"demo: {reason}", file=sys.stderr)
        return 1
    demo = Demo()
    workdir = Path(tempfile.mkdtemp(prefix="fz-demo-"))
    demo.step("Lab: namespaces client ── gateway ── resource, dev portal on the management link")
    net = netlab.NetLab(workdir).up()
    portal = None
    try:
        portal = DevPortalProc(workdir, host=net.MGMT_ROOT, gateway_token=LAB_TOKEN)
        print(f"        dev portal: {portal.url} (admin token in {workdir / 'admin-token'})")
        lab = Lab(net, portal)
        lab.client = net.new_client()
        lab.client.start()
        try:
            run(demo, lab)
        except Exception as exc:  # a failed step is a FAIL row, not a traceback
            demo.check("demo ran to the end", False, f"{type(exc).__name__}: {exc}")
        ok = demo.summary()
        if args.keep:
            print(f"\nLab kept. Namespaces: {', '.join(net.ns.values())}. Logs in {workdir}.")
            print(f"  ip netns exec {net.ns['client']} curl http://{netlab.NetLab.RESOURCE}/")
            print(f"  curl -H 'Authorization: Bearer {portal.admin_token}' {portal.url}/v1/gateways")
            print("Press Ctrl-C to tear down.")
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        if not ok:
            print(f"Logs: {workdir}")
        return 0 if ok else 1
    finally:
        if portal is not None:
            portal.stop()
        net.down()
        if lab_dns := getattr(locals().get("lab"), "dns", None):
            lab_dns.close()
        if os.environ.get("DEMO_KEEP_LOGS") is None and demo.rows and all(ok for _, ok, _ in demo.rows):
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
