"""Data plane side by side: our gateway vs a wireguard-go "gateway", same client, same resource.

    .venv/bin/python bench/bench_tunnel.py [--seconds N] [--rounds R] [--profile]

One lab (tests/netlab.py): the same wireguard-go client namespace and the same resource
namespace, with two gateways running at once in the gateway namespace:

  (a) ours: `firezone-gateway-init --egress-interface <veth>` then `firezone-gateway`, joined
      to the dev portal, the client authorized for the cidr resource 198.18.2.0/24 (no
      filters), client tunnel address 100.64.0.2;
  (b) wireguard-go on `wgg<tag>` (UDP 51820), configured with `wg` with the client as its
      peer; the same FORWARD accepts for its interface, and the MASQUERADE rule the init
      wrote (by source range and egress interface) covers it too. Client tunnel address
      100.64.0.3; an `ip rule` (priority 900) sends that address to wireguard-go ahead of the
      gateway's fwmark rule, so both stay up and the order can alternate.

The client switches gateways by moving the resource prefix between its two peers
(`wg set ... allowed-ips`) and by binding iperf3/ping to the matching source address.
Each round measures in the order a, b, b, a (ABBA) so drift hits both sides equally.

Per gateway: iperf3 TCP client -> resource (throughput, retransmits, gateway CPU), UDP
highest offered rate with <= 1 % loss (`-l 1200`, a doubling-then-bisecting search of
1 s trials), and ping (50 at 0.05 s, idle). Output: a table with both columns and the ratio
ours / wireguard-go. These machines are noisy (~1.8x between runs): compare the ratio.

`--profile` also records the gateway with py-spy (if installed in the venv) during an extra
TCP run and prints the top functions. Needs root, iperf3, wireguard-go and wg.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway_pkg.netconst import TUN_MTU, TUN_TXQUEUELEN  # noqa: E402
from tests import netlab  # noqa: E402
from tests.lab import LAB_TOKEN, Lab  # noqa: E402
from tests.netlab import NetLab, sh  # noqa: E402
from tests.procs import VENV_BIN, DevPortalProc, base_env, wait_for  # noqa: E402

RESOURCE_NET = "198.18.2.0/24"
OURS_SRC = "100.64.0.2"  # the client's tunnel address known to the portal
WGGO_SRC = "100.64.0.3"  # the same client, as seen by the wireguard-go gateway
WGGO_TUNNEL_IP = "100.95.255.254"  # the wireguard-go gateway's own tunnel address
WGGO_PORT = 51820
WGGO_RULE_PRIORITY = 900
IPERF_PORT = 5201
UDP_LEN = 1200  # + 28 bytes of IP/UDP headers fits MTU 1280
UDP_MAX_LOSS = 1.0  # percent
UDP_TRIAL_SECONDS = 1
UDP_START_MBPS = 50
UDP_MAX_MBPS = 3200
UDP_BISECT_STEPS = 3
PING_COUNT = 50
PING_INTERVAL = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Side:
    key: str
    label: str
    src: str
    peer_public_key: str
    peer_own_ip: str
    pid: int
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float | None) -> None:
        if value is not None:
            self.samples.setdefault(name, []).append(value)


class Bench:
    def __init__(self, workdir: Path, seconds: int) -> None:
        self.workdir = workdir
        self.seconds = seconds
        self.net = NetLab(workdir)
        self.portal: DevPortalProc | None = None
        self.lab: Lab | None = None
        self.sides: dict[str, Side] = {}
        self.active: str | None = None

    # --- setup --------------------------------------------------------------------------------

    def up(self) -> None:
        net = self.net.up()
        self.portal = DevPortalProc(self.workdir, host=net.MGMT_ROOT, gateway_token=LAB_TOKEN)
        lab = self.lab = Lab(net, self.portal)
        client = lab.client = net.new_client()
        client.start()
        cl_ns, gw_ns, rs_ns = net.ns["client"], net.ns["gateway"], net.ns["resource"]
        sh("ip", "addr", "add", f"{WGGO_SRC}/32", "dev", client.ifname, ns=cl_ns)

        # (a) our gateway; INFO logging so the hot path runs as in production.
        gateway = lab.start_gateway({"RUST_LOG": "info"})
        flow = lab.authorize({"type": "cidr", "address": RESOURCE_NET, "filters": []})
        assert flow["status"] == "authorized", flow
        lab.connect_client(flow, [RESOURCE_NET])
        ours_ip = flow["gateway"]["ipv4"]
        self.sides["a"] = Side("a", "ours", OURS_SRC, flow["gateway"]["public_key"], f"{ours_ip}/32", gateway.pid)

        # (b) wireguard-go as a plain gateway in the same namespace.
        ifname = f"wgg{net.tag}"
        env = base_env() | {"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
        wggo = net.spawn("gateway", ["wireguard-go", ifname], env, f"wireguard-go-{ifname}")
        net.wait_link("gateway", ifname)
        private = sh("wg", "genkey").strip()
        public = sh("wg", "pubkey", input_text=private + "\n").strip()
        keyfile, pskfile = self.workdir / f"{ifname}.key", self.workdir / f"{ifname}.psk"
        keyfile.write_text(private + "\n")
        pskfile.write_text(client.preshared_key + "\n")
        os.chmod(keyfile, 0o600)
        os.chmod(pskfile, 0o600)
        sh("wg", "set", ifname, "private-key", str(keyfile), "listen-port", str(WGGO_PORT),
           "peer", client.public_key, "preshared-key", str(pskfile), "allowed-ips", f"{WGGO_SRC}/32", ns=gw_ns)
        sh("ip", "addr", "add", f"{WGGO_TUNNEL_IP}/32", "dev", ifname, ns=gw_ns)
        # Same MTU and queue length as tun-firezone.
        sh("ip", "link", "set", ifname, "mtu", str(TUN_MTU), "txqueuelen", str(TUN_TXQUEUELEN), "up", ns=gw_ns)
        sh("ip", "route", "add", f"{WGGO_SRC}/32", "dev", ifname, ns=gw_ns)
        sh("ip", "rule", "add", "to", f"{WGGO_SRC}/32", "lookup", "main", "priority", str(WGGO_RULE_PRIORITY),
           ns=gw_ns)
        for rule in (("-i", ifname, "-j", "ACCEPT"), ("-o", ifname, "-j", "ACCEPT")):
            sh("iptables", "-w", "-I", "FORWARD", "1", *rule, ns=gw_ns)
        sh("wg", "set", client.ifname, "peer", public, "preshared-key", str(self.workdir / f"{client.ifname}.psk"),
           "endpoint", f"{NetLab.GATEWAY_OUTER}:{WGGO_PORT}", "allowed-ips", f"{WGGO_TUNNEL_IP}/32",
           "persistent-keepalive", "25", ns=cl_ns)
        sh("ip", "route", "replace", f"{WGGO_TUNNEL_IP}/32", "dev", client.ifname, ns=cl_ns)
        self.sides["b"] = Side("b", "wireguard-go", WGGO_SRC, public, f"{WGGO_TUNNEL_IP}/32", wggo.pid)

        net.spawn("resource", ["iperf3", "-s", "-B", NetLab.RESOURCE, "-p", str(IPERF_PORT)], base_env(),
                  "iperf3-server")
        wait_for(lambda: f"{NetLab.RESOURCE}:{IPERF_PORT}" in sh("ss", "-ltn", ns=rs_ns), 10, "iperf3 server")
        for key in ("a", "b"):
            self.use(key)
        masq = sh("iptables", "-t", "nat", "-S", "POSTROUTING", ns=gw_ns).strip().splitlines()
        print("gateway ns NAT:", "; ".join(line for line in masq if "MASQUERADE" in line))

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
        return subprocess.run(["ip", "netns", "exec", self.net.ns["client"], *argv], capture_output=True,
                              text=True, timeout=timeout, check=False)

    def iperf(self, side: Side, extra: list[str], seconds: float) -> dict:
        argv = ["iperf3", "-c", NetLab.RESOURCE, "-p", str(IPERF_PORT), "-B", side.src, "-J",
                "-t", str(seconds), *extra]
        for attempt in range(3):
            done = self.client(argv, timeout=seconds + 20)
            try:
                result = json.loads(done.stdout)
            except ValueError:
                result = {"error": done.stderr.strip() or "no output"}
            if "error" not in result:
                return result
            if attempt < 2:  # "the server is busy": the previous test is still closing
                time.sleep(0.5)
        raise RuntimeError(f"iperf3 through {side.label} failed: {result['error']}")

    def cpu_seconds(self, pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def tcp(self, side: Side) -> None:
        cpu0, t0 = self.cpu_seconds(side.pid), time.monotonic()
        result = self.iperf(side, [], self.seconds)
        cpu = (self.cpu_seconds(side.pid) - cpu0) / (time.monotonic() - t0) * 100
        end = result["end"]
        side.add("tcp_gbps", end["sum_received"]["bits_per_second"] / 1e9)
        side.add("tcp_retrans", float(end["sum_sent"].get("retransmits", 0)))
        side.add("tcp_cpu", cpu)
        print(f"  [{side.label:>12}] TCP {end['sum_received']['bits_per_second'] / 1e9:6.3f} Gbit/s, "
              f"{end['sum_sent'].get('retransmits', 0)} retransmits, gateway CPU {cpu:.0f} %", flush=True)

    def udp_trial(self, side: Side, mbps: float) -> tuple[float, float]:
        result = self.iperf(side, ["-u", "-b", f"{mbps:.0f}M", "-l", str(UDP_LEN)], UDP_TRIAL_SECONDS)
        total = result["end"]["sum"]
        return float(total["lost_percent"]), float(total["bits_per_second"]) / 1e6

    def udp(self, side: Side) -> None:
        """Double from UDP_START_MBPS until loss > 1 %, then bisect between the last pass and fail."""
        best, best_rx, fail = 0.0, 0.0, None
        rate = UDP_START_MBPS
        trace = []
        while rate <= UDP_MAX_MBPS:
            loss, _rx = self.udp_trial(side, rate)
            trace.append(f"{rate:.0f}:{loss:.1f}%")
            if loss > UDP_MAX_LOSS:
                fail = rate
                break
            best, best_rx = rate, _rx * (1 - loss / 100)
            rate *= 2
        if fail is not None:
            low, high = best, fail
            for _ in range(UDP_BISECT_STEPS):
                mid = (low + high) / 2
                loss, rx = self.udp_trial(side, mid)
                trace.append(f"{mid:.0f}:{loss:.1f}%")
                if loss <= UDP_MAX_LOSS:
                    low, best, best_rx = mid, mid, rx * (1 - loss / 100)
                else:
                    high = mid
        side.add("udp_mbps", best)
        side.add("udp_kpps", best_rx * 1e6 / ((UDP_LEN + 28) * 8) / 1e3 if best else 0.0)
        print(f"  [{side.label:>12}] UDP <=1% loss at {best:.0f} Mbit/s offered  ({' '.join(trace)})", flush=True)

    def ping(self, side: Side) -> None:
        done = self.client(["ping", "-q", "-c", str(PING_COUNT), "-i", str(PING_INTERVAL), "-I", side.src,
                            NetLab.RESOURCE], timeout=PING_COUNT * PING_INTERVAL + 10)
        match = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", done.stdout)
        lost = re.search(r"([\d.]+)% packet loss", done.stdout)
        if match is None:
            print(f"  [{side.label:>12}] ping failed: {done.stdout.strip()} {done.stderr.strip()}")
            return
        side.add("ping_ms", float(match.group(2)))
        print(f"  [{side.label:>12}] ping avg {match.group(2)} ms (min {match.group(1)}, max {match.group(3)}, "
              f"loss {lost.group(1) if lost else '?'} %)", flush=True)

    def measure(self, key: str) -> None:
        side = self.sides[key]
        self.use(key)
        self.ping(side)
        self.tcp(side)
        self.udp(side)

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

    def table(self) -> None:
        a, b = self.sides["a"], self.sides["b"]
        rows = [
            ("iperf3 TCP, Gbit/s", "tcp_gbps", "{:.3f}", True),
            ("TCP retransmits", "tcp_retrans", "{:.0f}", False),
            ("gateway CPU during TCP, % of a core", "tcp_cpu", "{:.0f}", None),
            (f"UDP offered at <=1 % loss (-l {UDP_LEN}), Mbit/s", "udp_mbps", "{:.0f}", True),
            ("UDP received at that rate, kpps", "udp_kpps", "{:.1f}", True),
            ("ping avg, ms (lower is better)", "ping_ms", "{:.3f}", False),
        ]
        print()
        print(f"{'measure (mean of runs; runs in brackets)':<46} {'ours':>22} {'wireguard-go':>22} {'ours/wg-go':>10}")
        for title, name, fmt, _higher in rows:
            cells, means = [], []
            for side in (a, b):
                values = side.samples.get(name, [])
                mean = statistics.fmean(values) if values else None
                means.append(mean)
                runs = "/".join(fmt.format(v) for v in values)
                cells.append(f"{fmt.format(mean) if mean is not None else '-'} [{runs}]")
            ratio = f"{means[0] / means[1]:.2f}" if means[0] is not None and means[1] else "-"
            print(f"{title:<46} {cells[0]:>22} {cells[1]:>22} {ratio:>10}")
        print("ratio > 1 is better for ours in throughput rows; < 1 is better for retransmits and ping.")

    def down(self) -> None:
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 TCP duration per run (default 5)")
    parser.add_argument("--rounds", type=int, default=1, help="ABBA rounds: each side measured 2x per round")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway during one more TCP run")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the logs directory")
    args = parser.parse_args()
    reason = netlab.available() or (None if shutil.which("iperf3") else "iperf3 is not installed")
    if reason:
        print(f"bench_tunnel: skipped, {reason}")
        return 0

    def interrupted(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="fz-bench-tunnel-"))
    bench = Bench(workdir, args.seconds)
    started = time.monotonic()
    ok = False
    try:
        bench.up()
        print(f"lab up in {time.monotonic() - started:.1f} s; {os.cpu_count()} CPUs; "
              f"TCP {args.seconds} s, UDP trials {UDP_TRIAL_SECONDS} s, ping {PING_COUNT} x {PING_INTERVAL} s")
        order = ["a", "b", "b", "a"] * args.rounds
        for step, key in enumerate(order, 1):
            print(f"run {step}/{len(order)}: {bench.sides[key].label}", flush=True)
            bench.measure(key)
        bench.table()
        if args.profile:
            bench.profile()
        ok = True
    finally:
        bench.down()
        if not ok:
            for log in sorted(workdir.glob("*.log")):
                print(f"===== {log.name} (last 20 lines)", file=sys.stderr)
                print("\n".join(log.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr)
        if args.keep_workdir or not ok:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
