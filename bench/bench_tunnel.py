"""Data plane side by side: our gateway vs wireguard-go "gateways", same client, same resource.

    sudo .venv/bin/python bench/bench_tunnel.py [--seconds N] [--rounds R] [--force]
        [--reference PATH ...] [--client PATH] [--offloads auto|no-uso|off]
        [--netem-delay MS] [--no-syscall-count] [--profile] [--keep-workdir]

One lab (tests/netlab.py): one wireguard-go client namespace and one resource namespace, with
every gateway running at once in the gateway namespace:

  (a) ours: `firezone-gateway-init --egress-interface <veth>` then `firezone-gateway`, joined
      to the dev portal, the client authorized for the cidr resource 198.18.2.0/24 (no
      filters), client tunnel address 100.64.0.2; `--offloads MODE` is passed to it as
      FIREZONE_OFFLOADS (unset: the gateway's default);
  (b) Debian's /usr/bin/wireguard-go on `wgg<tag>0` (UDP 51820), configured with `wg`, the
      client as its peer; client tunnel address 100.64.0.3;
  (c), (d) ... each `--reference PATH` (a wireguard-go-compatible binary, e.g. one built from
      a newer tag) the same way on `wgg<tag>1`, `wgg<tag>2` ..., UDP 51821, 51822 ..., client
      tunnel addresses 100.64.0.4, 100.64.0.5 ...

Each wireguard-go gateway gets the same FORWARD accepts for its interface; the MASQUERADE rule
the init wrote (by source range and egress interface) covers them too. An `ip rule` (priority
900 + n) sends each client address to its wireguard-go ahead of our gateway's fwmark rule, so
all stay up and the order can alternate. The client (`--client PATH`, default Debian's
wireguard-go) switches gateways by moving the resource prefix between its peers (`wg set ...
allowed-ips`) and by binding iperf3/ping to the matching source address. Each round measures
in the order a b ... b a (ABBA with two gateways) so drift hits every side alike.
`--netem-delay MS` puts `netem delay MS ms` (limit 100000 packets) on both ends of the
client-gateway link, i.e. MS each way: the round trip grows by 2 x MS (`--netem-delay 10` is
the "20 ms RTT" case).

Tests per gateway and visit: ping (50 at 0.05 s, idle); iperf3 TCP client -> resource ("up")
and resource -> client (`-R`, "down"), each with 1 and with 4 streams (`-P 4`); the highest
UDP rate with <= 1 % loss (`-l 1200`, 1 s trials: doubling or halving from 50 Mbit/s, then 3
bisections) up and down. Columns: one per gateway, mean of the runs with each run in
brackets, then ours / each wireguard-go. Rows, per test:

  Gbit/s, retransmits   iperf3's receiver rate and the sender's retransmits;
  CPU, % of a core      the gateway process's utime + stime (/proc/<pid>/stat, all threads)
                        over the test, divided by its wall time;
  CPU s/GB              the same CPU seconds divided by the GB of iperf3 payload received;
  syscalls/packet       system calls entered by all threads of the gateway process
                        (perf_event_open counters on the tracepoint raw_syscalls:sys_enter,
                        i.e. every call of every kind: packet I/O, polling, futex, timers),
                        divided by the data packets carried: for TCP the payload bytes
                        received over 1228 (the MSS at MTU 1280 with timestamps), for UDP
                        the datagrams received, for ping the echo requests and replies.
                        Neither the stacks' segment counters nor `ip -s link` will do: a
                        GRO super-packet written into a TUN counts there as one (the per-run
                        lines print the resource veth's count beside it). The per-run lines
                        also break the calls down by name (packet I/O and waiting calls);
  UDP errors            deltas of nstat's UdpInErrors/UdpRcvbufErrors/UdpSndbufErrors (v4 +
                        v6 summed; InErrors includes RcvbufErrors) in the gateway namespace
                        (both kinds of gateway read and write their UDP socket there) and in
                        the client namespace, summed over the runs;
  UDP offered, kpps     the highest offered rate at <= 1 % loss and the packets per second
                        received in that trial; CPU, syscalls and errors of a UDP row come
                        from that trial alone.

The 1-minute load average is printed before and after. When it exceeds 0.5 at the start the
results are printed without ratios and the exit status is 3, unless `--force` (ratios then
marked "under load X"). These machines are noisy: compare ratios from one idle run only.
`--profile` also records our gateway with py-spy (if installed in the venv) during an extra
TCP run and prints the top functions. Needs root, iperf3, nstat, tc, wireguard-go and wg.
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from common import (  # noqa: E402
    IPERF_PORT,
    LOAD_LIMIT,
    LoadGate,
    SyscallCounter,
    cpu_seconds,
    finish_workdir,
    highest_rate,
    in_netns,
    iperf_idle,
    loadavg,
    log_gate_report,
    nstat,
    parse_ping,
    udp_errors,
)

from gateway_pkg import __version__  # noqa: E402
from gateway_pkg.netconst import TUN_MTU, TUN_NAME, TUN_TXQUEUELEN  # noqa: E402
from tests import netlab  # noqa: E402
from tests.lab import LAB_TOKEN, Lab  # noqa: E402
from tests.netlab import NetLab, WireGuardClient, sh  # noqa: E402
from tests.procs import VENV_BIN, DevPortalProc, Proc, base_env, wait_for  # noqa: E402

DEBIAN_WGGO = "/usr/bin/wireguard-go"
RESOURCE_NET = "198.18.2.0/24"
OURS_SRC = "100.64.0.2"  # the client's tunnel address known to the portal
WGGO_SRC_BASE = 3  # 100.64.0.3, .4, ...: the same client, as seen by each wireguard-go gateway
WGGO_TUNNEL_BASE = 254  # 100.95.255.254, .253, ...: each wireguard-go gateway's own tunnel address
WGGO_PORT = 51820
WGGO_RULE_PRIORITY = 900
UDP_LEN = 1200  # + 28 bytes of IP/UDP headers fits MTU 1280
TCP_PAYLOAD = 1228  # the MSS at MTU 1280: 1280 - 20 (IPv4) - 20 (TCP) - 12 (timestamps)
UDP_MAX_LOSS = 1.0  # percent
UDP_TRIAL_SECONDS = 1
UDP_START_MBPS = 50.0
UDP_MAX_MBPS = 3200.0
UDP_MIN_MBPS = 3.0
UDP_BISECT_STEPS = 3
PING_COUNT = 50
PING_INTERVAL = 0.05
NETEM_LIMIT = 100000  # packets: netem's default of 1000 would cap throughput at a few ms of delay
TCP_TESTS = [(reverse, streams) for reverse in (False, True) for streams in (1, 4)]
EXIT_LOADED = 3
INNER_PACKETS = ("TcpInSegs", "TcpOutSegs", "UdpInDatagrams", "UdpOutDatagrams", "Udp6InDatagrams",
                 "Udp6OutDatagrams", "IcmpInMsgs", "IcmpOutMsgs", "Icmp6InMsgs", "Icmp6OutMsgs")


def direction(reverse: bool) -> str:
    return "down" if reverse else "up"


def tcp_test(reverse: bool, streams: int) -> str:
    return f"tcp_{direction(reverse)}_{streams}"


@dataclass
class Usage:
    """What one side used over one test."""

    seconds: float
    cpu: float
    syscalls: dict[str, int] | None
    gw_errors: dict[str, int]
    client_errors: dict[str, int]
    packets: int  # inner packets, both directions, as the resource's stack counts them
    skbs: int  # packets on the resource veth as `ip -s link` counts them (GSO/GRO aggregates as one)

    def per_packet(self) -> float | None:
        if self.syscalls is None or not self.packets:
            return None
        return self.syscalls["all"] / self.packets

    def breakdown(self, top: int = 4) -> str:
        if self.syscalls is None:
            return ""
        if not self.packets:
            return "no packets"
        calls = sorted(((n, v) for n, v in self.syscalls.items() if n != "all" and v), key=lambda nv: -nv[1])
        return ", ".join(f"{n} {v / self.packets:.2f}" for n, v in calls[:top])


@dataclass
class Snapshot:
    t: float
    cpu: float
    syscalls: dict[str, int] | None
    gw: dict[str, int]
    client: dict[str, int]
    resource: dict[str, int]
    skbs: int

    def until(self, later: Snapshot) -> Usage:
        calls = None
        if self.syscalls is not None and later.syscalls is not None:
            calls = {k: later.syscalls[k] - self.syscalls.get(k, 0) for k in later.syscalls}
        packets = sum(later.resource.get(k, 0) - self.resource.get(k, 0) for k in INNER_PACKETS)
        return Usage(later.t - self.t, later.cpu - self.cpu, calls, udp_errors(self.gw, later.gw),
                     udp_errors(self.client, later.client), packets, later.skbs - self.skbs)


@dataclass
class Side:
    key: str
    label: str
    binary: str
    version: str
    ifname: str
    src: str
    peer_public_key: str
    peer_own_ip: str
    pid: int
    counter: SyscallCounter | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, dict[str, int]] = field(default_factory=dict)  # "<test>.gw"/".client" -> sums over runs

    def add(self, name: str, value: float | None) -> None:
        if value is not None:
            self.samples.setdefault(name, []).append(value)

    def add_usage(self, test: str, usage: Usage, gb: float | None) -> None:
        self.add(f"{test}.cpu_gb", usage.cpu / gb if gb else None)
        self.add(f"{test}.sys_pkt", usage.per_packet())
        for where, errs in (("gw", usage.gw_errors), ("client", usage.client_errors)):
            total = self.errors.setdefault(f"{test}.{where}", dict.fromkeys(errs, 0))
            for kind, n in errs.items():
                total[kind] += n


def version_of(binary: str) -> str:
    """The first line of `<binary> --version`."""
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except OSError as exc:
        return f"? ({exc})"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else f"? (exit {done.returncode})"


def ours_version() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                          text=True, check=False)
    return f"gateway_pkg {__version__}, git {done.stdout.strip() or '?'}"


def short_label(version: str, taken: set[str]) -> str:
    match = re.search(r"v?(\d+\.\d+\.\d+)", version)
    label = f"wg-go {match.group(1)}" if match else "wg-go"
    base, n = label, 2
    while label in taken:
        label, n = f"{base} #{n}", n + 1
    taken.add(label)
    return label


def netem_missing() -> str | None:
    """Why `tc qdisc ... netem` cannot be used here (probed on lo of a throwaway namespace), or None."""
    ns = f"fznetem-{secrets.token_hex(2)}"
    try:
        sh("ip", "netns", "add", ns)
        done = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                               "delay", "1ms"], capture_output=True, text=True, check=False)
        return None if done.returncode == 0 else (done.stderr.strip() or f"tc exit {done.returncode}")
    finally:
        sh("ip", "netns", "del", ns, check=False)


def errors_text(errs: dict[str, int]) -> str:
    return "/".join(str(errs.get(k, 0)) for k in ("InErrors", "RcvbufErrors", "SndbufErrors"))


class Bench:
    def __init__(self, workdir: Path, seconds: int, references: list[str], client_binary: str,
                 offloads: str | None, netem_ms: float | None, count_syscalls: bool) -> None:
        self.workdir = workdir
        self.seconds = seconds
        self.references = [DEBIAN_WGGO, *references]
        self.client_binary = client_binary
        self.offloads = offloads
        self.netem_ms = netem_ms
        self.count_syscalls = count_syscalls
        self.syscalls_na = ""  # why system calls are not counted, if they are not
        self.net = NetLab(workdir)
        self.portal: DevPortalProc | None = None
        self.lab: Lab | None = None
        self.gateway: Proc | None = None
        self.sides: dict[str, Side] = {}
        self.active: str | None = None

    # --- setup --------------------------------------------------------------------------------

    def start_client(self, client: WireGuardClient) -> None:
        """WireGuardClient.start() with the chosen binary."""
        env = base_env() | {"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
        client.proc = self.net.spawn("client", [self.client_binary, client.ifname], env,
                                     f"wireguard-go-{client.ifname}")
        self.net.wait_link("client", client.ifname)
        ns = self.net.ns["client"]
        sh("ip", "addr", "add", f"{client.ipv4}/32", "dev", client.ifname, ns=ns)
        sh("ip", "-6", "addr", "add", f"{client.ipv6}/128", "dev", client.ifname, ns=ns)
        sh("ip", "link", "set", client.ifname, "mtu", "1280", "up", ns=ns)

    def up(self) -> None:
        net = self.net.up()
        self.portal = DevPortalProc(self.workdir, host=net.MGMT_ROOT, gateway_token=LAB_TOKEN)
        lab = self.lab = Lab(net, self.portal)
        client = lab.client = net.new_client()
        self.start_client(client)
        cl_ns, gw_ns, rs_ns = net.ns["client"], net.ns["gateway"], net.ns["resource"]

        # (a) our gateway; INFO logging so the hot path runs as in production.
        env = {"RUST_LOG": "info"} | ({"FIREZONE_OFFLOADS": self.offloads} if self.offloads else {})
        gateway = self.gateway = lab.start_gateway(env)
        flow = lab.authorize({"type": "cidr", "address": RESOURCE_NET, "filters": []})
        assert flow["status"] == "authorized", flow
        lab.connect_client(flow, [RESOURCE_NET])
        ours_ip = flow["gateway"]["ipv4"]
        self.sides["a"] = Side("a", "ours", str(VENV_BIN / "firezone-gateway"), ours_version(), TUN_NAME, OURS_SRC,
                               flow["gateway"]["public_key"], f"{ours_ip}/32", gateway.pid)

        # (b), (c), ...: wireguard-go binaries as plain gateways in the same namespace.
        taken = {"ours"}
        for n, binary in enumerate(self.references):
            key = chr(ord("b") + n)
            ifname, port = f"wgg{net.tag}{n}", WGGO_PORT + n
            src, tunnel_ip = f"100.64.0.{WGGO_SRC_BASE + n}", f"100.95.255.{WGGO_TUNNEL_BASE - n}"
            sh("ip", "addr", "add", f"{src}/32", "dev", client.ifname, ns=cl_ns)
            wg_env = base_env() | {"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
            wggo = net.spawn("gateway", [binary, ifname], wg_env, f"wireguard-go-{ifname}")
            net.wait_link("gateway", ifname)
            private = sh("wg", "genkey").strip()
            public = sh("wg", "pubkey", input_text=private + "\n").strip()
            keyfile, pskfile = self.workdir / f"{ifname}.key", self.workdir / f"{ifname}.psk"
            keyfile.write_text(private + "\n")
            pskfile.write_text(client.preshared_key + "\n")
            os.chmod(keyfile, 0o600)
            os.chmod(pskfile, 0o600)
            sh("wg", "set", ifname, "private-key", str(keyfile), "listen-port", str(port),
               "peer", client.public_key, "preshared-key", str(pskfile), "allowed-ips", f"{src}/32", ns=gw_ns)
            sh("ip", "addr", "add", f"{tunnel_ip}/32", "dev", ifname, ns=gw_ns)
            # Same MTU and queue length as tun-firezone.
            sh("ip", "link", "set", ifname, "mtu", str(TUN_MTU), "txqueuelen", str(TUN_TXQUEUELEN), "up", ns=gw_ns)
            sh("ip", "route", "add", f"{src}/32", "dev", ifname, ns=gw_ns)
            sh("ip", "rule", "add", "to", f"{src}/32", "lookup", "main", "priority", str(WGGO_RULE_PRIORITY + n),
               ns=gw_ns)
            for rule in (("-i", ifname, "-j", "ACCEPT"), ("-o", ifname, "-j", "ACCEPT")):
                sh("iptables", "-w", "-I", "FORWARD", "1", *rule, ns=gw_ns)
            sh("wg", "set", client.ifname, "peer", public, "preshared-key",
               str(self.workdir / f"{client.ifname}.psk"), "endpoint", f"{NetLab.GATEWAY_OUTER}:{port}",
               "allowed-ips", f"{tunnel_ip}/32", "persistent-keepalive", "25", ns=cl_ns)
            sh("ip", "route", "replace", f"{tunnel_ip}/32", "dev", client.ifname, ns=cl_ns)
            version = version_of(binary)
            self.sides[key] = Side(key, short_label(version, taken), binary, version, ifname, src, public,
                                   f"{tunnel_ip}/32", wggo.pid)

        if self.netem_ms:
            for ns, dev in ((cl_ns, f"fc{net.tag}c"), (gw_ns, f"fc{net.tag}g")):
                sh("tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay", f"{self.netem_ms}ms",
                   "limit", str(NETEM_LIMIT), ns=ns)
        net.spawn("resource", ["iperf3", "-s", "-B", NetLab.RESOURCE, "-p", str(IPERF_PORT)], base_env(),
                  "iperf3-server")
        wait_for(lambda: f"{NetLab.RESOURCE}:{IPERF_PORT}" in sh("ss", "-ltn", ns=rs_ns), 10, "iperf3 server")
        for key in self.sides:
            self.use(key)
        self.describe()
        if self.count_syscalls:
            self.syscalls_na = SyscallCounter.why_not() or ""
            for side in self.sides.values():
                if self.syscalls_na:
                    break
                try:
                    side.counter = SyscallCounter(side.pid)
                except OSError as exc:
                    self.syscalls_na = str(exc)
        else:
            self.syscalls_na = "--no-syscall-count"
        if self.syscalls_na:
            print(f"system calls: n/a ({self.syscalls_na})")

    def describe(self) -> None:
        """Which binaries, their versions, their interfaces' offload state, the lab's extras."""
        gw_ns = self.net.ns["gateway"]
        print(f"client: {self.client_binary} ({version_of(self.client_binary)})")
        for side in self.sides.values():
            link = sh("ip", "-d", "link", "show", side.ifname, ns=gw_ns, check=False)
            vnet = re.search(r"vnet_hdr (\w+)", link)
            print(f"({side.key}) {side.label}: {side.binary} ({side.version}); {side.ifname} "
                  f"vnet_hdr {vnet.group(1) if vnet else '?'}, client source {side.src}")
        if self.gateway is not None:
            offload_lines = [line.strip() for line in self.gateway.output().splitlines() if "offload" in line.lower()]
            asked = f"FIREZONE_OFFLOADS={self.offloads}" if self.offloads else "FIREZONE_OFFLOADS unset"
            print(f"(a) {asked}; its log: {offload_lines[0][:240] if offload_lines else 'no line on offloads'}")
        masq = sh("iptables", "-t", "nat", "-S", "POSTROUTING", ns=gw_ns).strip().splitlines()
        print("gateway ns NAT:", "; ".join(line for line in masq if "MASQUERADE" in line))
        if self.netem_ms:
            print(f"netem: delay {self.netem_ms} ms each way on the client-gateway link "
                  f"(RTT + {2 * self.netem_ms:g} ms), limit {NETEM_LIMIT} packets")

    def use(self, key: str) -> None:
        """Move the resource prefix to this side's peer on the client, then check the path."""
        side = self.sides[key]
        assert self.lab is not None and self.lab.client is not None
        client = self.lab.client
        if self.active != key:
            sh("wg", "set", client.ifname, "peer", side.peer_public_key, "allowed-ips",
               f"{RESOURCE_NET},{side.peer_own_ip}", ns=self.net.ns["client"])
            self.active = key
        wait_for(lambda: self.client(["ping", "-c", "1", "-W", "1", "-I", side.src, NetLab.RESOURCE],
                                     timeout=5).returncode == 0, 20, f"ping through {side.label}")

    # --- measurements ---------------------------------------------------------------------------

    def client(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return in_netns(self.net.ns["client"], argv, timeout)

    def iperf_idle(self) -> bool:
        return iperf_idle(self.net.ns["resource"])

    def iperf(self, side: Side, extra: list[str], seconds: float) -> dict:
        argv = ["iperf3", "-c", NetLab.RESOURCE, "-p", str(IPERF_PORT), "-B", side.src, "-J",
                "-t", str(seconds), *extra]
        result: dict = {}
        for attempt in range(3):
            wait_for(self.iperf_idle, 15, "the previous iperf3 test to close")
            done = self.client(argv, timeout=seconds + 30)
            try:
                result = json.loads(done.stdout)
            except ValueError:
                result = {"error": done.stderr.strip() or "no output"}
            if "error" not in result:
                return result
            if attempt < 2:  # "the server is busy": the previous test is still closing
                time.sleep(0.5)
        raise RuntimeError(f"iperf3 through {side.label} failed: {result['error']}")

    def snapshot(self, side: Side) -> Snapshot:
        ns = self.net.ns
        stats = json.loads(sh("ip", "-j", "-s", "link", "show", f"fr{self.net.tag}s", ns=ns["resource"]))[0]
        skbs = int(stats["stats64"]["rx"]["packets"]) + int(stats["stats64"]["tx"]["packets"])
        return Snapshot(time.monotonic(), cpu_seconds(side.pid), side.counter.read() if side.counter else None,
                        nstat(ns["gateway"]), nstat(ns["client"]), nstat(ns["resource"]), skbs)

    def usage_text(self, usage: Usage, gb: float | None) -> str:
        cpu = f"CPU {usage.cpu / gb:.2f} s/GB" if gb else f"CPU {usage.cpu:.2f} s"
        per = usage.per_packet()
        calls = (f"{per:.2f} syscalls/packet ({usage.breakdown()})" if per is not None
                 else f"syscalls n/a ({self.syscalls_na or 'no packets'})")
        return (f"{cpu}; {calls}; {usage.packets} packets ({usage.skbs} on the resource veth); "
                f"UDP errors in/rcvbuf/sndbuf gateway ns {errors_text(usage.gw_errors)}, "
                f"client ns {errors_text(usage.client_errors)}")

    def tcp(self, side: Side, reverse: bool, streams: int) -> None:
        test = tcp_test(reverse, streams)
        extra = (["-R"] if reverse else []) + (["-P", str(streams)] if streams > 1 else [])
        before = self.snapshot(side)
        result = self.iperf(side, extra, self.seconds)
        usage = before.until(self.snapshot(side))
        end = result["end"]
        received = end["sum_received"]
        gbps, gb = received["bits_per_second"] / 1e9, received["bytes"] / 1e9
        usage.packets = round(received["bytes"] / TCP_PAYLOAD)  # data packets, see the module doc
        retrans = end["sum_sent"].get("retransmits", 0)
        side.add(f"{test}.gbps", gbps)
        side.add(f"{test}.retrans", float(retrans))
        side.add(f"{test}.cpu_pct", usage.cpu / usage.seconds * 100)
        side.add_usage(test, usage, gb)
        print(f"  [{side.label:>12}] TCP {direction(reverse):>4} x{streams} {gbps:6.3f} Gbit/s, {retrans} retransmits, "
              f"CPU {usage.cpu / usage.seconds * 100:.0f} %; {self.usage_text(usage, gb)}", flush=True)

    def udp(self, side: Side, reverse: bool) -> None:
        test = f"udp_{direction(reverse)}"
        trials: dict[float, tuple[float, float, Usage]] = {}  # rate -> (kpps received, GB received, usage)
        trace: list[str] = []

        def trial(mbps: float) -> bool:
            before = self.snapshot(side)
            extra = ["-u", "-b", f"{mbps:.1f}M", "-l", str(UDP_LEN), *(["-R"] if reverse else [])]
            result = self.iperf(side, extra, UDP_TRIAL_SECONDS)
            usage = before.until(self.snapshot(side))
            received = result["end"]["sum_received"]
            loss = float(received["lost_percent"])
            got = int(received["packets"]) - int(received["lost_packets"])
            usage.packets = got
            trials[mbps] = (got / float(received["seconds"]) / 1e3, got * UDP_LEN / 1e9, usage)
            gw_err = sum(usage.gw_errors.values()) - usage.gw_errors["InErrors"]  # rcvbuf + sndbuf
            trace.append(f"{mbps:.0f}:{loss:.1f}%" + (f"(gw {errors_text(usage.gw_errors)})" if gw_err else ""))
            return loss <= UDP_MAX_LOSS

        best = highest_rate(trial, UDP_START_MBPS, UDP_MAX_MBPS, UDP_MIN_MBPS, UDP_BISECT_STEPS)
        side.add(f"{test}.mbps", best)
        detail = ""
        if best:
            kpps, gb, usage = trials[best]
            side.add(f"{test}.kpps", kpps)
            side.add_usage(test, usage, gb)
            detail = f"; at that rate {kpps:.1f} kpps, {self.usage_text(usage, gb)}"
        print(f"  [{side.label:>12}] UDP {direction(reverse):>4} <=1% loss at {best:.0f} Mbit/s offered "
              f"({' '.join(trace)}){detail}", flush=True)

    def ping(self, side: Side) -> None:
        before = self.snapshot(side)
        done = self.client(["ping", "-q", "-c", str(PING_COUNT), "-i", str(PING_INTERVAL), "-I", side.src,
                            NetLab.RESOURCE], timeout=PING_COUNT * PING_INTERVAL + 10)
        usage = before.until(self.snapshot(side))
        ping = parse_ping(done.stdout)
        if ping is None:
            print(f"  [{side.label:>12}] ping failed: {done.stdout.strip()} {done.stderr.strip()}")
            return
        side.add("ping.ms", ping.avg_ms)
        side.add_usage("ping", usage, None)
        print(f"  [{side.label:>12}] ping avg {ping.avg_ms:.3f} ms (min {ping.min_ms:.3f}, max {ping.max_ms:.3f}, "
              f"loss {ping.loss} %); {self.usage_text(usage, None)}", flush=True)

    def measure(self, key: str) -> None:
        side = self.sides[key]
        self.use(key)
        self.ping(side)
        for reverse, streams in TCP_TESTS:
            self.tcp(side, reverse, streams)
        for reverse in (False, True):
            self.udp(side, reverse)

    def profile(self) -> None:
        """py-spy the gateway during an extra TCP run (in a separate, short window)."""
        pyspy = VENV_BIN / "py-spy"
        if not pyspy.exists():
            print("py-spy not installed in the venv (.venv/bin/pip install py-spy): no profile")
            return
        side = self.sides["a"]
        self.use("a")
        out = self.workdir / "py-spy.txt"
        spy = subprocess.Popen([str(pyspy), "record", "--pid", str(side.pid), "--format", "raw", "--nonblocking",
                                "--rate", "500", "--duration", str(self.seconds), "--output", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            self.iperf(side, [], self.seconds)
        finally:
            spy.wait(self.seconds + 20)
        print_profile(out)

    # --- report ----------------------------------------------------------------------------------

    def table(self, gate: LoadGate) -> None:
        sides = list(self.sides.values())
        refs = sides[1:]
        # (title, metric, format, higher is better: True/False, None = no ratio; "errors" rows are sums)
        rows: list[tuple[str, str, str, bool | None]] = [
            ("ping avg, ms (idle)", "ping.ms", "{:.3f}", False),
            ("  syscalls/packet", "ping.sys_pkt", "{:.1f}", False),
        ]
        for reverse, streams in TCP_TESTS:
            test = tcp_test(reverse, streams)
            way = "resource -> client (-R)" if reverse else "client -> resource"
            rows += [
                (f"TCP {way}, {streams} stream{'s' if streams > 1 else ''}, Gbit/s", f"{test}.gbps", "{:.3f}", True),
                ("  retransmits", f"{test}.retrans", "{:.0f}", False),
                ("  gateway CPU, % of a core", f"{test}.cpu_pct", "{:.0f}", None),
                ("  gateway CPU s/GB", f"{test}.cpu_gb", "{:.2f}", False),
                ("  gateway syscalls/packet", f"{test}.sys_pkt", "{:.2f}", False),
                ("  UDP errors gateway ns in/rcvbuf/sndbuf", f"{test}.gw", "", None),
                ("  UDP errors client ns in/rcvbuf/sndbuf", f"{test}.client", "", None),
            ]
        for reverse in (False, True):
            test = f"udp_{direction(reverse)}"
            way = "resource -> client (-R)" if reverse else "client -> resource"
            rows += [
                (f"UDP {way}, Mbit/s offered at <=1 % loss", f"{test}.mbps", "{:.0f}", True),
                ("  received at that rate, kpps", f"{test}.kpps", "{:.1f}", True),
                ("  gateway CPU s/GB", f"{test}.cpu_gb", "{:.2f}", False),
                ("  gateway syscalls/packet", f"{test}.sys_pkt", "{:.2f}", False),
                ("  UDP errors gateway ns in/rcvbuf/sndbuf", f"{test}.gw", "", None),
                ("  UDP errors client ns in/rcvbuf/sndbuf", f"{test}.client", "", None),
            ]
        mark = "*" if gate.flagged else ""
        head = ["measure (mean of runs; runs in brackets)", *(f"({s.key}) {s.label}" for s in sides),
                *(f"ours/{r.label}{mark}" for r in refs)]
        lines: list[list[str]] = []
        for title, metric, fmt, higher in rows:
            cells = [title]
            means: list[float | None] = []
            for side in sides:
                if not fmt:  # error counters: sums over the runs
                    errs = side.errors.get(metric)
                    cells.append(errors_text(errs) if errs is not None else "-")
                    means.append(None)
                    continue
                values = side.samples.get(metric, [])
                mean = statistics.fmean(values) if values else None
                means.append(mean)
                if mean is None:
                    na = metric.endswith(".sys_pkt") and self.syscalls_na
                    cells.append("n/a" if na else "-")
                else:
                    cells.append(f"{fmt.format(mean)} [{'/'.join(fmt.format(v) for v in values)}]")
            for mean in means[1:]:
                if higher is None or means[0] is None or not mean:
                    cells.append("-")
                elif not gate.ratios:
                    cells.append("n/a")
                else:
                    cells.append(f"{means[0] / mean:.2f}{mark}")
            lines.append(cells)
        widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
        print()
        print(f"load average at the start: {gate.start:.2f} (1 min); at the end: {loadavg()} (1, 5, 15 min)")
        if gate.flagged:
            print(f"* RATIOS UNDER LOAD {gate.start:.2f} (--force): no claim from them")
        for row in [head, *lines]:
            print(f"{row[0]:<{widths[0]}}" + "".join(f"  {c:>{w}}" for c, w in zip(row[1:], widths[1:], strict=True)))
        print("ratio > 1 is better for ours in throughput rows; < 1 is better for retransmits, ping, CPU s/GB "
              "and syscalls/packet.")
        if self.syscalls_na:
            print(f"syscalls/packet n/a: {self.syscalls_na}")
        if gate.flagged:
            print(f"* under load {gate.start:.2f}")
        elif gate.busy:
            print(gate.warning)

    def down(self) -> None:
        for side in self.sides.values():
            if side.counter is not None:
                side.counter.close()
        if self.portal is not None:
            self.portal.stop()
        self.net.down()


def print_profile(path: Path, top: int = 20) -> None:
    """Self and total time per function, and self time per line, from py-spy's raw stacks."""
    if not path.exists():
        print("py-spy wrote no profile")
        return
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    lines: dict[str, int] = {}
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        raw = stack.split(";")
        frames = [re.sub(r" \((.*?/)?([^/]+\.py):\d+\)", r" (\2)", f) for f in raw]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count
        leaf = re.sub(r"\((.*?/)?([^/]+\.py:\d+)\)", r"(\2)", raw[-1])
        lines[leaf] = lines.get(leaf, 0) + count
    if not samples:
        print("py-spy recorded no samples")
        return
    print(f"\npy-spy of our gateway during TCP: {samples} samples of the running thread (idle excluded)")
    print(f"{'self %':>7} {'total %':>8}  function")
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{100 * count / samples:7.1f} {100 * total[frame] / samples:8.1f}  {frame}")
    print(f"\n{'self %':>7}  line (the syscalls show up as the Python line that makes them)")
    for leaf, count in sorted(lines.items(), key=lambda kv: -kv[1])[:12]:
        print(f"{100 * count / samples:7.1f}  {leaf}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 TCP duration per run (default 5)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of a b ... b a: each side measured 2x per round")
    parser.add_argument("--force", action="store_true",
                        help=f"print ratios even when the 1-minute load exceeds {LOAD_LIMIT} at the start")
    parser.add_argument("--reference", action="append", default=[], metavar="PATH",
                        help=f"another wireguard-go-compatible gateway binary, measured beside {DEBIAN_WGGO} "
                             "(repeatable)")
    parser.add_argument("--client", default=DEBIAN_WGGO, metavar="PATH",
                        help=f"the wireguard-go binary of the client namespace (default {DEBIAN_WGGO})")
    parser.add_argument("--offloads", choices=("auto", "no-uso", "off"),
                        help="FIREZONE_OFFLOADS for our gateway (default: unset, the gateway's default)")
    parser.add_argument("--netem-delay", type=float, metavar="MS",
                        help="netem delay of MS ms each way on the client-gateway link (RTT + 2 x MS)")
    parser.add_argument("--no-syscall-count", action="store_true",
                        help="do not count system calls (the counters add a little to every call)")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway during one more TCP run")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the logs directory")
    args = parser.parse_args()
    for binary in [*args.reference, args.client]:
        if not os.access(binary, os.X_OK):
            parser.error(f"not an executable: {binary}")
    reason = netlab.available() or next((f"{tool} is not installed" for tool in ("iperf3", "nstat", "tc")
                                         if shutil.which(tool) is None), None)
    if reason:
        print(f"bench_tunnel: skipped, {reason}")
        return 0
    if args.netem_delay:
        why = netem_missing()
        if why:
            print(f"bench_tunnel: --netem-delay: the kernel's netem qdisc is not available here ({why})",
                  file=sys.stderr)
            return 2

    gate = LoadGate.now(args.force)
    print(f"load average at the start: {loadavg()} (1, 5, 15 min); {os.cpu_count()} CPUs", flush=True)
    if gate.busy:
        print(gate.warning, flush=True)

    def interrupted(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="fz-bench-tunnel-"))
    bench = Bench(workdir, args.seconds, [str(Path(r).resolve()) for r in args.reference], args.client,
                  args.offloads, args.netem_delay, not args.no_syscall_count)
    started = time.monotonic()
    ok = False
    try:
        bench.up()
        print(f"lab up in {time.monotonic() - started:.1f} s; TCP {args.seconds} s (1 and 4 streams, both ways), "
              f"UDP trials {UDP_TRIAL_SECONDS} s (both ways), ping {PING_COUNT} x {PING_INTERVAL} s")
        keys = list(bench.sides)
        order = (keys + keys[::-1]) * args.rounds
        for step, key in enumerate(order, 1):
            print(f"run {step}/{len(order)}: ({key}) {bench.sides[key].label}", flush=True)
            bench.measure(key)
        bench.table(gate)
        assert bench.gateway is not None and bench.lab is not None
        print(log_gate_report([bench.gateway.output()], bench.lab.logs))
        if args.profile:
            bench.profile()
        ok = True
    finally:
        bench.down()
        finish_workdir(workdir, ok=ok, keep=args.keep_workdir)
    print(f"total {time.monotonic() - started:.0f} s")
    return EXIT_LOADED if gate.busy and not gate.force else 0


if __name__ == "__main__":
    sys.exit(main())
