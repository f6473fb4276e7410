#!/usr/bin/env python3
"""Data-plane checks of the e2e lab, driven from the controller with `podman exec` only
(every packet stays inside the containers and their podman network).

For each gateway container: the dev portal (on the lab host) shows it joined; the client is
authorized through the admin API; WireGuard handshake; HTTP to the allowed port of a cidr
resource works (and the lab sees the request from the gateway's address: it went through
the tunnel and the gateway's masquerade) while the filtered port is refused; with --dns, a
DNS resource follows the record TTL with the flag on and the fixed legacy time with it off.

With --ice (opt-in: the container demo passes it after `lab_up.py --relay --ice-client`; the
Molecule scenarios do not), the client reaches each gateway the way a real client does: over
ICE. tests/iceclient.py's agent (aioice, controlling) runs in the client container
(/opt/ice), its shim is wireguard-go's peer endpoint, and this script does the signalling
through the dev portal: the flow answer's `ice` and `relays`, the client's candidates
`POST /v1/flows/{id}/candidates`, the gateway's `GET` from there. Every check above then
runs through that ICE tunnel, and the result says which path it took: `path` from the
gateway's own /metrics (`firezone_gateway_ice_client_path{client_id,path}`), `pair` the
client's selected pair (local -> remote candidate types), `relay_bytes` the gateway's
`firezone_gateway_relay_bytes_total`.

Used by molecule/*/verify.yml and scripts/container_demo.py.
  labcheck.py --lab C --client C --net 10.89.61 --gateway C [--gateway C ...] [--dns] [--ice]
              [--json FILE]
Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

FLAG = "gateway-userspace-dns-a-aaaa-records"
UNIT = "firezone-gateway.service"
ICE_DIR = "/opt/ice"  # lab_up.py --ice-client: venv/ (aioice) and tests/ (tests/iceclient.py)
METRICS_URL = "http://127.0.0.1:8080/metrics"  # the role's firezone_gateway_health_check_addr
ICE_CONNECT_TIMEOUT = 30


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
    ice: bool = False
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


class IceAgent:
    """tests/iceclient.py's agent process in the client container, driven over `podman exec -i`.

    The client logic is the repository's one implementation (aioice as the controlling agent,
    the shim between its pair and wireguard-go); this side only writes its JSON-line commands
    and reads its events, as tests/iceclient.py's IceAgent does in the namespace tests.
    """

    def __init__(self, client: str, wg_port: int) -> None:
        argv = ["podman", "exec", "-i", "-w", ICE_DIR, "-e", f"PYTHONPATH={ICE_DIR}", client,
                f"{ICE_DIR}/venv/bin/python", "-m", "tests.iceclient", "--role", "controlling",
                "--interface", "eth0", "--no-ipv6", "--wg-port", str(wg_port)]
        self.popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, bufsize=1)
        self.events: list[dict[str, Any]] = []
        self.stderr: collections.deque[str] = collections.deque(maxlen=40)
        self.changed = threading.Condition()
        self.sessions = 0
        assert self.popen.stdout is not None and self.popen.stderr is not None
        for target, stream in ((self._read_events, self.popen.stdout), (self._read_stderr, self.popen.stderr)):
            threading.Thread(target=target, args=(stream,), daemon=True).start()
        self.shim_port: int = self.wait("ready", 30)["shim_port"]

    def _read_events(self, stream: IO[str]) -> None:
        for line in stream:
            with contextlib.suppress(ValueError), self.changed:
                self.events.append(json.loads(line))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            self.stderr.append(line.rstrip())

    def output(self) -> str:
        return "\n".join(self.stderr)

    def find(self, name: str, session: int | None = None) -> dict[str, Any] | None:
        with self.changed:
            for event in reversed(self.events):
                if event.get("event") == name and (session is None or event.get("session") == session):
                    return event
        return None

    def wait(self, name: str, timeout: float, session: int | None = None) -> dict[str, Any]:
        found = self.poll(name, timeout, session)
        if found is None:
            raise CheckFailed(f"ICE agent: no {name!r} event within {timeout:g} s")
        return found

    def poll(self, name: str, timeout: float, session: int | None = None) -> dict[str, Any] | None:
        """The event once it came (None after `timeout`); a failed/closed session or the agent gone raise."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = self.find(name, session)
                if found is not None:
                    return found
                ended = [e for e in self.events if e.get("event") in ("failed", "closed", "stale")
                         and (session is None or e.get("session") == session)]
                if ended:
                    raise CheckFailed(f"ICE agent: {ended[-1]} while waiting for {name!r}")
                if self.popen.poll() is not None:
                    raise CheckFailed(f"ICE agent exited ({self.popen.returncode}) while waiting for {name!r}: "
                                      f"{self.output()[-1500:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(min(left, 0.5))

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(cmd) + "\n")
        self.popen.stdin.flush()

    def session(self, local: dict[str, str], remote: dict[str, str], turn: dict[str, str] | None, stun: str | None,
                direct_grace: float) -> int:
        self.sessions += 1
        self.send({"cmd": "session", "local": local, "remote": remote, "turn": turn, "stun": stun,
                   "direct_grace": direct_grace})
        return self.sessions

    def stop(self) -> None:
        """quit + EOF: aioice closes (its TURN allocation is deleted) and the agent exits 0."""
        if self.popen.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send({"cmd": "quit"})
            with contextlib.suppress(OSError, ValueError):
                self.popen.stdin.close()  # type: ignore[union-attr]
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()  # podman exec, by its PID; the agent then sees EOF too
                self.popen.wait(5)


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    samples = []
    for line in text.splitlines():
        match = re.match(r"^(\w+)(\{[^}]*\})?\s+(\S+)$", line)
        if match and match.group(1) == name:
            samples.append((dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")), float(match.group(3))))
    return samples


def container_ip(container: str) -> str:
    out = podman("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", container).stdout
    return out.split()[0]


class GatewayCheck:
    def __init__(self, lab: Lab, container: str) -> None:
        self.lab = lab
        self.container = container
        self.ip = container_ip(container)
        self.result: dict[str, Any] = {"gateway": container, "address": self.ip}
        self.agent: IceAgent | None = None
        self.client_id: str | None = None

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
        endpoint = f"{self.ip}:{gw['port']}"
        if self.lab.ice:
            # wireguard-go's datagrams go to the shim, which sends them over the ICE pair;
            # what arrives on the pair comes back to wg0's listen port.
            port = int(sh(c, "wg", "show", "wg0", "listen-port").stdout.strip())
            self.agent = IceAgent(c, port)
            endpoint = f"127.0.0.1:{self.agent.shim_port}"
        routes = [*routes, f"{gw['ipv4']}/32"]
        sh(c, "wg", "set", "wg0", "peer", gw["public_key"], "preshared-key", "/etc/lab/wg/psk",
           "endpoint", endpoint, "allowed-ips", ",".join(routes), "persistent-keepalive", "25")
        for route in routes:
            sh(c, "ip", "route", "replace", route, "dev", "wg0")
        if self.agent is not None:
            self.ice(flow)

    # --- ICE: signalling through the dev portal, as a real client does through the portal ----
    def ice(self, flow: dict[str, Any]) -> None:
        assert self.agent is not None
        ice, flow_id = flow.get("ice") or {}, flow["flow_id"]
        if not (ice.get("client") and ice.get("gateway")):
            raise CheckFailed(f"the flow answer has no ICE credentials for both sides: {ice}")
        turn = stun = None
        for relay in flow.get("relays") or []:
            for addr in relay.get("addrs", []):
                if not addr.startswith("[") and turn is None:
                    turn = {"server": addr, "username": relay["username"], "password": relay["password"]}
                    stun = addr
        if turn is None:
            raise CheckFailed(f"the flow answer lists no IPv4 relay (portal without --relay?): {flow.get('relays')}")
        started = time.monotonic()
        # direct_grace: checks over the relay start 1 s late, so a direct path wins where one exists.
        session = self.agent.session(ice["client"], ice["gateway"], turn, stun, direct_grace=1.0)
        gathered = self.agent.wait("gathered", 15, session)
        status, body = self.lab.api("POST", f"/v1/flows/{flow_id}/candidates", {"candidates": gathered["candidates"]})
        if status != 202:
            raise CheckFailed(f"POST /v1/flows/{flow_id}/candidates: {status} {body}")
        self.step(f"ICE: client candidates {', '.join(gathered['types'])} sent (relay {turn['server']})")
        seen: list[str] = []
        deadline = started + ICE_CONNECT_TIMEOUT
        while self.agent.find("connected", session) is None:
            if time.monotonic() > deadline:
                raise CheckFailed(f"ICE: no pair nominated within {ICE_CONNECT_TIMEOUT} s (gateway candidates "
                                  f"{seen}); agent log: {self.agent.output()[-1500:]}")
            status, body = self.lab.api("GET", f"/v1/flows/{flow_id}/candidates?wait=2")
            if status != 200:
                raise CheckFailed(f"GET /v1/flows/{flow_id}/candidates: {status} {body}")
            new = [c for c in body.get("candidates", []) if c not in seen]
            if new:
                seen += new
                self.agent.send({"cmd": "remote", "candidates": new, "end": False})
            self.agent.poll("connected", 0.5, session)  # a short wait for the pair; the loop decides
        pair = self.agent.wait("connected", 1, session)
        kinds = sorted({c.split(" typ ")[1].split()[0] for c in seen if " typ " in c})
        self.result["pair"] = f"{pair['local']['type']} -> {pair['remote']['type']}"
        self.step(f"ICE: gateway candidates {', '.join(kinds)}; nominated {self.result['pair']} "
                  f"({pair['local']['host']}:{pair['local']['port']} -> "
                  f"{pair['remote']['host']}:{pair['remote']['port']}) in {time.monotonic() - started:.1f} s")

    def metrics(self) -> str:
        return sh(self.container, "python3", "-c",
                  "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5)"
                  ".read().decode())", METRICS_URL, timeout=20).stdout

    def ice_path(self) -> str:
        """The path of this client's tunnel by the gateway's own /metrics; relay bytes beside it."""
        text = self.metrics()
        paths = sorted(labels.get("path", "?") for labels, value in
                       metric_samples(text, "firezone_gateway_ice_client_path")
                       if labels.get("client_id") == self.client_id and value == 1)
        relay_bytes = {labels.get("direction"): int(value) for labels, value in
                       metric_samples(text, "firezone_gateway_relay_bytes_total")}
        self.result["relay_bytes"] = relay_bytes
        path = "+".join(paths) or "none"
        if self.result.get("path") not in (None, path):
            path = f"{self.result['path']} then {path}"
        self.result["path"] = path
        return path

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
        self.client_id = flow.get("client_id")
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
        if self.agent is not None:
            self.step(f"path by the gateway's /metrics: {self.ice_path()} "
                      f"(relayed WireGuard bytes in/out {self.result['relay_bytes']})")
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

    def close(self) -> None:
        """After this gateway's checks: the path once more (it carried them all), the agent stopped."""
        if self.agent is None:
            return
        try:
            if self.result.get("tunnel"):
                self.ice_path()
        except (CheckFailed, subprocess.TimeoutExpired) as error:
            self.result["error"] = self.result.get("error") or str(error)
        finally:
            self.agent.stop()
            self.agent = None


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
    parser.add_argument("--ice", action="store_true",
                        help="reach each gateway over ICE with the aioice agent of lab_up.py --ice-client "
                             "(needs the portal's relay: lab_up.py --relay)")
    parser.add_argument("--json", help="write the per-gateway results here")
    args = parser.parse_args()
    lab = Lab(args.lab, args.client, args.net, ice=args.ice)
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
        finally:
            check.close()
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
