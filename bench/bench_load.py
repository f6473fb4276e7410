"""Load: a handshake flood, 1,000 authorized clients and a soak, against the running gateway.

    sudo .venv/bin/python bench/bench_load.py [all] [--force] [--minutes N]    # flood, clients, soak
    sudo .venv/bin/python bench/bench_load.py flood [--rate N] [--seconds S] [--sockets N] [--force]
    sudo .venv/bin/python bench/bench_load.py clients [--clients N] [--procs P] [--echoes E] [--force]
    sudo .venv/bin/python bench/bench_load.py soak [--minutes N] [--bitrate 50M]

Each part puts up its own namespace lab (tests/netlab.py): the dev portal in the root
namespace, our gateway (`firezone-gateway-init` then `firezone-gateway`, RUST_LOG=info) in the
gateway namespace, and the load in the client namespace, all over real UDP to the gateway's
port. Everything the script makes (namespaces, processes) is removed at the end, on Ctrl-C and
on SIGTERM too; processes are stopped by PID.

flood    bench/loadgen.py (its own process) builds a pool of real handshake initiations from
         random static keys, each with a valid mac1 for the gateway's public key and no mac2,
         and sends them from several sockets with sendmmsg(2), paced to --rate (default
         12,000/s) for --seconds (default 40). It counts what comes back by type. Printed:
         the rate achieved; the cookie replies received; the gateway's /metrics drop
         counters (cookie_required, mac1, unknown_peer, ...) and the kernel's UDP receive
         errors in both namespaces; the gateway's CPU (% of one core, sampled each second)
         and RSS; and, for stock wireguard-go clients (fresh keys, authorized before the
         flood), the time from `wg set` to the first echo reply through the tunnel: once on
         the idle gateway, then three times during the flood.
         Criteria: >= 10,000 initiations/s sent; cookie replies answered (flooder side and
         cookie_required > 0); the gateway's CPU bounded (the mean of the last third of the
         flood at most 1.25 x that of the first third) with RSS growth < 5 %; each
         wireguard-go client during the flood answered within 2 s.
clients  --clients (default 1,000) clients of our sans-I/O core (WireGuardDevice, one UDP
         socket each, split over --procs loadgen processes), authorized through the dev
         portal (`POST /v1/flows`, --concurrency requests at once), then all started at once:
         each sends --echoes ICMP echo requests to the resource, one after the other reply.
         Three stock wireguard-go clients in the same run: two connected before and pinging
         throughout, one connecting at the same moment as the swarm (timed). Printed: the
         gateway's RSS before, after the authorizations and after the handshakes, per client;
         authorizations/s; handshakes/s (clients / the last completion) with the completion
         times' p50/p95/max and how many clients needed a cookie; every echo answered;
         the wireguard-go clients' ping loss and RTT.
soak     one wireguard-go client, iperf3 TCP capped at --bitrate (default 50M) to the
         resource for --minutes (default 10), a ping every 0.5 s and one short HTTP request
         through the tunnel every 10 s. The gateway's RSS, open fds and threads are sampled
         every 10 s. Criteria: RSS growth under 5 % from the sample after warm-up (1 min; a
         quarter of the run when it is shorter than 4 min) to the end, and no fd growth (the
         fewest fds of the last minute's samples not above the count at warm-up: a socket
         open for a moment at one sample is not a leak, a leak raises every later sample).

The 1-minute load average is printed before and after each part. Rates, times and CPU are
claims about speed: when the 1-minute load exceeds 0.5 at the start their verdicts are
withheld (the figures are still printed) and the exit status is 3, unless --force (verdicts
then marked as taken under load). The functional checks (cookie replies came, every echo
was answered, the wireguard-go clients were served) and the soak's memory and fd counts are
judged in any case. Exit status: 0 all judged criteria passed, 1 one failed, 3 loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from common import IPERF_PORT, LoadGate, cpu_seconds, finish_workdir, loadavg, log_gate_report, nstat, parse_ping  # noqa: E402

from gateway_pkg.wireguard import keys  # noqa: E402
from tests import netlab  # noqa: E402
from tests.lab import LAB_TOKEN, Lab  # noqa: E402
from tests.netlab import NetLab, WireGuardClient, sh  # noqa: E402
from tests.procs import DevPortalProc, Proc, base_env, wait_for  # noqa: E402

LOADGEN = ROOT / "bench" / "loadgen.py"
RESOURCE_NET = "198.18.2.0/24"
RESOURCES = (NetLab.RESOURCE, *NetLab.RESOURCE_EXTRA)  # 198.18.2.2, .3, .4: one per wireguard-go client
HTTP_PORT = 8080
EXIT_FAILED = 1
EXIT_LOADED = 3
FLOOD_MIN_RATE = 10_000
LEGIT_LIMIT = 2.0  # seconds from `wg set` to the first echo reply during the flood
CPU_CLIMB_LIMIT = 1.25
RSS_GROWTH_LIMIT = 5.0  # percent
SOAK_INTERVAL = 10.0
SOAK_WARMUP = 60.0


# --- verdicts --------------------------------------------------------------------------------

@dataclass
class Verdicts:
    gate: LoadGate
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (criterion, measured, verdict)
    failed: bool = False
    withheld: bool = False

    def functional(self, criterion: str, measured: str, ok: bool) -> None:
        self.rows.append((criterion, measured, "PASS" if ok else "FAIL"))
        self.failed |= not ok

    def timed(self, criterion: str, measured: str, ok: bool) -> None:
        if not self.gate.ratios:
            self.rows.append((criterion, measured, "withheld (load)"))
            self.withheld = True
            return
        mark = f" (under load {self.gate.start:.2f})" if self.gate.flagged else ""
        self.rows.append((criterion, measured, ("PASS" if ok else "FAIL") + mark))
        self.failed |= not ok

    def figures(self, what: str, measured: str) -> None:
        """Rates with no threshold: shown as figures, withheld like a timed verdict under load."""
        if not self.gate.ratios:
            self.rows.append((what, measured, "withheld (load)"))
            self.withheld = True
            return
        self.rows.append((what, measured, "figures" + (f" (under load {self.gate.start:.2f})"
                                                       if self.gate.flagged else "")))

    def print(self, title: str) -> int:
        print(f"\n{title}: criteria")
        width = max(len(r[0]) for r in self.rows) if self.rows else 10
        for criterion, measured, verdict in self.rows:
            print(f"  {criterion:<{width}}  {verdict:<8}  {measured}")
        if self.gate.busy and (self.withheld or self.gate.flagged):
            print(f"  {self.gate.warning}")
        elif self.gate.busy:
            print(f"  taken under load: 1-minute load {self.gate.start:.2f} at the start (> 0.5); "
                  f"no timing claim among these criteria")
        if self.failed:
            return EXIT_FAILED
        return EXIT_LOADED if self.withheld else 0


# --- the lab -----------------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM (kB) and Threads from /proc/<pid>/status, plus the open fds."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def parse_metrics(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values


def drops(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    out = {}
    for name, value in after.items():
        match = re.fullmatch(r'firezone_gateway_dropped_packets_total\{reason="([^"]+)"\}', name)
        if match:
            delta = int(value - before.get(name, 0.0))
            if delta:
                out[match.group(1)] = delta
    return out


def handshake_log(client: WireGuardClient) -> str:
    """What a verbose wireguard-go log says about its handshakes: initiations sent, cookie
    replies received, responses received."""
    assert client.proc is not None
    text = client.proc.output()
    return (f"{text.count('Sending handshake initiation')} initiations, "
            f"{text.count('Receiving cookie response')} cookie replies, "
            f"{text.count('Received handshake response')} responses")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class LoadLab:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.net = NetLab(workdir)
        self.portal: DevPortalProc | None = None
        self.lab: Lab | None = None
        self.gateway: Proc | None = None
        self.gateway_id = ""
        self.popens: list[subprocess.Popen[str]] = []  # started here, outside the lab's Proc list

    def up(self) -> None:
        net = self.net.up()
        self.portal = DevPortalProc(self.workdir, host=net.MGMT_ROOT, gateway_token=LAB_TOKEN)
        self.lab = Lab(net, self.portal)
        self.gateway = self.lab.start_gateway({"RUST_LOG": "info"})
        self.gateway_id = self.lab.gateway_record()["id"]

    @property
    def pid(self) -> int:
        assert self.gateway is not None
        return self.gateway.pid

    def metrics(self) -> dict[str, float]:
        assert self.lab is not None
        return parse_metrics(self.lab.metrics())

    def authorize(self, client: dict[str, str]) -> dict[str, Any]:
        assert self.portal is not None
        body = {"gateway": self.gateway_id, "protocol": "1.4", "client": client,
                "resource": {"type": "cidr", "address": RESOURCE_NET, "filters": []}}
        status, flow = self.portal.api("POST", "/v1/flows", body)
        if status != 201 or flow.get("status") != "authorized":
            raise RuntimeError(f"POST /v1/flows: {status} {flow}")
        answer: dict[str, Any] = flow
        return answer

    def wg_client(self, n: int) -> WireGuardClient:
        """A stock wireguard-go client with fresh keys, tunnel address 100.64.0.(2+n), started."""
        private = sh("wg", "genkey").strip()
        public = sh("wg", "pubkey", input_text=private + "\n").strip()
        client = WireGuardClient(self.net, f"wgl{self.net.tag}{n}", private, public, sh("wg", "genpsk").strip(),
                                 ipv4=f"100.64.0.{2 + n}", ipv6=f"fd00:2021:1111::{2 + n:x}")
        # WireGuardClient.start() with verbose logs: they show each initiation and cookie reply.
        env = base_env() | {"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "verbose"}
        client.proc = self.net.spawn("client", ["wireguard-go", client.ifname], env, f"wireguard-go-{client.ifname}")
        self.net.wait_link("client", client.ifname)
        ns = self.net.ns["client"]
        sh("ip", "addr", "add", f"{client.ipv4}/32", "dev", client.ifname, ns=ns)
        sh("ip", "-6", "addr", "add", f"{client.ipv6}/128", "dev", client.ifname, ns=ns)
        sh("ip", "link", "set", client.ifname, "mtu", "1280", "up", ns=ns)
        return client

    def popen(self, host: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        proc: subprocess.Popen[str] = subprocess.Popen(["ip", "netns", "exec", self.net.ns[host], *argv],
                                                       text=True, env=base_env(), **kwargs)
        self.popens.append(proc)
        return proc

    def connect_timed(self, client: WireGuardClient, flow: dict[str, Any], address: str,
                      timeout: float) -> float | None:
        """Seconds from `wg set` (which starts the handshake) to the first echo reply from
        `address` through the tunnel; None if none came within `timeout`."""
        gw = flow["gateway"]
        start = time.time()
        client.connect(gw["public_key"], f"{NetLab.GATEWAY_OUTER}:{gw['port']}", [f"{address}/32"])
        ping = self.popen("client", ["ping", "-n", "-D", "-c", "1", "-i", "0.05", "-w", str(int(timeout)), address],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = ping.communicate(timeout=timeout + 10)
        match = re.search(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)
        return float(match.group(1)) - start if match else None

    def down(self) -> None:
        for proc in self.popens:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        if self.portal is not None:
            self.portal.stop()
        self.net.down()


class Sampler(threading.Thread):
    """The gateway's CPU seconds and status every `interval` seconds, in the background."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float, dict[str, int]]] = []
        self.stopping = threading.Event()

    def sample(self) -> None:
        self.samples.append((time.monotonic(), cpu_seconds(self.pid), proc_status(self.pid)))

    def run(self) -> None:
        self.sample()
        while not self.stopping.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
        self.sample()


# --- flood ----------------------------------------------------------------------------------

def run_flood(load: LoadLab, args: argparse.Namespace, verdicts: Verdicts) -> None:
    assert load.lab is not None
    net = load.net
    flows = []
    clients = []
    for n in range(1 + args.legit):  # client 0: the idle baseline; 1..: during the flood
        client = load.wg_client(n)
        clients.append(client)
        flows.append(load.authorize(client.flow_client()))
    gw_key = flows[0]["gateway"]["public_key"]
    port = flows[0]["gateway"]["port"]

    idle = load.connect_timed(clients[0], flows[0], NetLab.RESOURCE, 10)
    assert clients[0].proc is not None
    clients[0].proc.stop()
    print((f"idle gateway: wireguard-go client 0 answered {idle:.3f} s after `wg set`" if idle is not None
           else "idle gateway: wireguard-go client 0 got no echo reply within 10 s")
          + f"; its log: {handshake_log(clients[0])}", flush=True)

    m0, gw0, cl0 = load.metrics(), nstat(net.ns["gateway"]), nstat(net.ns["client"])
    out = load.workdir / "flood.json"
    flooder = net.spawn("client", [sys.executable, str(LOADGEN), "flood", "--gateway-key", gw_key,
                                   "--target", f"{NetLab.GATEWAY_OUTER}:{port}", "--bind", NetLab.CLIENT_OUTER,
                                   "--rate", str(args.rate), "--seconds", str(args.seconds),
                                   "--sockets", str(args.sockets), "--out", str(out)], base_env(), "flooder")
    wait_for(lambda: "sending" in flooder.output() or not flooder.running(), 60, "the flooder's initiations")
    sampler = Sampler(load.pid, 1.0)
    sampler.start()
    flood_start = time.monotonic()
    print(f"flood started: {args.rate:,} initiations/s for {args.seconds} s from {args.sockets} sockets", flush=True)

    during: list[float | None] = []
    time.sleep(3)
    metrics_seconds = None
    for n in range(1, 1 + args.legit):
        left = flood_start + args.seconds - time.monotonic()
        if left < 12:
            print(f"  wireguard-go client {n}: skipped, only {left:.0f} s of flood left")
            continue
        took = load.connect_timed(clients[n], flows[n], NetLab.RESOURCE, 10)
        during.append(took)
        proc = clients[n].proc
        assert proc is not None
        proc.stop()
        print(f"  wireguard-go client {n} during the flood: " +
              (f"first echo reply {took:.3f} s after `wg set`" if took is not None else "no echo reply within 10 s")
              + f"; its log: {handshake_log(clients[n])}", flush=True)
        if metrics_seconds is None:
            t = time.monotonic()
            load.metrics()
            metrics_seconds = time.monotonic() - t
    flooder.popen.wait(args.seconds + 60)
    sampler.stop()
    m1, gw1, cl1 = load.metrics(), nstat(net.ns["gateway"]), nstat(net.ns["client"])
    result = json.loads(out.read_text())

    # Gateway CPU over the send window, per second.
    window = [s for s in sampler.samples if s[0] <= flood_start + result["send_seconds"] + 0.5]
    pcts = [100 * (b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(window) if b[0] > a[0]]
    cpu_total = window[-1][1] - window[0][1]
    cpu_mean = 100 * cpu_total / (window[-1][0] - window[0][0])
    third = max(1, len(pcts) // 3)
    first, last = statistics.fmean(pcts[:third]), statistics.fmean(pcts[-third:])
    rss0, rss1 = sampler.samples[0][2]["VmRSS"], sampler.samples[-1][2]["VmRSS"]
    rss_growth = 100 * (rss1 - rss0) / rss0
    dropped = drops(m0, m1)
    gw_err = {k: gw1.get(k, 0) - gw0.get(k, 0) for k in ("UdpInErrors", "UdpRcvbufErrors", "UdpInDatagrams")}
    cl_err = {k: cl1.get(k, 0) - cl0.get(k, 0) for k in ("UdpInErrors", "UdpRcvbufErrors")}
    answered = result["cookie_replies"]
    read = gw_err["UdpInDatagrams"]
    per_sec = result["per_second_sent"]

    print(f"\nflood: {result['sent']:,} initiations in {result['send_seconds']:.2f} s = {result['rate']:,.0f}/s "
          f"(per second min {min(per_sec):,} max {max(per_sec):,}; {result['distinct']} distinct messages from "
          f"random keys, {result['sockets']} sockets, sendmmsg batches of {result['batch']}; socket full "
          f"{result['buffer_full']} times; flooder CPU {100 * result['cpu_seconds'] / result['send_seconds']:.0f} %)")
    print(f"cookie replies received by the flooder: {answered:,} ({100 * answered / max(1, result['sent']):.1f} % of "
          f"sent); other replies {result['other_replies']}")
    handshakes = "firezone_gateway_wireguard_handshakes_total"
    print(f"gateway /metrics drops during the flood: {dropped}; handshakes completed "
          f"{int(m1.get(handshakes, 0) - m0.get(handshakes, 0))}")
    print(f"kernel, gateway ns: UDP datagrams delivered {read:,}, InErrors {gw_err['UdpInErrors']:,} "
          f"(receive buffer full {gw_err['UdpRcvbufErrors']:,}); client ns: InErrors {cl_err['UdpInErrors']:,}")
    print(f"gateway CPU during the flood: mean {cpu_mean:.0f} % of a core (per second min {min(pcts):.0f}, median "
          f"{statistics.median(pcts):.0f}, max {max(pcts):.0f}; first third {first:.0f}, last third {last:.0f}); "
          f"{1e6 * cpu_total / max(1, read):.1f} us CPU per datagram delivered to it")
    print(f"gateway RSS {rss0 / 1024:.1f} MiB before, {rss1 / 1024:.1f} MiB after ({rss_growth:+.1f} %); "
          f"threads {sampler.samples[-1][2]['Threads']}; fds {sampler.samples[0][2]['fds']} -> "
          f"{sampler.samples[-1][2]['fds']}")
    if metrics_seconds is not None:
        print(f"/metrics answered in {metrics_seconds * 1000:.0f} ms during the flood")
    times = ", ".join("none" if t is None else f"{t:.3f} s" for t in during)
    print(f"wireguard-go clients, `wg set` to first echo reply: idle {'none' if idle is None else f'{idle:.3f} s'}; "
          f"during the flood {times}")

    verdicts.timed(f"flooder sends >= {FLOOD_MIN_RATE:,} initiations/s", f"{result['rate']:,.0f}/s",
                   result["rate"] >= FLOOD_MIN_RATE)
    verdicts.functional("the gateway answers the flood with cookie replies",
                        f"{answered:,} received, cookie_required {dropped.get('cookie_required', 0):,}",
                        answered > 0 and dropped.get("cookie_required", 0) > 0)
    verdicts.timed(f"gateway CPU bounded (last third <= {CPU_CLIMB_LIMIT} x first), RSS < +{RSS_GROWTH_LIMIT:.0f} %",
                   f"mean {cpu_mean:.0f} % of a core, {first:.0f} -> {last:.0f} %, RSS {rss_growth:+.1f} %",
                   last <= CPU_CLIMB_LIMIT * first and rss_growth < RSS_GROWTH_LIMIT)
    verdicts.functional("the wireguard-go client connects on the idle gateway",
                        "none" if idle is None else f"{idle:.3f} s", idle is not None)
    verdicts.timed(f"wireguard-go clients answered within {LEGIT_LIMIT:.0f} s during the flood", times,
                   bool(during) and all(t is not None and t <= LEGIT_LIMIT for t in during))


# --- clients ----------------------------------------------------------------------------------

def swarm_address(i: int) -> tuple[str, str]:
    return f"100.64.{16 + i // 250}.{1 + i % 250}", f"fd00:2021:1111::1:{i:x}"


def run_clients(load: LoadLab, args: argparse.Namespace, verdicts: Verdicts) -> None:
    # Three stock clients: 0 and 1 connected before and pinging throughout, 2 connecting with the swarm.
    wg = [load.wg_client(n) for n in range(3)]
    wg_flows = [load.authorize(c.flow_client()) for c in wg]
    gw = wg_flows[0]["gateway"]
    for n in (0, 1):
        took = load.connect_timed(wg[n], wg_flows[n], RESOURCES[n], 10)
        if took is None:
            raise RuntimeError(f"wireguard-go client {n} got no echo reply on the idle gateway")
    pings = [load.popen("client", ["ping", "-n", "-D", "-i", "0.1", "-w", "300", RESOURCES[n]],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for n in (0, 1)]
    time.sleep(1)
    before = proc_status(load.pid)

    # Authorizations.
    specs = []
    for i in range(args.clients):
        private = keys.generate_private_key()
        ipv4, ipv6 = swarm_address(i)
        specs.append({"index": i, "private_key": keys.key_to_base64(private), "ipv4": ipv4, "ipv6": ipv6,
                      "public_key": keys.key_to_base64(keys.public_key(private)),
                      "preshared_key": keys.key_to_base64(os.urandom(32))})
    started, auth_wall = time.monotonic(), time.time()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(lambda s: load.authorize({k: s[k] for k in ("public_key", "preshared_key", "ipv4", "ipv6")}),
                      specs))
    auth_seconds = time.monotonic() - started
    phases = {"authorizations": (auth_wall, time.time())}
    time.sleep(1)
    authorized = proc_status(load.pid)
    print(f"{args.clients} clients authorized in {auth_seconds:.2f} s = {args.clients / auth_seconds:.0f}/s "
          f"({args.concurrency} requests at once)", flush=True)

    # The swarm.
    m0 = load.metrics()
    cpu0 = cpu_seconds(load.pid)
    procs = []
    for p in range(args.procs):
        part = specs[p::args.procs]
        spec_file = load.workdir / f"swarm-{p}.json"
        spec_file.write_text(json.dumps({
            "gateway_key": gw["public_key"], "endpoint": [NetLab.GATEWAY_OUTER, gw["port"]],
            "bind": NetLab.CLIENT_OUTER, "resource": NetLab.RESOURCE, "echoes": args.echoes,
            "timeout": args.timeout, "clients": part}))
        os.chmod(spec_file, 0o600)
        proc = load.popen("client", [sys.executable, str(LOADGEN), "swarm", "--spec", str(spec_file),
                                     "--out", str(load.workdir / f"swarm-{p}.out.json")],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"swarm process: {line}{proc.stdout.read()}")
    late: list[float | None] = []
    joiner = threading.Thread(target=lambda: late.append(load.connect_timed(wg[2], wg_flows[2], RESOURCES[2], 15)))
    go, go_wall = time.monotonic(), time.time()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    joiner.start()
    for proc in procs:
        proc.wait(args.timeout + 60)
    joiner.join(30)
    swarm_wall = time.monotonic() - go
    phases["swarm"] = (go_wall, time.time())
    cpu1 = cpu_seconds(load.pid)
    time.sleep(1)
    after = proc_status(load.pid)
    m1 = load.metrics()
    ping_results = []
    ping_phases = []
    for proc in pings:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        ping_results.append(parse_ping(out))
        replies = [(float(t), float(ms)) for t, ms in re.findall(r"^\[(\d+\.\d+)\].*time=([\d.]+) ms", out, re.M)]
        parts = []
        for phase, (t0, t1) in phases.items():
            rtts = [ms for t, ms in replies if t0 <= t - ms / 1000 <= t1]  # by when the request left
            if rtts:
                parts.append(f"{phase}: {len(rtts)} replies, rtt median {statistics.median(rtts):.1f} "
                             f"max {max(rtts):.0f} ms")
        ping_phases.append("; ".join(parts))

    results = [c for p in range(args.procs)
               for c in json.loads((load.workdir / f"swarm-{p}.out.json").read_text())["clients"]]
    swarm_cpu = sum(json.loads((load.workdir / f"swarm-{p}.out.json").read_text())["cpu_seconds"]
                    for p in range(args.procs))
    done = [c["handshake_at"] for c in results if c["handshake_at"] is not None]
    complete = sum(1 for c in results if c["replies"] >= args.echoes)
    cookied = sum(1 for c in results if c["cookies"] > 0)
    first_try = sum(1 for c in results if c["handshake_at"] is not None and c["initiations"] == 1)
    echo_last = [c["echo_at"][-1] for c in results if c["echo_at"]]
    dropped = drops(m0, m1)
    handshakes = int(m1.get("firezone_gateway_wireguard_handshakes_total", 0)
                     - m0.get("firezone_gateway_wireguard_handshakes_total", 0))
    n = args.clients
    per_auth = (authorized["VmRSS"] - before["VmRSS"]) / n
    per_peer = (after["VmRSS"] - before["VmRSS"]) / n

    print(f"\nswarm: {n} clients in {args.procs} processes, {args.echoes} echoes each; done in {swarm_wall:.2f} s "
          f"(swarm CPU {swarm_cpu:.1f} s, gateway CPU {cpu1 - cpu0:.1f} s)")
    if done:
        print(f"handshakes completed: {len(done)}/{n}; {len(done) / max(done):.0f}/s over {max(done):.2f} s "
              f"(completion p50 {percentile(done, 0.5):.2f} s, p95 {percentile(done, 0.95):.2f} s, max "
              f"{max(done):.2f} s); {first_try} on the first initiation, {cookied} got a cookie reply first; "
              f"gateway counted {handshakes} handshakes")
        wave = [t for t in done if t < 1.0]
        if wave:
            print(f"  first second: {len(wave)} handshakes completed, the last at {max(wave):.2f} s "
                  f"({len(wave) / max(max(wave), 1e-3):.0f}/s); the others after their retry with mac2")
    print(f"echoes: {complete}/{n} clients got all {args.echoes} answered; last answer at "
          f"{max(echo_last) if echo_last else float('nan'):.2f} s; total answered "
          f"{sum(c['replies'] for c in results)}/{n * args.echoes}")
    print(f"gateway /metrics drops during the swarm: {dropped}")
    print(f"gateway RSS: {before['VmRSS'] / 1024:.1f} MiB before, {authorized['VmRSS'] / 1024:.1f} MiB after the "
          f"authorizations, {after['VmRSS'] / 1024:.1f} MiB after handshakes and echoes: {per_auth:.1f} KiB per "
          f"authorized client, {per_peer:.1f} KiB per client with a session; fds {before['fds']} -> {after['fds']}")
    wg_text = []
    for k, ping in enumerate(ping_results):
        wg_text.append(f"client {k}: " + (f"loss {ping.loss} %, rtt avg {ping.avg_ms:.2f} max {ping.max_ms:.2f} ms"
                                          if ping else "no replies"))
    late_t = late[0] if late else None
    wg_text.append("client 2 (joined with the swarm): " +
                   (f"first echo reply {late_t:.3f} s after `wg set`" if late_t is not None else "no reply in 15 s")
                   + f" ({handshake_log(wg[2])})")
    print("wireguard-go clients alongside: " + "; ".join(wg_text))
    for k, text in enumerate(ping_phases):
        print(f"  client {k} pings by phase: {text}")

    verdicts.functional(f"every one of the {n} clients handshakes and gets its {args.echoes} echoes answered",
                        f"{complete}/{n}", complete == n)
    verdicts.functional("the wireguard-go clients are served alongside (echo replies during the swarm)",
                        "; ".join(wg_text), all(p is not None for p in ping_results) and late_t is not None)
    rates = (f"{n / auth_seconds:.0f} authorizations/s, "
             f"{(len(done) / max(done)) if done else 0:.0f} handshakes/s, {per_peer:.1f} KiB per client")
    verdicts.figures("flow set-up rates and memory (no threshold)", rates)


# --- soak ------------------------------------------------------------------------------------

def run_soak(load: LoadLab, args: argparse.Namespace, verdicts: Verdicts) -> None:
    assert load.lab is not None
    net = load.net
    seconds = int(args.minutes * 60)
    warmup = SOAK_WARMUP if seconds >= 4 * SOAK_WARMUP else SOAK_INTERVAL * max(1, round(seconds / 4 / SOAK_INTERVAL))
    net.spawn("resource", ["iperf3", "-s", "-B", NetLab.RESOURCE, "-p", str(IPERF_PORT)], base_env(), "iperf3-server")
    load.lab.serve_http(NetLab.RESOURCE, HTTP_PORT, "ok\n")
    wait_for(lambda: f"{NetLab.RESOURCE}:{IPERF_PORT}" in sh("ss", "-ltn", ns=net.ns["resource"]), 10, "iperf3")
    client = load.wg_client(0)
    flow = load.authorize(client.flow_client())
    if load.connect_timed(client, flow, NetLab.RESOURCE, 10) is None:
        raise RuntimeError("the wireguard-go client got no echo reply")
    iperf = load.popen("client", ["iperf3", "-c", NetLab.RESOURCE, "-p", str(IPERF_PORT), "-t", str(seconds),
                                  "-b", args.bitrate, "-J"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ping = load.popen("client", ["ping", "-n", "-q", "-i", "0.5", "-w", str(seconds), NetLab.RESOURCE],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    iperf_out: list[str] = []
    ping_out: list[str] = []
    readers = [threading.Thread(target=lambda: iperf_out.append(iperf.communicate()[0]), daemon=True),
               threading.Thread(target=lambda: ping_out.append(ping.communicate()[0]), daemon=True)]
    for reader in readers:
        reader.start()
    start = time.monotonic()
    samples: list[tuple[float, float, dict[str, int]]] = []
    http_ok = http_failed = 0
    print(f"soak: {seconds} s, iperf3 TCP at {args.bitrate}bit/s + ping 0.5 s + one HTTP request per "
          f"{SOAK_INTERVAL:.0f} s; samples every {SOAK_INTERVAL:.0f} s (warm-up {warmup:.0f} s)", flush=True)
    print(f"  {'t s':>5} {'RSS MiB':>8} {'fds':>4} {'thr':>4} {'CPU %':>6}")
    marks = [k * SOAK_INTERVAL for k in range(int(seconds // SOAK_INTERVAL) + 1) if k * SOAK_INTERVAL < seconds]
    for mark in [*marks, float(seconds)]:
        time.sleep(max(0.0, start + mark - time.monotonic()))
        t = time.monotonic() - start
        status = proc_status(load.pid)
        cpu = cpu_seconds(load.pid)
        pct = 100 * (cpu - samples[-1][1]) / (t - samples[-1][0]) if samples else 0.0
        samples.append((t, cpu, status))
        print(f"  {t:5.0f} {status['VmRSS'] / 1024:8.2f} {status['fds']:4d} {status['Threads']:4d} {pct:6.0f}",
              flush=True)
        if mark < seconds:
            code, _ = load.lab.curl(f"http://{NetLab.RESOURCE}:{HTTP_PORT}/", timeout=3)
            http_ok += code == 0
            http_failed += code != 0
    for reader in readers:
        reader.join(30)
    sent_mb = retrans = 0.0
    try:
        end = json.loads(iperf_out[0])["end"] if iperf_out else {}
        sent_mb = end["sum_received"]["bytes"] / 1e6
        retrans = end["sum_sent"].get("retransmits", 0)
        iperf_text = f"{sent_mb:,.0f} MB received, {end['sum_received']['bits_per_second'] / 1e6:.1f} Mbit/s, " \
                     f"{retrans:.0f} retransmits"
    except (ValueError, KeyError) as exc:
        iperf_text = f"iperf3 gave no result ({exc}): {(iperf_out[0] if iperf_out else '')[-300:]}"
    pinged = parse_ping(ping_out[0]) if ping_out else None

    warm = next(s for s in samples if s[0] >= warmup - 1)
    last = samples[-1]
    rss = [s[2]["VmRSS"] for s in samples]
    fds = [s[2]["fds"] for s in samples]
    growth = 100 * (last[2]["VmRSS"] - warm[2]["VmRSS"]) / warm[2]["VmRSS"]
    cpu_mean = 100 * (last[1] - samples[0][1]) / (last[0] - samples[0][0])
    print(f"\nsoak series: {len(samples)} samples over {last[0]:.0f} s; RSS MiB first {rss[0] / 1024:.2f}, at warm-up "
          f"({warm[0]:.0f} s) {warm[2]['VmRSS'] / 1024:.2f}, min {min(rss) / 1024:.2f}, max {max(rss) / 1024:.2f}, end "
          f"{rss[-1] / 1024:.2f} ({growth:+.2f} % from warm-up); fds first {fds[0]}, at warm-up {warm[2]['fds']}, "
          f"max {max(fds)}, end {fds[-1]}; threads {samples[0][2]['Threads']} -> {last[2]['Threads']}; "
          f"gateway CPU mean {cpu_mean:.0f} % of a core")
    print(f"traffic: iperf3 {iperf_text}; ping " +
          (f"loss {pinged.loss} %, rtt avg {pinged.avg_ms:.2f} max {pinged.max_ms:.2f} ms" if pinged else "no replies")
          + f"; HTTP requests {http_ok} ok, {http_failed} failed")
    verdicts.functional(f"RSS growth < {RSS_GROWTH_LIMIT:.0f} % from warm-up to the end",
                        f"{warm[2]['VmRSS'] / 1024:.2f} -> {rss[-1] / 1024:.2f} MiB ({growth:+.2f} %)",
                        growth < RSS_GROWTH_LIMIT)
    # A leak keeps every later sample up; a socket open for a moment at one sample does not.
    tail_fds = [s[2]["fds"] for s in samples if s[0] >= last[0] - SOAK_WARMUP] or [fds[-1]]
    verdicts.functional("no fd growth (fewest in the last minute <= at warm-up)",
                        f"{warm[2]['fds']} at warm-up, last minute {min(tail_fds)}-{max(tail_fds)}, end {fds[-1]} "
                        f"(max {max(fds)})", min(tail_fds) <= warm[2]["fds"])
    verdicts.functional("traffic flowed the whole time (iperf3 result, ping replies, HTTP ok)",
                        f"{sent_mb:,.0f} MB, HTTP {http_ok}/{http_ok + http_failed}",
                        sent_mb > 0 and pinged is not None and http_failed == 0)


# --- main ------------------------------------------------------------------------------------

PARTS = {"flood": run_flood, "clients": run_clients, "soak": run_soak}


def run_part(name: str, args: argparse.Namespace, gate: LoadGate) -> int:
    print(f"\n=== bench_load {name}: load average before {loadavg()} (1, 5, 15 min); {os.cpu_count()} CPUs",
          flush=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"fz-bench-load-{name}-"))
    load = LoadLab(workdir)
    verdicts = Verdicts(gate)
    ok = False
    started = time.monotonic()
    try:
        load.up()
        PARTS[name](load, args, verdicts)
        ok = True
    finally:
        gateway_log = load.gateway.output() if load.gateway is not None else ""
        load.down()
        finish_workdir(workdir, ok=ok, keep=args.keep_workdir)
    if load.lab is not None and gateway_log:
        # The flood provokes no warning of the gateway: the drops are counted, not logged.
        print(log_gate_report([gateway_log], load.lab.logs))
    status = verdicts.print(f"bench_load {name}")
    print(f"load average after: {loadavg()} (1, 5, 15 min); {name} took {time.monotonic() - started:.0f} s",
          flush=True)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("part", nargs="?", choices=("all", *PARTS), default="all",
                        help="what to run (default all: flood, clients, soak)")
    parser.add_argument("--force", action="store_true", help="give the timing verdicts even when the machine is busy")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the logs directory")
    flood = parser.add_argument_group("flood")
    flood.add_argument("--rate", type=int, default=12_000, help="initiations per second (default 12000)")
    flood.add_argument("--seconds", type=int, default=40, help="flood duration (default 40)")
    flood.add_argument("--sockets", type=int, default=4, help="flooder sockets, i.e. source ports (default 4)")
    flood.add_argument("--legit", type=int, default=3, help="wireguard-go clients timed during the flood (default 3)")
    clients = parser.add_argument_group("clients")
    clients.add_argument("--clients", type=int, default=1000, help="sans-I/O clients (default 1000)")
    clients.add_argument("--procs", type=int, default=2, help="processes they are split over (default 2)")
    clients.add_argument("--echoes", type=int, default=3, help="echo requests per client, in turn (default 3)")
    clients.add_argument("--concurrency", type=int, default=8, help="POST /v1/flows at once (default 8)")
    clients.add_argument("--timeout", type=float, default=60, help="seconds the swarm may take (default 60)")
    soak = parser.add_argument_group("soak")
    soak.add_argument("--minutes", type=float, default=10, help="soak duration (default 10)")
    soak.add_argument("--bitrate", default="50M", help="iperf3 -b for the soak (default 50M)")
    args = parser.parse_args()
    if args.seconds < 20 and args.part in ("all", "flood"):
        parser.error("--seconds must be at least 20 (the wireguard-go clients are timed during the flood)")
    why = netlab.available() or next((f"{tool} is not installed (run `make deps`)" for tool in ("iperf3", "nstat")
                                      if shutil.which(tool) is None), None)
    if why:
        print(f"bench_load: cannot run: {why}", file=sys.stderr)
        return EXIT_FAILED

    def interrupted(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    gate = LoadGate.now(args.force)
    if gate.busy and args.part != "soak":
        print(gate.warning, flush=True)
    statuses = [run_part(name, args, gate) for name in (PARTS if args.part == "all" else [args.part])]
    if EXIT_FAILED in statuses:
        return EXIT_FAILED
    return EXIT_LOADED if EXIT_LOADED in statuses else 0


if __name__ == "__main__":
    sys.exit(main())
