"""NAT traversal side by side: the direct path of today, ICE direct and ICE relayed, one run.

    sudo .venv/bin/python bench/bench_ice.py [--seconds N] [--setups N] [--rounds R] [--quick] [--force]

Two NAT labs (tests/natlab.py) are up at once, each with coturn in its public segment, the
dev portal with that relay (`--relay`, `--turn-secret-file`) and our gateway (INFO logging):

  lab A: gateway_nat="none" (the gateway's UDP 52625 reachable), the client behind a symmetric NAT
    (a) direct, no ICE: a stock wireguard-go client whose endpoint is the gateway's address and
        UDP port, as clients reach a gateway today;
    (b) ICE direct: a wireguard-go client riding an aioice pair through the shim of
        tests/iceclient.py (`IceWireGuardClient`); aioice nominates a host/srflx pair;
  lab C: both NATs symmetric
    (c) ICE relayed: the same kind of client; the only paths go through coturn.

Throughput, in the order a b c c b a per round (drift hits every column alike): ping (50 at
0.05 s, idle), iperf3 TCP client -> resource and `-R`, and the highest UDP rate with at most
1 % loss (`-l 1200`, 1 s trials: doubling or halving from 50 Mbit/s, then bisecting), then
UDP at a fixed 25 Mbit/s that every path carries. CPU seconds per GB of iperf3 payload
during the TCP runs and the fixed-rate run, from /proc/<pid>/stat (utime + stime, all
threads) of our gateway, the client's aioice shim, coturn and the client's wireguard-go. The
fixed rate compares per-GB costs at the same load: a slower path batches less and spreads
fixed costs over fewer bytes, so per-GB figures at each path's own top speed mix the two.

Set-up time: from `POST /v1/flows` (the portal sends authorize_flow and waits for the
gateway's reply) to the first ICMP echo reply through the tunnel, seen by a `ping -D -i 0.002`
that runs from before the POST. Each set-up is new throughout: fresh WireGuard keys and
tunnel address (so a new client for the gateway), fresh ICE credentials, a fresh wireguard-go
peer, and for ICE a fresh aioice agent process (started before the clock starts, so its
Python start-up is not counted) whose session gathers anew (STUN, TURN Allocate). Between
set-ups the flow is deleted and the gateway is seen to drop the client. Set-ups of a, b and c
are interleaved.

The aioice shim carries every datagram of (b) and (c) in Python on the client side, so their
throughput and latency include the shim's cost: the shim's own CPU per GB is a row of its own.
Ratios are against (a). They are withheld when the 1-minute load average exceeds 0.5 at the
start, unless `--force` (then printed with a warning). Needs root, iperf3, ping, wireguard-go,
wg, turnserver (coturn) and aioice in the venv.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from common import (  # noqa: E402
    IPERF_PORT,
    LoadGate,
    cpu_seconds,
    highest_rate,
    in_netns,
    iperf_idle,
    loadavg,
    parse_ping,
)

# tests.iceclient (aioice) is imported where it is used, so a venv without aioice gets the
# one-line message of cannot_run() instead of a traceback.
from tests.lab import LAB_TOKEN, Lab  # noqa: E402
from tests.natlab import NatLab  # noqa: E402
from tests.netlab import sh  # noqa: E402
from tests.procs import DevPortalProc, base_env, wait_for  # noqa: E402

TURN_SECRET = "bench-ice-turn-secret"
RESOURCE_NET = "198.18.2.0/24"
UDP_LEN = 1200  # + 28 bytes of IP/UDP headers fits MTU 1280
UDP_MAX_LOSS = 1.0  # percent
UDP_TRIAL_SECONDS = 1
UDP_START_MBPS = 50.0
UDP_MAX_MBPS = 3200.0
UDP_MIN_MBPS = 3.0
FIXED_MBPS = 25.0  # a UDP rate every path carries: CPU per GB at the same load
PING_COUNT = 50
PING_INTERVAL = 0.05
SETUP_PING_INTERVAL = 0.002  # root may ping this fast: 2 ms is the resolution of (a)'s set-up
ROLES = ("gateway", "shim", "relay", "client wg-go")


def cannot_run() -> str | None:
    """Why this benchmark cannot run here (one line), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces): sudo .venv/bin/python bench/bench_ice.py"
    for tool in ("ip", "iptables", "ip6tables", "wireguard-go", "wg", "turnserver", "iperf3", "ping"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (run `make deps`)"
    try:
        import aioice  # noqa: F401
    except ImportError:
        return "aioice is not installed in the venv (run `make venv`)"
    return None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# ==========================================================================================
# One lab: NatLab + coturn + dev portal with the relay + our gateway + an iperf3 server
# ==========================================================================================

class Site:
    def __init__(self, workdir: Path, name: str, gateway_nat: str, client_nat: str, tag: str) -> None:
        self.name = name
        self.workdir = workdir / name
        self.workdir.mkdir()
        self.net = NatLab(self.workdir, tag=tag, gateway_nat=gateway_nat, client_nat=client_nat)
        self.portal: Any = None     # DevPortalProc, once up()
        self.lab: Any = None        # tests.lab.Lab, once up()
        self.coturn: Any = None     # tests.coturn.Coturn, started by the NatLab
        self.gateway: Any = None    # tests.procs.Proc of our gateway
        self.ice_clients: list[Any] = []  # tests.iceclient.IceWireGuardClient

    def up(self) -> None:
        self.net.up()
        self.coturn = self.net.start_coturn(extra=[f"--static-auth-secret={TURN_SECRET}"])
        secret = self.workdir / "turn-secret"
        secret.write_text(TURN_SECRET + "\n")
        self.portal = DevPortalProc(self.workdir, host=self.net.MGMT_ROOT, gateway_token=LAB_TOKEN,
                                    extra=["--relay", ",".join(self.net.relay_addrs()),
                                           "--turn-secret-file", str(secret)])
        self.lab = Lab(self.net, self.portal)
        # INFO logging so the hot path runs as in production; ready means a relay is allocated.
        self.gateway = self.lab.start_gateway({"RUST_LOG": "info"})
        rs = self.net.ns["resource"]
        self.net.spawn("resource", ["iperf3", "-s", "-B", self.net.RESOURCE, "-p", str(IPERF_PORT)], base_env(),
                       "iperf3-server")
        wait_for(lambda: f"{self.net.RESOURCE}:{IPERF_PORT}" in sh("ss", "-ltn", ns=rs), 10, "iperf3 server")

    def iperf_idle(self) -> bool:
        return iperf_idle(self.net.ns["resource"])

    def flow(self, client: dict[str, Any]) -> dict[str, Any]:
        body = {"gateway": self.lab.gateway_record()["id"], "protocol": "1.4", "client": client,
                "resource": {"type": "cidr", "address": RESOURCE_NET, "filters": []}}
        status, answer = self.portal.api("POST", "/v1/flows", body)
        if status != 201 or answer.get("status") != "authorized":
            raise RuntimeError(f"POST /v1/flows on lab {self.name}: {status} {answer}")
        return dict(answer)

    def metric(self, name: str) -> float:
        total = 0.0
        for line in self.lab.metrics().splitlines():
            match = re.match(r"^(\w+)(\{[^}]*\})?\s+(\S+)$", line)
            if match is not None and match.group(1) == name:
                total += float(match.group(3))
        return total

    def client_run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return in_netns(self.net.ns["client"], argv, timeout)

    def down(self) -> None:
        for client in self.ice_clients:
            try:
                client.stop()
            except Exception as exc:  # keep cleaning up
                print(f"  lab {self.name}: stopping an ICE client: {exc}", file=sys.stderr)
        if self.portal is not None:
            self.portal.stop()
        self.net.down()  # every process of the lab by PID (coturn too), then namespaces and links

    def leftovers(self) -> list[str]:
        return list(self.net.leftovers()) if self.net.ns else []


def pick_tags(count: int) -> list[str]:
    """Lab tags whose management /30s (198.19.<tag % 250>.0) no root-namespace address uses."""
    used = {int(m) for m in re.findall(r"inet 198\.19\.(\d+)\.", sh("ip", "-o", "-4", "addr", "show"))}
    tags: list[str] = []
    while len(tags) < count:
        tag = secrets.token_hex(2)
        subnet = int(tag, 16) % 250
        if subnet not in used:
            used.add(subnet)
            tags.append(tag)
    return tags


# ==========================================================================================
# Throughput paths
# ==========================================================================================

@dataclass
class Scenario:
    key: str
    label: str
    site: Site
    src: str
    ifname: str
    pids: dict[str, int]
    pair: str = "-"
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float | None) -> None:
        if value is not None:
            self.samples.setdefault(name, []).append(value)

    def cpu(self) -> dict[str, float]:
        return {role: cpu_seconds(pid) for role, pid in self.pids.items()}


def describe(pair: dict[str, Any]) -> str:
    local, remote = pair["local"], pair["remote"]
    return f"{local['type']} {local['host']}:{local['port']} -> {remote['type']} {remote['host']}:{remote['port']}"


def relayed(pair: dict[str, Any]) -> bool:
    return "relay" in (pair["local"]["type"], pair["remote"]["type"])


class Throughput:
    def __init__(self, seconds: int, bisect_steps: int) -> None:
        self.seconds = seconds
        self.fixed_seconds = max(2, seconds - 1)
        self.bisect_steps = bisect_steps
        self.scenarios: dict[str, Scenario] = {}
        self.clients: dict[str, Any] = {}
        self.notes: dict[str, str] = {}

    def add_direct(self, site: Site) -> None:
        """(a): stock wireguard-go straight to the gateway's UDP port."""
        from tests.iceclient import ice_credentials, new_wireguard

        wg = new_wireguard(site.net, "client", ipv4="100.64.0.2", ipv6="fd00:2021:1111::2",
                           ifname=f"wga{site.net.tag}")
        wg.listen_port = 51830
        wg.start()
        flow = site.flow(wg.flow_client() | {"ice": ice_credentials()})
        gw = flow["gateway"]
        wg.connect(gw["public_key"], f"{NatLab.GATEWAY_OUTER}:{gw['port']}", [RESOURCE_NET, f"{gw['ipv4']}/32"])
        assert wg.proc is not None and site.coturn is not None
        self.scenarios["a"] = Scenario("a", "direct, no ICE", site, wg.ipv4, wg.ifname,
                                       {"gateway": site.gateway.pid, "relay": site.coturn.pid,
                                        "client wg-go": wg.proc.pid},
                                       pair=f"wireguard-go -> {NatLab.GATEWAY_OUTER}:{gw['port']}")

    def add_ice(self, key: str, label: str, site: Site, ipv4: str, ipv6: str, want_relay: bool) -> None:
        """(b), (c): wireguard-go riding an aioice pair (tests/iceclient.py), signalled via the portal."""
        from tests.iceclient import IceWireGuardClient, ice_credentials, new_wireguard

        wg = new_wireguard(site.net, "client", ipv4=ipv4, ipv6=ipv6, ifname=f"wg{key}{site.net.tag}")
        wg.start()
        client_body = wg.flow_client() | {"ice": ice_credentials()}
        flow = site.flow(client_body)

        def renew() -> dict[str, Any]:  # a restarted client: a new ICE session
            client_body["ice"] = ice_credentials()
            return site.flow(client_body)

        client = IceWireGuardClient(site.net, flow, site.portal, relay=True, wg=wg, routes=[RESOURCE_NET],
                                    renew=renew, watchdog=5.0, direct_grace=1.0)
        site.ice_clients.append(client)
        client.start()
        pair = client.wait_connected(30)
        if relayed(pair) != want_relay:
            raise RuntimeError(f"({key}) wanted a {'relayed' if want_relay else 'direct'} pair, "
                               f"aioice nominated {describe(pair)}")
        assert client.agent is not None and wg.proc is not None and site.coturn is not None
        self.scenarios[key] = Scenario(key, label, site, ipv4, wg.ifname,
                                       {"gateway": site.gateway.pid, "shim": client.agent.pid,
                                        "relay": site.coturn.pid, "client wg-go": wg.proc.pid},
                                       pair=describe(pair))
        self.clients[key] = client

    def note_restarts(self) -> None:
        """ICE sessions the clients had to start again (their watchdog saw the pair go quiet)."""
        for key, client in self.clients.items():
            if client.restarts or client.errors:
                self.notes[key] = f"; ICE restarted {client.restarts}x, signalling errors: {client.errors[-3:]}"

    # --- measurements ---------------------------------------------------------------------

    def use(self, sc: Scenario) -> None:
        """The resource prefix to this scenario's interface; a ping proves the path."""

        sh("ip", "route", "replace", RESOURCE_NET, "dev", sc.ifname, ns=sc.site.net.ns["client"])
        wait_for(lambda: sc.site.client_run(["ping", "-n", "-c", "1", "-W", "1", "-I", sc.src, sc.site.net.RESOURCE],
                                            timeout=5).returncode == 0, 30, f"ping through ({sc.key})")

    def iperf(self, sc: Scenario, extra: list[str], seconds: float) -> dict[str, Any]:
        argv = ["iperf3", "-c", sc.site.net.RESOURCE, "-p", str(IPERF_PORT), "-B", sc.src, "-J",
                "-t", str(seconds), *extra]
        result: dict[str, Any] = {}
        for _attempt in range(3):
            wait_for(sc.site.iperf_idle, 15, "the previous iperf3 test to close")
            done = sc.site.client_run(argv, timeout=seconds + 30)
            try:
                result = json.loads(done.stdout)
            except ValueError:
                result = {"error": done.stderr.strip() or "no output"}
            if "error" not in result:
                return result
        raise RuntimeError(f"iperf3 through ({sc.key}) failed: {result['error']}")

    def ping(self, sc: Scenario) -> None:
        done = sc.site.client_run(["ping", "-n", "-q", "-c", str(PING_COUNT), "-i", str(PING_INTERVAL), "-I", sc.src,
                                   sc.site.net.RESOURCE], timeout=PING_COUNT * PING_INTERVAL + 15)
        ping = parse_ping(done.stdout)
        if ping is None:
            print(f"  ({sc.key}) ping failed: {done.stdout.strip()} {done.stderr.strip()}", flush=True)
            return
        sc.add("ping_ms", ping.avg_ms)
        print(f"  ({sc.key}) ping avg {ping.avg_ms:.3f} ms (min {ping.min_ms:.3f}, max {ping.max_ms:.3f}, "
              f"loss {ping.loss} %)", flush=True)

    def tcp(self, sc: Scenario, reverse: bool) -> None:
        name = "down" if reverse else "up"
        before = sc.cpu()
        result = self.iperf(sc, ["-R"] if reverse else [], self.seconds)
        after = sc.cpu()
        end = result["end"]
        received = end["sum_received"]
        gb = received["bytes"] / 1e9
        sc.add(f"tcp_{name}_gbps", received["bits_per_second"] / 1e9)
        sc.add(f"tcp_{name}_retrans", float(end["sum_sent"].get("retransmits", 0)))
        shares = []
        for role in ROLES:
            if role in before:
                per_gb = (after[role] - before[role]) / gb if gb else None
                sc.add(f"tcp_{name}_cpu_{role}", per_gb)
                shares.append(f"{role} {per_gb:.2f}" if per_gb is not None else f"{role} -")
        print(f"  ({sc.key}) TCP {name:>4} {received['bits_per_second'] / 1e9:6.3f} Gbit/s, "
              f"{end['sum_sent'].get('retransmits', 0)} retransmits; CPU s/GB: {', '.join(shares)}", flush=True)

    def udp_trial(self, sc: Scenario, mbps: float) -> tuple[float, float]:
        result = self.iperf(sc, ["-u", "-b", f"{mbps:.1f}M", "-l", str(UDP_LEN)], UDP_TRIAL_SECONDS)
        total = result["end"]["sum"]
        return float(total["lost_percent"]), float(total["bits_per_second"]) / 1e6

    def udp(self, sc: Scenario) -> None:
        """From UDP_START_MBPS: double while loss <= 1 % (or halve until it is), then bisect."""
        trace: list[str] = []
        received: dict[float, float] = {}  # rate -> Mbit/s received

        def trial(rate: float) -> bool:
            loss, rx = self.udp_trial(sc, rate)
            trace.append(f"{rate:.0f}:{loss:.1f}%")
            received[rate] = rx * (1 - loss / 100)
            return loss <= UDP_MAX_LOSS

        best = highest_rate(trial, UDP_START_MBPS, UDP_MAX_MBPS, UDP_MIN_MBPS, self.bisect_steps)
        best_rx = received[best] if best else 0.0
        sc.add("udp_mbps", best)
        sc.add("udp_kpps", best_rx * 1e6 / ((UDP_LEN + 28) * 8) / 1e3)
        print(f"  ({sc.key}) UDP <=1% loss at {best:.0f} Mbit/s offered  ({' '.join(trace)})", flush=True)

    def udp_fixed(self, sc: Scenario) -> None:
        """CPU per GB at FIXED_MBPS on every path: per-GB costs without the rate's own effect
        (a slower path batches less and spreads fixed costs over fewer bytes)."""
        before = sc.cpu()
        result = self.iperf(sc, ["-u", "-b", f"{FIXED_MBPS:.0f}M", "-l", str(UDP_LEN)], self.fixed_seconds)
        after = sc.cpu()
        total = result["end"]["sum"]
        loss = float(total["lost_percent"])
        gb = total["bytes"] * (1 - loss / 100) / 1e9
        sc.add("fixed_loss", loss)
        shares = []
        for role in ROLES:
            if role in before:
                per_gb = (after[role] - before[role]) / gb if gb else None
                sc.add(f"fixed_cpu_{role}", per_gb)
                shares.append(f"{role} {per_gb:.2f}" if per_gb is not None else f"{role} -")
        print(f"  ({sc.key}) UDP at {FIXED_MBPS:.0f} Mbit/s for {self.fixed_seconds} s: loss {loss:.2f} %; "
              f"CPU s/GB: {', '.join(shares)}", flush=True)

    def measure(self, key: str) -> None:
        sc = self.scenarios[key]
        self.use(sc)
        self.ping(sc)
        self.tcp(sc, reverse=False)
        self.tcp(sc, reverse=True)
        self.udp(sc)
        self.udp_fixed(sc)


# ==========================================================================================
# Set-up time
# ==========================================================================================

class SetupRunner:
    """Fresh set-ups of one kind on one lab: (a) direct, no ICE, or ICE (b, c)."""

    def __init__(self, key: str, label: str, site: Site, ice: bool, third_octet: int, listen_port: int,
                 direct_grace: float) -> None:
        self.key, self.label, self.site, self.ice = key, label, site, ice
        self.third_octet, self.listen_port, self.direct_grace = third_octet, listen_port, direct_grace
        self.ifname = f"ws{key}{site.net.tag}"
        self.ns = site.net.ns["client"]
        self.total: list[float] = []
        self.post: list[float] = []
        self.ice_times: list[float] = []
        self.pairs: dict[str, int] = {}
        self.retired: Any = None    # the previous set-up's agent, exiting (deleting its allocation)
        self.baseline = 0.0

    def start(self) -> None:
        env = base_env() | {"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
        self.site.net.spawn("client", ["wireguard-go", self.ifname], env, f"wireguard-go-{self.ifname}")
        self.site.net.wait_link("client", self.ifname)
        sh("ip", "link", "set", self.ifname, "mtu", "1280", "up", ns=self.ns)
        sh("wg", "set", self.ifname, "listen-port", str(self.listen_port), ns=self.ns)

    def one(self, index: int) -> None:
        from tests.iceclient import IceAgent, ice_credentials, relay_addr

        net, portal = self.site.net, self.site.portal
        ipv4 = f"100.64.{self.third_octet}.{index + 1}"
        ipv6 = f"fd00:2021:1111::{self.third_octet:x}:{index + 1:x}"
        private = sh("wg", "genkey").strip()
        public = sh("wg", "pubkey", input_text=private + "\n").strip()
        psk = sh("wg", "genpsk").strip()
        keyfile, pskfile = net.workdir / f"{self.ifname}.key", net.workdir / f"{self.ifname}.psk"
        keyfile.write_text(private + "\n")
        pskfile.write_text(psk + "\n")
        keyfile.chmod(0o600)
        pskfile.chmod(0o600)
        # Before the clock: the client's own interface, key and address (a client has them
        # before it asks for a resource), the route to the resource, and the pinger.
        sh("ip", "addr", "add", f"{ipv4}/32", "dev", self.ifname, ns=self.ns)
        sh("wg", "set", self.ifname, "private-key", str(keyfile), ns=self.ns)
        sh("ip", "route", "replace", RESOURCE_NET, "dev", self.ifname, ns=self.ns)
        agent = None
        if self.ice:
            agent = IceAgent(net, "client", "controlling", wg_port=self.listen_port, watchdog=0,
                             label=f"setup-{self.key}-{index}")
        if self.retired is not None:
            self.retired.stop()  # waits for it to exit: nothing of it runs on the clock
            self.retired = None
        self.baseline = self.site.metric("firezone_gateway_active_peers")
        pinger = net.spawn("client", ["ping", "-D", "-n", "-i", str(SETUP_PING_INTERVAL), "-I", ipv4,
                                      net.RESOURCE], {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                           f"setup-ping-{self.key}-{index}")
        flow: dict[str, Any] | None = None
        try:
            # ping's header stays in its stdio buffer until a reply comes: that it runs shows
            # in the echo requests reaching the interface (dropped there: no peer yet).
            sent = self.tx_packets()
            wait_for(lambda: self.tx_packets() > sent, 10, "ping sending into the tunnel interface")
            client = {"public_key": public, "preshared_key": psk, "ipv4": ipv4, "ipv6": ipv6,
                      "ice": ice_credentials()}
            body = {"gateway": self.site.lab.gateway_record()["id"], "protocol": "1.4", "client": client,
                    "resource": {"type": "cidr", "address": RESOURCE_NET, "filters": []}}
            # --- the clock runs from here ---
            wall0, mono0 = time.time(), time.monotonic()
            status, flow = portal.api("POST", "/v1/flows", body)
            self.post.append(time.monotonic() - mono0)
            if status != 201 or flow.get("status") != "authorized":
                raise RuntimeError(f"set-up ({self.key}) {index}: POST /v1/flows {status} {flow}")
            gw = flow["gateway"]
            endpoint = f"127.0.0.1:{agent.shim_port}" if agent is not None else \
                f"{net.GATEWAY_OUTER}:{gw['port']}"
            sh("wg", "set", self.ifname, "peer", gw["public_key"], "preshared-key", str(pskfile), "endpoint",
               endpoint, "allowed-ips", f"{RESOURCE_NET},{gw['ipv4']}/32", "persistent-keepalive", "25",
               ns=self.ns)
            if agent is not None:
                relays = flow.get("relays") or []
                found = relay_addr(relays, 4)  # TURN over IPv4; its STUN gives the srflx candidate
                turn = {"server": found[1], "username": found[0]["username"],
                        "password": found[0]["password"]} if found else None
                pair = self._signal(agent, flow, turn, found[1] if found else None)
                self.ice_times.append(time.monotonic() - mono0)
                kind = "relay" if relayed(pair) else f"{pair['local']['type']}/{pair['remote']['type']}"
                self.pairs[kind] = self.pairs.get(kind, 0) + 1
            first = wait_for(lambda: re.search(r"^\[(\d+\.\d+)\] \d+ bytes from", pinger.output(), re.M), 30,
                             f"the first echo reply of set-up ({self.key}) {index}")
            self.total.append(float(first.group(1)) - wall0)
            # --- the clock stops at the first echo reply ---
        finally:
            pinger.stop()
            pinger.log_path.unlink(missing_ok=True)
            if agent is not None:
                agent.popen.send_signal(signal.SIGTERM)  # it deletes its allocation while we go on
                self.retired = agent
            if flow is not None and "flow_id" in flow:
                portal.api("DELETE", f"/v1/flows/{flow['flow_id']}")
                sh("wg", "set", self.ifname, "peer", flow["gateway"]["public_key"], "remove", ns=self.ns,
                   check=False)
            sh("ip", "addr", "del", f"{ipv4}/32", "dev", self.ifname, ns=self.ns, check=False)
        wait_for(lambda: self.site.metric("firezone_gateway_active_peers") <= self.baseline, 15,
                 f"the gateway dropping the client of set-up ({self.key}) {index}")

    def tx_packets(self) -> int:
        link = json.loads(sh("ip", "-s", "-j", "link", "show", "dev", self.ifname, ns=self.ns))[0]
        return int(link["stats64"]["tx"]["packets"])

    def _signal(self, agent: Any, flow: dict[str, Any], turn: dict[str, str] | None,
                stun: str | None) -> dict[str, Any]:
        """One ICE session: our candidates to the gateway, its candidates to aioice, until nominated."""
        portal = self.site.portal
        flow_id = flow["flow_id"]
        # Woken by the agent's events as they are read (no polling on the clock).
        gathered, settled = threading.Event(), threading.Event()

        def listen(event: dict[str, Any]) -> None:
            if event["event"] == "gathered":
                gathered.set()
            elif event["event"] in ("connected", "failed"):
                settled.set()

        agent.subscribe(listen)
        session = agent.session(flow["ice"]["client"], flow["ice"]["gateway"], turn, stun, self.direct_grace)
        if not gathered.wait(15):
            raise RuntimeError(f"set-up ({self.key}): aioice gathered no candidates in 15 s")
        candidates = agent.find("gathered", session)["candidates"]
        status, body = portal.api("POST", f"/v1/flows/{flow_id}/candidates", {"candidates": candidates})
        if status >= 300:
            raise RuntimeError(f"POST candidates: {status} {body}")
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while not settled.is_set():
            if time.monotonic() > deadline:
                raise RuntimeError(f"set-up ({self.key}): no ICE pair nominated in 30 s")
            status, body = portal.api("GET", f"/v1/flows/{flow_id}/candidates?wait={0 if seen else 2}")
            new = [c for c in (body.get("candidates", []) if status == 200 else []) if c not in seen]
            if new:
                seen.update(new)
                agent.add_remote(new)
            else:
                settled.wait(0.05)  # nominated, or look for trickled candidates again
        connected = agent.find("connected", session)
        if connected is None:
            raise RuntimeError(f"set-up ({self.key}): ICE failed: {agent.find('failed', session)}")
        return dict(connected)

    def stop(self) -> None:
        if self.retired is not None:
            self.retired.stop()
            self.retired = None


# ==========================================================================================
# Report
# ==========================================================================================

def print_throughput(bench: Throughput, ratios: bool, warning: str, flagged: bool) -> None:
    keys = [k for k in ("a", "b", "c") if k in bench.scenarios]
    rows: list[tuple[str, str, str, bool]] = [
        ("iperf3 TCP client -> resource, Gbit/s", "tcp_up_gbps", "{:.3f}", True),
        ("iperf3 TCP resource -> client (-R), Gbit/s", "tcp_down_gbps", "{:.3f}", True),
        ("TCP retransmits (client -> resource)", "tcp_up_retrans", "{:.0f}", False),
        (f"UDP offered at <=1 % loss (-l {UDP_LEN}), Mbit/s", "udp_mbps", "{:.0f}", True),
        ("UDP received at that rate, kpps", "udp_kpps", "{:.1f}", True),
        ("ping avg, ms (idle)", "ping_ms", "{:.3f}", True),
    ]
    rows.append((f"UDP at a fixed {FIXED_MBPS:.0f} Mbit/s: loss, %", "fixed_loss", "{:.2f}", False))
    for name, tag in (("up", "TCP up"), ("down", "TCP -R"), ("fixed", f"UDP {FIXED_MBPS:.0f}M")):
        for role in ROLES:
            # (a) has no shim and does not use the relay: no ratio for those rows.
            prefix = "fixed" if name == "fixed" else f"tcp_{name}"
            rows.append((f"CPU s/GB, {tag}: {role}", f"{prefix}_cpu_{role}", "{:.2f}",
                         role in ("gateway", "client wg-go")))
    labels = {k: f"({k}) {bench.scenarios[k].label}" for k in keys}
    ratio_heads = [f"{k}/a" for k in keys if k != "a"]
    head = f"{'measure (mean of runs; runs in brackets)':<44}" + "".join(f"{labels[k]:>24}" for k in keys)
    head += "".join(f"{h:>7}" for h in ratio_heads)
    print()
    print(head)
    for title, name, fmt, with_ratio in rows:
        means: dict[str, float | None] = {}
        cells = []
        for k in keys:
            values = bench.scenarios[k].samples.get(name, [])
            means[k] = statistics.fmean(values) if values else None
            runs = "/".join(fmt.format(v) for v in values)
            cells.append(f"{fmt.format(means[k])} [{runs}]" if values else "-")
        line = f"{title:<44}" + "".join(f"{c:>24}" for c in cells)
        for k in keys:
            if k == "a":
                continue
            a, x = means.get("a"), means.get(k)
            cell = "-"
            if not with_ratio:
                pass
            elif not ratios:
                cell = "n/a"
            elif a and x is not None:
                cell = f"{x / a:.2f}" + ("*" if flagged else "")
            line += f"{cell:>7}"
        print(line)
    for k in keys:
        print(f"  ({k}) path: {bench.scenarios[k].pair}{bench.notes.get(k, '')}")
    print("Throughput rows: a ratio > 1 is better than (a); ping and CPU rows: < 1 is better.")
    print("CPU rows: CPU seconds per GB of iperf3 payload; 'shim' is the client's aioice process (Python),")
    print("which carries every datagram of (b) and (c): their throughput and latency include its cost.")
    print("'relay' is coturn (near 0 when the path does not use it). Ratios are x / (a).")
    print(("* " if flagged else "") + warning)


def print_setups(runners: list[SetupRunner], ratios: bool, warning: str) -> None:
    print()
    print(f"set-up time, POST /v1/flows -> first ICMP echo reply through the tunnel, seconds "
          f"({len(runners[0].total)} set-ups each, interleaved)")
    print(f"{'scenario':<28} {'p50':>7} {'p95':>7} {'min':>7} {'max':>7}   {'POST p50/p95':>13} "
          f"{'ICE p50/p95':>13}  pairs")
    base = runners[0] if runners[0].key == "a" else None
    for r in runners:
        if not r.total:
            continue
        post = f"{percentile(r.post, 50):.3f}/{percentile(r.post, 95):.3f}"
        ice = f"{percentile(r.ice_times, 50):.3f}/{percentile(r.ice_times, 95):.3f}" if r.ice_times else "-"
        pairs = ", ".join(f"{k} x{n}" for k, n in sorted(r.pairs.items())) or "wireguard-go direct"
        print(f"({r.key}) {r.label:<24} {percentile(r.total, 50):7.3f} {percentile(r.total, 95):7.3f} "
              f"{min(r.total):7.3f} {max(r.total):7.3f}   {post:>13} {ice:>13}  {pairs}")
    if base is not None and base.total:
        for r in runners:
            if r is base or not r.total:
                continue
            if ratios:
                print(f"  ({r.key})/(a): p50 {percentile(r.total, 50) / percentile(base.total, 50):.2f}, "
                      f"p95 {percentile(r.total, 95) / percentile(base.total, 95):.2f}  {warning}")
            else:
                print(f"  ({r.key})/(a): n/a  {warning}")
    print("POST = the portal's authorize_flow round trip (until the gateway's flow_authorized);")
    print("ICE = from the POST to aioice's nomination (its gathering, with a TURN Allocate, included).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, help="iperf3 TCP duration per run (default 5, --quick 2)")
    parser.add_argument("--setups", type=int, help="set-ups per scenario (default 50, --quick 5)")
    parser.add_argument("--rounds", type=int, help="rounds of a b c c b a (default 1; --quick: one pass a b c)")
    parser.add_argument("--quick", action="store_true", help="short runs, a smoke check")
    parser.add_argument("--force", action="store_true", help="print ratios even when the machine is not idle")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the logs directory")
    args = parser.parse_args()
    reason = cannot_run()
    if reason:
        print(f"bench_ice: skipped, {reason}")  # like bench_tunnel: `make bench` goes on
        return 0
    seconds = args.seconds or (2 if args.quick else 5)
    setups = args.setups if args.setups is not None else (5 if args.quick else 50)
    order = ["a", "b", "c"] if args.quick and not args.rounds else ["a", "b", "c", "c", "b", "a"] * (args.rounds or 1)
    bisect_steps = 1 if args.quick else 3

    gate = LoadGate.now(args.force)
    print(f"load average at start: {loadavg()}; {os.cpu_count()} CPUs", flush=True)

    def interrupted(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="fz-bench-ice-"))
    started = time.monotonic()
    sites: list[Site] = []
    runners: list[SetupRunner] = []
    ok = False
    try:
        tags = pick_tags(2)
        site_a = Site(workdir, "A", gateway_nat="none", client_nat="symmetric", tag=tags[0])
        sites.append(site_a)
        site_a.up()
        site_c = Site(workdir, "C", gateway_nat="symmetric", client_nat="symmetric", tag=tags[1])
        sites.append(site_c)
        site_c.up()
        bench = Throughput(seconds, bisect_steps)
        bench.add_direct(site_a)
        bench.add_ice("b", "ICE direct", site_a, "100.64.0.3", "fd00:2021:1111::3", want_relay=False)
        bench.add_ice("c", "ICE relayed", site_c, "100.64.0.4", "fd00:2021:1111::4", want_relay=True)
        print(f"labs up in {time.monotonic() - started:.1f} s; TCP {seconds} s, UDP trials {UDP_TRIAL_SECONDS} s, "
              f"ping {PING_COUNT} x {PING_INTERVAL} s; order {' '.join(order)}; {setups} set-ups each", flush=True)
        for key in ("a", "b", "c"):
            print(f"  ({key}) {bench.scenarios[key].label}: {bench.scenarios[key].pair}")
        for step, key in enumerate(order, 1):
            print(f"run {step}/{len(order)}: ({key}) {bench.scenarios[key].label}", flush=True)
            bench.measure(key)
        bench.note_restarts()
        relay_in = site_c.metric("firezone_gateway_relay_bytes_total")
        direct_relay = site_a.metric("firezone_gateway_relay_bytes_total")
        print(f"gateway relay bytes: lab A (a, b) {direct_relay:.0f}, lab C (c) {relay_in:.0f}")

        if setups:
            runners = [SetupRunner("a", "direct, no ICE", site_a, ice=False, third_octet=1, listen_port=51831,
                                   direct_grace=0.0),
                       SetupRunner("b", "ICE direct", site_a, ice=True, third_octet=2, listen_port=51832,
                                   direct_grace=1.0),
                       # No grace: nothing direct exists between two symmetric NATs, and a grace
                       # would only hold back the relay checks that can succeed.
                       SetupRunner("c", "ICE relayed", site_c, ice=True, third_octet=3, listen_port=51831,
                                   direct_grace=0.0)]
            for runner in runners:
                runner.start()
            print(f"set-ups: {setups} per scenario, interleaved a b c", flush=True)
            phase = time.monotonic()
            for index in range(setups):
                for runner in runners:
                    runner.one(index)
                if (index + 1) % 10 == 0 or index + 1 == setups:
                    last = ", ".join(f"({r.key}) {r.total[-1]:.3f} s" for r in runners)
                    print(f"  {index + 1}/{setups} set-ups ({time.monotonic() - phase:.0f} s); last: {last}",
                          flush=True)
            for runner in runners:
                runner.stop()

        print(f"\nload average at the end: {loadavg()} (at the start: {gate.start:.2f})")
        print_throughput(bench, gate.ratios, gate.warning, flagged=gate.flagged)
        if runners:
            print_setups(runners, gate.ratios, gate.warning)
        ok = True
    except KeyboardInterrupt as exc:
        print(f"bench_ice: interrupted ({exc or 'SIGINT'}); cleaning up", file=sys.stderr)
    except Exception as exc:
        print(f"bench_ice: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        for log in sorted(workdir.rglob("*.log"), key=lambda p: p.stat().st_mtime)[-12:]:
            text = log.read_text(errors="replace").splitlines()
            if text:
                print(f"===== {log.relative_to(workdir)} (last 15 lines)", file=sys.stderr)
                print("\n".join(text[-15:]), file=sys.stderr)
    finally:
        for runner in runners:
            try:
                runner.stop()
            except Exception as exc:
                print(f"bench_ice: stopping a set-up agent: {exc}", file=sys.stderr)
        for site in reversed(sites):
            try:
                site.down()
            except Exception as exc:
                print(f"bench_ice: tearing down lab {site.name}: {exc}", file=sys.stderr)
        left = [name for site in sites for name in site.leftovers()]
        if left:
            print(f"bench_ice: left behind: {left}", file=sys.stderr)
        if args.keep_workdir:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"total {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
