#!/usr/bin/env python3
"""What a client notices when its gateway restarts, measured from the client container.

- `Prober`: `ping -D -n -i 0.2 TARGET` in the client container, in the background (its PID in
  a file there, ended by that PID). TARGET is a cidr resource the client reaches only through
  wg0 (labcheck.py's routes), so each reply went through the tunnel and the gateway. `ping -D`
  stamps each reply with the wall clock, which every container shares with the host's kernel.
- `Reconnect`: the client's control plane. A gateway process makes a new WireGuard key at
  every start (as upstream), so after a restart the client's peer holds a key nobody answers
  to, and the new process has no peer for the client. The dev portal does nothing about it on
  the gateway's rejoin (its `init` lists only the authorizations' client and resource IDs,
  which a fresh process cannot turn into a peer), and neither does the real portal: a real
  client asks for the resource again once its connection is gone (the goodbye on SIGTERM, or
  its ICE timeout), the portal sends `authorize_flow` to the gateway and the client the
  gateway's new key. This does the same at the earliest moment a client could: a poller in
  the lab host watches the portal's record of the gateway (every 0.1 s, one `podman exec`),
  and when it is joined with a key other than the one of wg0's peer, the flow is requested
  again (POST /v1/flows, protocol 1.4: `authorize_flow`) and wg0's peer points at the new key.
  Nothing else is done for the client: without the new flow, traffic would not come back.

Script form (the default scenario's verify):
  outage.py kill --lab C --client C --net N --gateway C
    with the client pinging the cidr resource through the gateway: `systemctl kill -s KILL
    firezone-gateway`; the gap from the kill to the first reply through the tunnel must be at
    most the unit's RestartSec (`systemctl show -P RestartUSec`) + 5 s. Prints the gap and its
    parts (restarted, rejoined with a new key, re-authorized, first reply).
Python API (molecule/shared/fleetcheck.py): `ensure_tunnel`, `Prober`, `Reconnect`, `planned_gap`.

Exit status 0 when the check held, 1 when not.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys
import threading
import time
from typing import Any

from labcheck import CheckFailed, GatewayCheck, Lab, say, sh, wait_for

UNIT = "firezone-gateway.service"
INTERVAL = 0.2  # the prober's ping interval, s
PLANNED_LIMIT = 5.0  # a planned restart's longest client-visible gap, s
KILL_MARGIN = 5.0  # SIGKILL: traffic back within RestartSec + this

# Runs in the lab host: prints one JSON line whenever the portal's record of the gateway
# (connected, joined, public key) changes; ends at EOF on its stdin.
POLLER = r"""
import json, select, sys, time, urllib.request
url, fzid = sys.argv[1], sys.argv[2]
name, _, value = open("/opt/lab/admin-header").read().strip().partition(": ")
last = None
while True:
    try:
        req = urllib.request.Request(url + "/v1/gateways", headers={name: value})
        rec = next((g for g in json.load(urllib.request.urlopen(req, timeout=2)) if g["external_id"] == fzid), None)
        now = None if rec is None else (rec["id"], rec["connected"], rec["joined"], rec["public_key"], rec["ipv4"])
    except Exception as exc:
        now = ("error", str(exc))
    if now != last:
        last = now
        print(json.dumps({"t": time.time(), "record": now}), flush=True)
    if select.select([sys.stdin], [], [], 0.1)[0] and not sys.stdin.readline():
        break
"""


def restart_sec(container: str) -> float:
    """The unit's RestartSec in seconds, from `systemctl show -P RestartUSec` ("7s", "1min 30s", "500ms")."""
    text = sh(container, "systemctl", "show", "-P", "RestartUSec", UNIT).stdout.strip()
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
    parts = re.findall(r"([\d.]+)(us|ms|s|min|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise CheckFailed(f"cannot read RestartUSec of {UNIT} in {container}: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def unit_state(container: str) -> dict[str, str]:
    out = sh(container, "systemctl", "show", "-p", "MainPID,NRestarts,ExecMainStartTimestampMonotonic,ActiveState",
             UNIT).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def monotonic_to_wall(usec: str) -> float:
    """A CLOCK_MONOTONIC stamp of the container (the host's kernel: same clock) as wall time."""
    return time.time() - time.monotonic() + int(usec) / 1e6


def cidr_flow(lab: Lab, gateway_id: str, address: str) -> dict[str, Any] | None:
    status, flows = lab.api("GET", "/v1/flows")
    if status != 200:
        raise CheckFailed(f"GET /v1/flows: {status} {flows}")
    mine = [f for f in flows if f["gateway_id"] == gateway_id and f["resource"].get("type") == "cidr"
            and f["resource"].get("address") == f"{address}/32"]
    return mine[-1] if mine else None


def ensure_tunnel(lab: Lab, container: str) -> tuple[GatewayCheck, dict[str, Any], bool]:
    """The client's flow through `container` to the cidr resource NET.11 (labcheck's tunnel check
    when there is none yet); returns the check, that flow's resource, and whether pings pass now."""
    check = GatewayCheck(lab, container)
    record = check.joined()
    target = f"{lab.net}.11"
    flow = cidr_flow(lab, record["id"], target)
    if flow is None:
        check.tunnel()
        flow = cidr_flow(lab, record["id"], target)
    # A flow from before a restart: `Reconnect` asks for it again (labcheck's 1.3 request
    # would reuse the client's ICE session, and the dev portal then sends `allow_access`,
    # which a restarted gateway, knowing no such client, cannot act on).
    alive = sh(lab.client, "ping", "-q", "-c", "2", "-i", "0.2", "-W", "1", target, check=False).returncode == 0
    if flow is None:
        raise CheckFailed(f"no cidr flow for {target}/32 on {container} in the dev portal")
    return check, flow["resource"], alive


class Prober:
    """ping -D through the tunnel, in the client container; `replies()` are the reply times."""

    def __init__(self, lab: Lab, target: str, tag: str) -> None:
        self.lab, self.target = lab, target
        self.log, self.pidfile = f"/run/e2e-probe-{tag}.log", f"/run/e2e-probe-{tag}.pid"

    def start(self) -> None:
        sh(self.lab.client, "sh", "-c",
           f"ping -D -n -i {INTERVAL} {self.target} > {self.log} 2>&1 & echo $! > {self.pidfile}")
        wait_for(lambda: len(self.replies()) >= 3, 15, f"3 ping replies from {self.target} through the tunnel", 0.2)

    def replies(self) -> list[float]:
        out = sh(self.lab.client, "cat", self.log, check=False).stdout
        return [float(m) for m in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]

    def stop(self) -> None:
        sh(self.lab.client, "sh", "-c", f"kill $(cat {self.pidfile}) && rm -f {self.pidfile}", check=False)

    def first_after(self, since: float, timeout: float) -> float | None:
        try:
            return wait_for(lambda: next((t for t in self.replies() if t > since), None), timeout,
                            "a reply through the tunnel", 0.15)
        except CheckFailed:
            return None


def longest_gap(replies: list[float], start: float, end: float) -> tuple[float, float]:
    """The longest time without a reply within [start, end] and where it began."""
    points = [start, *[t for t in replies if start < t < end], end]
    gaps = [(b - a, a) for a, b in itertools.pairwise(points)]
    return max(gaps)


class Reconnect:
    """The client asks for the flow again when the gateway rejoined with a new key (see the module doc)."""

    def __init__(self, lab: Lab, check: GatewayCheck, resource: dict[str, Any], force: bool = False) -> None:
        self.lab, self.check, self.resource = lab, check, resource
        fzid = sh(check.container, "cat", "/var/lib/firezone/gateway_id").stdout.strip()
        # force: the flow is asked for at once (the tunnel does not pass now).
        self.peer_key = "" if force else (sh(lab.client, "wg", "show", "wg0", "peers").stdout.split() or [""])[0]
        self.events: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.poller = subprocess.Popen(["podman", "exec", "-i", lab.lab, "python3", "-u", "-c", POLLER, lab.portal,
                                        fzid], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def note(self, what: str, at: float | None = None) -> None:
        with self.lock:
            self.events.append((time.time() if at is None else at, what))

    def _run(self) -> None:
        assert self.poller.stdout is not None
        for line in self.poller.stdout:
            event = json.loads(line)
            record = event["record"]
            if record is None or record[0] == "error":
                self.note(f"portal: {record}", event["t"])
                continue
            gateway_id, connected, joined, key, ipv4 = record
            self.note(f"portal: connected={connected} joined={joined} key={key[:8]}", event["t"])
            if joined and key != self.peer_key:
                try:
                    self._reauthorize(gateway_id, key, ipv4)
                except (CheckFailed, subprocess.TimeoutExpired) as error:
                    self.errors.append(str(error))

    def _reauthorize(self, gateway_id: str, key: str, ipv4: str) -> None:
        status, flow = self.lab.api("POST", "/v1/flows", {"gateway": gateway_id, "protocol": "1.4",
                                                          "client": self.lab.client_keys(), "resource": self.resource})
        if status != 201 or flow.get("status") != "authorized":
            raise CheckFailed(f"the client's new flow request: {status} {flow}")
        self.note(f"flow requested again: {flow['event']} {flow['status']}")
        gw = flow["gateway"]
        if gw["public_key"] != key:
            raise CheckFailed(f"the flow answer's key {gw['public_key'][:8]} is not the portal's {key[:8]}")
        routes = ",".join([self.resource["address"], "100.96.0.0/11", f"{ipv4}/32"])
        sh(self.lab.client, "sh", "-c",
           (f"wg set wg0 peer '{self.peer_key}' remove; " if self.peer_key else "")
           + f"wg set wg0 peer '{key}' preshared-key /etc/lab/wg/psk endpoint {self.check.ip}:{gw['port']} "
           f"allowed-ips {routes} persistent-keepalive 25")
        self.peer_key = key
        self.note(f"wg0 peer -> {key[:8]}")

    def first(self, prefix: str, since: float) -> float | None:
        with self.lock:
            return next((t for t, what in self.events if t >= since and what.startswith(prefix)), None)

    def stop(self) -> None:
        if self.poller.poll() is None:
            assert self.poller.stdin is not None
            self.poller.stdin.close()  # the poller ends at EOF
            try:
                self.poller.wait(10)
            except subprocess.TimeoutExpired:
                self.poller.kill()  # our podman exec, by its PID
                self.poller.wait(5)
        self.thread.join(5)


def planned_gap(prober: Prober, start: float, end: float, what: str) -> float:
    """After a planned restart between start and end: wait for replies to resume, return the longest gap."""
    back = prober.first_after(end, 20)
    if back is None:
        raise CheckFailed(f"{what}: no reply through the tunnel within 20 s after it ended")
    gap, at = longest_gap(prober.replies(), start, back + 0.01)
    say(f"   {what}: longest client-visible gap {gap:.2f} s (from {at - start:.1f} s into the run; "
        f"ping every {INTERVAL} s, limit {PLANNED_LIMIT:g} s)")
    return gap


def kill(lab: Lab, container: str) -> int:
    say(f"== SIGKILL of {container}'s gateway under systemd, the client pinging {lab.net}.11 through it")
    check, resource, alive = ensure_tunnel(lab, container)
    limit = restart_sec(container) + KILL_MARGIN
    prober = Prober(lab, f"{lab.net}.11", "kill")
    reconnect = Reconnect(lab, check, resource, force=not alive)
    try:
        prober.start()
        before = unit_state(container)
        old_key = reconnect.peer_key
        out = sh(container, "sh", "-c", f"date +%s.%N; systemctl kill -s KILL {UNIT}").stdout.split()
        killed = float(out[0])
        back = prober.first_after(killed, limit + 20)
        after = unit_state(container)
    finally:
        prober.stop()
        reconnect.stop()
    if reconnect.errors:
        raise CheckFailed(f"the client's reconnect failed: {reconnect.errors}")
    if after["MainPID"] in ("0", before["MainPID"]) or int(after["NRestarts"]) != int(before["NRestarts"]) + 1:
        raise CheckFailed(f"systemd did not restart the gateway once: {before} -> {after}")
    restarted = monotonic_to_wall(after["ExecMainStartTimestampMonotonic"]) - killed
    rejoined = reconnect.first("portal: connected=True joined=True", killed)
    authorized = reconnect.first("wg0 peer ->", killed)
    parts = [f"restarted by systemd after {restarted:.2f} s (MainPID {before['MainPID']} -> {after['MainPID']}, "
             f"NRestarts {after['NRestarts']})"]
    if rejoined is not None:
        parts.append(f"rejoined the portal with a new WireGuard key after {rejoined - killed:.2f} s "
                     f"({old_key[:8]}... -> {reconnect.peer_key[:8]}...)")
    if authorized is not None:
        parts.append(f"the client's flow authorized again and wg0 on the new key after {authorized - killed:.2f} s")
    for part in parts:
        say(f"   {part}")
    if back is None:
        raise CheckFailed(f"no reply through the tunnel within {limit + 20:g} s of the kill")
    gap = back - killed
    resumed_alone = authorized is None or back < authorized
    say(f"   first reply through the tunnel {gap:.2f} s after the kill (limit RestartSec + {KILL_MARGIN:g} s = "
        f"{limit:g} s); before the client's new flow: {'a reply came' if resumed_alone else 'no reply'}")
    series = [line for line in check.metrics().splitlines()
              if re.match(r"firezone_gateway_(dropped_packets_total|wireguard_handshakes_total|active_peers)", line)]
    say(f"   the new process's /metrics (the old tunnel's datagrams it refused, its handshakes): {'; '.join(series)}")
    if gap > limit:
        raise CheckFailed(f"traffic came back {gap:.2f} s after the SIGKILL, more than RestartSec + "
                          f"{KILL_MARGIN:g} s = {limit:g} s")
    say(f"SIGKILL: traffic back after {gap:.2f} s (limit {limit:g} s)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["kill"])
    parser.add_argument("--lab", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--net", required=True)
    parser.add_argument("--gateway", required=True)
    args = parser.parse_args()
    try:
        return kill(Lab(args.lab, args.client, args.net), args.gateway)
    except (CheckFailed, subprocess.TimeoutExpired) as error:
        say(f"FAILED: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
