#!/usr/bin/env python3
"""Data-plane checks of the e2e lab, driven from the controller with `podman exec` only
(every packet stays inside the containers and their podman network).

For each gateway container: the dev portal (on the lab host) shows it joined; the client is
authorized through the admin API; WireGuard handshake; HTTP to the allowed port of a cidr
resource works (and the lab sees the request from the gateway's address: it went through
the tunnel and the gateway's masquerade) while the filtered port is refused; with --dns, a
DNS resource follows the record TTL with the flag on and the fixed legacy time with it off.

Used by molecule/*/verify.yml and scripts/container_demo.py.
  labcheck.py --lab C --client C --net 10.89.61 --gateway C [--gateway C ...] [--dns] [--json FILE]
Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

FLAG = "gateway-userspace-dns-a-aaaa-records"
UNIT = "firezone-gateway.service"


class CheckFailed(AssertionError):
    pass


def podman(*argv: str, stdin: str | None = None, timeout: float = 60,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *argv], input=stdin, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and done.returncode != 0:
        detail = done.stderr.strip() or done.stdout.strip()
        raise CheckFailed(f"podman {' '.join(argv)}: exit {done.returncode}: {detail}")
    return done


def sh(container: str, *argv: str, stdin: str | None = None, timeout: float = 60,
       check: bool = True) -> subprocess.CompletedProcess[str]:
    return podman("exec", *(["-i"] if stdin is not None else []), container, *argv, stdin=stdin, timeout=timeout,
                  check=check)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def say(message: str) -> None:
    print(message, flush=True)


@dataclass
class Lab:
    lab: str
    client: str
    net: str
    log: list[str] = field(default_factory=list)

    @property
    def portal(self) -> str:
        return f"http://{self.net}.10:8081"

    # --- dev portal admin API, called from inside the lab host ---------------------------
    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        done = sh(self.lab, "curl", "-sS", "--max-time", "30", "-X", method, "-H", "@/opt/lab/admin-header",
                  "-H", "Content-Type: application/json", "--data-binary", "@-", "-w", "\n%{http_code}",
                  self.portal + path, stdin=json.dumps(body) if body is not None else "", timeout=40)
        text, _, status = done.stdout.rpartition("\n")
        try:
            data = json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            data = text
        return int(status), data

    def gateways(self) -> list[dict[str, Any]]:
        status, data = self.api("GET", "/v1/gateways")
        if status != 200:
            raise CheckFailed(f"GET /v1/gateways: {status} {data}")
        return data

    def set_flag(self, value: bool) -> None:
        status, data = self.api("PUT", "/v1/flags", {FLAG: value})
        if status not in (200, 204):
            raise CheckFailed(f"PUT /v1/flags: {status} {data}")

    # --- unbound on the lab host ----------------------------------------------------------
    def set_record(self, name: str, ttl: int, address: str) -> None:
        ctl = ["unbound-control", "-c", "/opt/lab/unbound.conf"]
        sh(self.lab, *ctl, "local_data_remove", name)
        sh(self.lab, *ctl, "local_data", f"{name}.", str(ttl), "IN", "A", address)

    # --- the client ---------------------------------------------------------------------
    def client_keys(self) -> dict[str, str]:
        return {"public_key": sh(self.client, "cat", "/etc/lab/wg/public").stdout.strip(),
                "preshared_key": sh(self.client, "cat", "/etc/lab/wg/psk").stdout.strip(),
                "ipv4": "100.64.0.2", "ipv6": "fd00:2021:1111::2"}

    def curl(self, url: str, timeout: float = 3) -> tuple[int, str, float]:
        started = time.monotonic()
        done = sh(self.client, "curl", "-sS", "--max-time", str(timeout), url, check=False, timeout=timeout + 10)
        return done.returncode, (done.stdout + done.stderr).strip(), time.monotonic() - started


def container_ip(container: str) -> str:
    out = podman("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", container).stdout
    return out.split()[0]


class GatewayCheck:
    def __init__(self, lab: Lab, container: str) -> None:
        self.lab = lab
        self.container = container
        self.ip = container_ip(container)
        self.result: dict[str, Any] = {"gateway": container, "address": self.ip}

    def journal(self) -> str:
        return sh(self.container, "journalctl", "-u", UNIT, "-o", "cat", "--no-pager", timeout=30).stdout

    def resolutions(self) -> int:
        return self.journal().count("Allowed access")

    def flag_state(self) -> bool:
        states = re.findall(rf"feature flag {FLAG} is now (True|False)", self.journal())
        return bool(states) and states[-1] == "True"

    def step(self, message: str) -> None:
        say(f"  [{self.container}] {message}")

    # --- joined ---------------------------------------------------------------------------
    def joined(self) -> dict[str, Any]:
        fzid = sh(self.container, "cat", "/var/lib/firezone/gateway_id").stdout.strip()
        self.result["firezone_id"] = fzid
        records = [g for g in self.lab.gateways() if g.get("external_id") == fzid]
        if len(records) != 1 or not records[0].get("joined"):
            raise CheckFailed(f"{self.container}: the dev portal has no joined gateway with external_id {fzid}: "
                              f"{records}")
        self.record = records[0]
        self.result["joined"] = True
        self.step(f"joined the dev portal as {self.record['id']} (FIREZONE_ID {fzid[:16]}...)")
        return self.record

    # --- cidr resource through the tunnel --------------------------------------------------
    def authorize(self, resource: dict[str, Any]) -> dict[str, Any]:
        body = {"gateway": self.record["id"], "protocol": "1.3", "client": self.lab.client_keys(), "resource": resource}
        status, flow = self.lab.api("POST", "/v1/flows", body)
        if status != 201 or flow.get("status") not in ("authorized", "sent"):
            raise CheckFailed(f"POST /v1/flows ({resource.get('type')} {resource.get('address')}): {status} {flow}")
        return flow

    def connect(self, flow: dict[str, Any], routes: list[str]) -> None:
        c = self.lab.client
        gw = flow["gateway"]
        for peer in sh(c, "wg", "show", "wg0", "peers").stdout.split():
            if peer != gw["public_key"]:
                sh(c, "wg", "set", "wg0", "peer", peer, "remove")
        routes = [*routes, f"{gw['ipv4']}/32"]
        sh(c, "wg", "set", "wg0", "peer", gw["public_key"], "preshared-key", "/etc/lab/wg/psk",
           "endpoint", f"{self.ip}:{gw['port']}", "allowed-ips", ",".join(routes), "persistent-keepalive", "25")
        for route in routes:
            sh(c, "ip", "route", "replace", route, "dev", "wg0")

    def handshake(self) -> int:
        out = sh(self.lab.client, "wg", "show", "wg0", "latest-handshakes").stdout.split()
        return int(out[1]) if len(out) >= 2 else 0

    def tunnel(self) -> None:
        net = self.lab.net
        resource = f"{net}.11"
        flow = self.authorize({"type": "cidr", "address": f"{resource}/32", "name": "e2e-cidr",
                               "filters": [{"protocol": "tcp", "port_range_start": 80, "port_range_end": 80},
                                           {"protocol": "icmp"}]})
        self.step(f"client authorized for cidr {resource}/32 tcp/80 (flow {flow['flow_id']}, {flow['status']})")
        self.connect(flow, [f"{resource}/32", "100.96.0.0/11"])
        code, out, _ = wait_for(lambda: (r := self.lab.curl(f"http://{resource}:80/"))[0] == 0 and r, 15,
                                f"HTTP to {resource}:80 through the tunnel")
        if out != f"allowed from {self.ip}":
            raise CheckFailed(f"HTTP {resource}:80 answered {out!r}, expected 'allowed from {self.ip}' "
                              "(the request must arrive through the gateway's masquerade)")
        self.step(f"HTTP {resource}:80 through the tunnel: {out!r}")
        if self.handshake() <= 0:
            raise CheckFailed("no WireGuard handshake with the gateway")
        self.step("WireGuard handshake completed")
        code, out, took = self.lab.curl(f"http://{resource}:8000/", timeout=5)
        if code == 0:
            raise CheckFailed(f"the filtered port {resource}:8000 answered through the tunnel: {out!r}")
        if code != 7:
            raise CheckFailed(f"the filtered port {resource}:8000 was not refused "
                              f"(curl exit {code} after {took:.1f} s: {out})")
        self.step(f"HTTP {resource}:8000 (filtered) refused in {took:.2f} s: {out}")
        self.result["tunnel"] = True

    # --- DNS resource: TTL with the flag on, the fixed legacy time with it off --------------
    def reauthorize_and_fetch(self, flow: dict[str, Any], proxy: str) -> str:
        before = self.resolutions()
        status, data = self.lab.api("POST", f"/v1/flows/{flow['flow_id']}/reauthorize")
        if status != 200:
            raise CheckFailed(f"reauthorize: {status} {data}")
        wait_for(lambda: self.resolutions() > before, 12, "allow_access applied")
        code, out, _ = self.lab.curl(f"http://{proxy}/")
        if code != 0:
            raise CheckFailed(f"HTTP via the proxy IP {proxy}: curl exit {code}: {out}")
        return out.split(" from ")[0]

    def dns_case(self, flag: bool, name: str, ttl: int, hold: float, proxy: str) -> float:
        """Returns how long after the resolution the client first landed on the new address."""
        net = self.lab.net
        self.lab.set_flag(flag)
        wait_for(lambda: self.flag_state() == flag, 20, f"the gateway to see the flag {'on' if flag else 'off'}")
        self.lab.set_record(name, ttl, f"{net}.12")
        before = self.resolutions()
        posted = time.monotonic()
        flow = self.authorize({"type": "dns", "address": name, "name": name, "proxy_ips": [proxy]})
        wait_for(lambda: self.resolutions() > before, 12, "allow_access applied")
        acked = time.monotonic()
        code, out, _ = self.lab.curl(f"http://{proxy}/")
        if code != 0 or not out.startswith("old-address"):
            raise CheckFailed(f"{name} via {proxy}: expected old-address, got {code} {out!r}")
        self.lab.set_record(name, ttl, f"{net}.13")
        changed = time.monotonic()
        # Within the hold time: the gateway's cache answers, the client stays on the old address.
        if flag is False:
            time.sleep(max(0.0, acked + ttl + 1 - time.monotonic()))  # the record's own TTL passes
        body = self.reauthorize_and_fetch(flow, proxy)
        at = time.monotonic() - posted
        if at >= hold - 0.5:
            raise CheckFailed(f"too slow to test within the hold time ({at:.1f} s >= {hold} s)")
        if body != "old-address":
            raise CheckFailed(f"{at:.1f} s after the resolution (hold {hold} s) the client landed on {body}")
        self.step(f"{name}: record changed; {at:.1f} s after the resolution the client still lands on old-address")
        first_new = wait_for(lambda: self.reauthorize_and_fetch(flow, proxy) == "new-address"
                             and time.monotonic() - posted, hold + 20, "the new address after the hold time", 0.5)
        if first_new < hold - 0.5:
            raise CheckFailed(f"the new address came {first_new:.1f} s after the resolution, "
                              f"before the hold time {hold} s")
        self.step(f"{name}: new-address after {first_new:.1f} s (hold {hold} s, record changed at "
                  f"{changed - posted:.1f} s), after a re-authorization")
        return first_new

    def dns(self, ttl: int, legacy: int) -> None:
        self.result["dns_ttl_s"] = round(self.dns_case(True, "ttl.lab.test", ttl, ttl, "100.96.0.1"), 1)
        self.step(f"flag on: TTL {ttl} s honoured")
        self.result["dns_legacy_s"] = round(self.dns_case(False, "legacy.lab.test", 1, legacy, "100.96.0.2"), 1)
        self.step(f"flag off: the fixed {legacy} s rule held although the record's TTL is 1 s")
        self.result["dns"] = True

    def security(self) -> float:
        out = sh(self.container, "systemd-analyze", "security", "--no-pager", UNIT, check=False).stdout
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
        if not match:
            raise CheckFailed(f"systemd-analyze security printed no score: {out[-300:]}")
        self.result["security"] = float(match.group(1))
        return self.result["security"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--net", required=True, help="first three octets of the lab network, e.g. 10.89.61")
    parser.add_argument("--gateway", action="append", required=True)
    parser.add_argument("--no-tunnel", action="store_true", help="only check that the gateways joined")
    parser.add_argument("--dns", action="store_true", help="also the DNS TTL checks (about 25 s per gateway)")
    parser.add_argument("--ttl", type=int, default=8, help="TTL of ttl.lab.test (flag on)")
    parser.add_argument("--legacy", type=int, default=10, help="the gateway's FIREZONE_DNS_LEGACY_TTL (flag off)")
    parser.add_argument("--json", help="write the per-gateway results here")
    args = parser.parse_args()
    lab = Lab(args.lab, args.client, args.net)
    results, failed = [], False
    for container in args.gateway:
        say(f"== {container}")
        check = GatewayCheck(lab, container)
        try:
            check.joined()
            if args.no_tunnel:
                results.append(check.result)
                continue
            check.tunnel()
            if args.dns:
                check.dns(args.ttl, args.legacy)
        except (CheckFailed, subprocess.TimeoutExpired) as error:
            failed = True
            check.result["error"] = str(error)
            say(f"  [{container}] FAILED: {error}")
        try:
            check.security()
        except CheckFailed as error:
            check.result["error"] = check.result.get("error") or str(error)
        results.append(check.result)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
