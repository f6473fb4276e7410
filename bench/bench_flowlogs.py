"""What the flow logs cost: our gateway with FIREZONE_FLOW_LOGS on beside the same gateway
with them off, same client, same resource, in one run.

    sudo .venv/bin/python bench/bench_flowlogs.py [--seconds N] [--rounds R] [--flows N] [--force]

One namespace lab (tests/netlab.py): Debian's wireguard-go client, our gateway, an iperf3 and
an HTTP server on the resource. Per round the gateway runs off, on, on, off (ABBA, restarted
each time with the other setting and the client authorized again), and each visit measures:

  TCP up / down   iperf3, one stream, N seconds (default 5): Gbit/s and the gateway's CPU
                  seconds per GB (utime + stime of the process over the test);
  short flows     N (default 200) HTTP requests through the tunnel, one connection each
                  (each one flow start and end line when on): requests per second and CPU
                  milliseconds per request.

The table gives the mean of the visits per setting (each run in brackets) and on / off; the
cost claimed in docs/metrics.md is 1 - that ratio for Gbit/s and requests/s, and ratio - 1 for
CPU. The 1-minute load is printed before and after; above 0.5 at the start the ratios are
withheld and the exit status is 3, unless --force (ratios then marked as taken under load).
The flow logs' lines are counted in the gateway's output to show they were really written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from common import IPERF_PORT, LoadGate, cpu_seconds, in_netns, iperf_idle, loadavg, log_gate_report  # noqa: E402

from tests import netlab  # noqa: E402
from tests.lab import LAB_TOKEN, Lab  # noqa: E402
from tests.netlab import NetLab, sh  # noqa: E402
from tests.procs import DevPortalProc, base_env, wait_for  # noqa: E402

RESOURCE_NET = "198.18.2.0/24"
HTTP_PORT = 80
EXIT_LOADED = 3
SETTINGS = {"off": {}, "on": {"FIREZONE_FLOW_LOGS": "true"}}


class Bench:
    def __init__(self, workdir: Path, seconds: int, flows: int) -> None:
        self.workdir = workdir
        self.seconds = seconds
        self.flows = flows
        self.net = netlab.NetLab(workdir)
        self.portal: DevPortalProc | None = None
        self.lab: Lab | None = None
        self.results: dict[str, dict[str, list[float]]] = {mode: {} for mode in SETTINGS}
        self.flow_lines = dict.fromkeys(SETTINGS, 0)
        self.outputs: list[str] = []

    def up(self) -> None:
        net = self.net.up()
        self.portal = DevPortalProc(self.workdir, host=net.MGMT_ROOT, gateway_token=LAB_TOKEN)
        self.lab = Lab(net, self.portal)
        self.lab.client = net.new_client()
        self.lab.client.start()
        net.spawn("resource", ["iperf3", "-s", "-B", NetLab.RESOURCE, "-p", str(IPERF_PORT)], base_env(),
                  "iperf3-server")
        self.lab.serve_http(NetLab.RESOURCE, HTTP_PORT, "ok\n")
        wait_for(lambda: f"{NetLab.RESOURCE}:{IPERF_PORT}" in sh("ss", "-ltn", ns=net.ns["resource"]), 10,
                 "iperf3 server")

    def down(self) -> None:
        if self.lab is not None and self.lab.gateway is not None and self.lab.gateway.running():
            self.lab.gateway.stop()
        if self.portal is not None:
            self.portal.stop()
        self.net.down()

    def client(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return in_netns(self.net.ns["client"], argv, timeout)

    def iperf_idle(self) -> bool:
        return iperf_idle(self.net.ns["resource"])

    def visit(self, mode: str) -> None:
        lab = self.lab
        assert lab is not None
        if lab.gateway is not None and lab.gateway.running():
            lab.gateway.stop()
        gateway = lab.start_gateway({"RUST_LOG": "info"} | SETTINGS[mode])
        flow = lab.authorize({"type": "cidr", "address": RESOURCE_NET, "filters": []})
        assert flow["status"] == "authorized", flow
        lab.connect_client(flow, [RESOURCE_NET])
        wait_for(lambda: self.client(["ping", "-c", "1", "-W", "1", NetLab.RESOURCE], 5).returncode == 0, 15,
                 "a ping through the tunnel")
        results = self.results[mode]
        for reverse in (False, True):
            wait_for(self.iperf_idle, 15, "the previous iperf3 test to close")
            before = cpu_seconds(gateway.pid)
            done = self.client(["iperf3", "-c", NetLab.RESOURCE, "-p", str(IPERF_PORT), "-J", "-t",
                                str(self.seconds), *(["-R"] if reverse else [])], self.seconds + 30)
            cpu = cpu_seconds(gateway.pid) - before
            received = json.loads(done.stdout)["end"]["sum_received"]
            name = "tcp_down" if reverse else "tcp_up"
            results.setdefault(f"{name}.gbps", []).append(received["bits_per_second"] / 1e9)
            results.setdefault(f"{name}.cpu_s_per_gb", []).append(cpu / (received["bytes"] / 1e9))
            print(f"  [{mode:>3}] TCP {name[4:]:>4} {received['bits_per_second'] / 1e9:6.3f} Gbit/s, "
                  f"CPU {cpu / (received['bytes'] / 1e9):.2f} s/GB", flush=True)
        url = f"http://{NetLab.RESOURCE}:{HTTP_PORT}/"
        before, start = cpu_seconds(gateway.pid), time.monotonic()
        loop = (f"for i in $(seq {self.flows}); do curl -s -o /dev/null --max-time 5 {url} || exit 1; done")
        done = self.client(["sh", "-c", loop], timeout=self.flows * 5 + 30)
        elapsed, cpu = time.monotonic() - start, cpu_seconds(gateway.pid) - before
        if done.returncode != 0:
            raise RuntimeError(f"HTTP requests through the tunnel failed: {done.stderr.strip()}")
        results.setdefault("flows.per_s", []).append(self.flows / elapsed)
        results.setdefault("flows.cpu_ms", []).append(cpu / self.flows * 1000)
        print(f"  [{mode:>3}] {self.flows} short flows {self.flows / elapsed:6.1f}/s, "
              f"CPU {cpu / self.flows * 1000:.2f} ms each", flush=True)
        gateway.stop()
        self.flow_lines[mode] += sum(1 for line in gateway.output().splitlines() if "gateway_pkg.flows: Flow" in line)
        self.outputs.append(gateway.output())


ROWS = [("tcp_up.gbps", "TCP up, Gbit/s"), ("tcp_up.cpu_s_per_gb", "TCP up, CPU s/GB"),
        ("tcp_down.gbps", "TCP down, Gbit/s"), ("tcp_down.cpu_s_per_gb", "TCP down, CPU s/GB"),
        ("flows.per_s", "short flows per s"), ("flows.cpu_ms", "CPU ms per short flow")]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 duration per test (default 5)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of off on on off (default 1)")
    parser.add_argument("--flows", type=int, default=200, help="short HTTP flows per visit (default 200)")
    parser.add_argument("--force", action="store_true", help="print ratios even when the machine is busy")
    args = parser.parse_args()
    why = netlab.available()
    if why:
        print(f"bench_flowlogs: {why}", file=sys.stderr)
        return 2
    gate = LoadGate.now(args.force)
    print(f"load average before: {loadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-flowlogs-") as tmp:
        bench = Bench(Path(tmp), args.seconds, args.flows)
        try:
            bench.up()
            for _ in range(args.rounds):
                for mode in ("off", "on", "on", "off"):
                    bench.visit(mode)
        finally:
            bench.down()
    print(f"load average after: {loadavg()}")
    print(f"flow-log lines written: off {bench.flow_lines['off']}, on {bench.flow_lines['on']}")
    assert bench.lab is not None
    print(log_gate_report(bench.outputs, bench.lab.logs))
    print(f"\n{'':24} {'flow logs off':>30} {'flow logs on':>30} {'on / off':>9}")
    for key, label in ROWS:
        off, on = bench.results["off"].get(key, []), bench.results["on"].get(key, [])
        if not off or not on:
            continue
        cells = [f"{statistics.mean(v):.3f} [{' '.join(f'{x:.3f}' for x in v)}]" for v in (off, on)]
        ratio = f"{statistics.mean(on) / statistics.mean(off):.3f}" if gate.ratios else "-"
        print(f"{label:24} {cells[0]:>30} {cells[1]:>30} {ratio:>9}")
    print(gate.warning)
    return EXIT_LOADED if not gate.ratios else 0


if __name__ == "__main__":
    sys.exit(main())
