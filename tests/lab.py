"""The namespace lab, running: dev portal, gateway, resource servers, DNS, a wireguard-go client.

Shared by the integration tests (through conftest fixtures), the benchmarks and `make demo-netns`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tests import netlab
from tests.hygiene import LogGate, current_gate
from tests.procs import VENV_BIN, DevPortalProc, Proc, base_env, http, wait_for

LAB_TOKEN = "lab-gateway-token-0123456789abcdef"


class Lab:
    """One running lab: portal in the root ns, gateway, client and resources in theirs."""

    def __init__(self, net: netlab.NetLab, portal: DevPortalProc) -> None:
        self.net = net
        self.portal = portal
        self.gateway: Proc | None = None
        self.health = ""
        self.client: netlab.WireGuardClient | None = None
        self.dns: LabDns | None = None
        self.logs: LogGate = current_gate()  # the WARN/ERROR lines the running test provokes

    def start_dns(self, records: list[str]) -> LabDns:
        self.dns = LabDns(self.net, records)
        return self.dns

    def start_gateway(self, extra_env: dict[str, str] | None = None) -> Proc:
        health = f"{self.net.MGMT_GATEWAY}:8080"
        probe: dict[str, str] = {}
        if self.dns is None:
            # No DNS server in this lab: the TUN DNS server's probe rightly finds none.
            self.logs.allow(r"TUN DNS server: no nameserver answered")
        else:  # the lab's zone apex answers NOERROR, as the probe wants
            probe = {"FIREZONE_DNS_PROBE_NAME": "lab.test"}
        env = base_env() | {
            "FIREZONE_TOKEN": LAB_TOKEN,
            "FIREZONE_ID": "b" * 64,
            "FIREZONE_NAME": "lab-gateway",
            "FIREZONE_API_URL": self.portal.url,
            "HEALTH_CHECK_ADDR": health,
            "FIREZONE_NO_TELEMETRY": "true",
            "RUST_LOG": "debug",
        } | probe | (extra_env or {})
        init = self.net.spawn("gateway", [str(VENV_BIN / "firezone-gateway-init"), "--egress-interface",
                                          f"fr{self.net.tag}g"], base_env(), "gateway-init")
        if init.popen.wait(30) != 0:
            raise RuntimeError(f"firezone-gateway-init failed: {init.output()}")
        self.gateway = self.net.spawn("gateway", [str(VENV_BIN / "firezone-gateway")], env, "gateway")
        self.health = f"http://{health}"
        wait_for(lambda: self.readyz() == 200 or not self.gateway.running(), 20, "gateway ready")
        assert self.gateway.running(), self.gateway.output()
        return self.gateway

    def readyz(self) -> int | None:
        try:
            return http("GET", self.health + "/readyz", timeout=2)[0]
        except OSError:
            return None

    def metrics(self) -> str:
        return http("GET", self.health + "/metrics", timeout=5)[1]

    def gateway_record(self) -> dict[str, Any]:
        return next(g for g in self.portal.gateways() if g["joined"])

    def authorize(self, resource: dict[str, Any], protocol: str = "1.4", expires_at: int | None = None,
                  client: netlab.WireGuardClient | None = None) -> dict[str, Any]:
        client = client or self.client
        assert client is not None
        body = {"gateway": self.gateway_record()["id"], "protocol": protocol, "client": client.flow_client(),
                "resource": resource}
        if expires_at is not None:
            body["expires_at"] = expires_at
        status, flow = self.portal.api("POST", "/v1/flows", body)
        assert status == 201, flow
        return flow

    def connect_client(self, flow: dict[str, Any], routes: list[str]) -> netlab.WireGuardClient:
        assert self.client is not None
        gw = flow["gateway"]
        self.client.connect(gw["public_key"], f"{netlab.NetLab.GATEWAY_OUTER}:{gw['port']}",
                            [*routes, f"{gw['ipv4']}/32"])
        return self.client

    def client_sh(self, *argv: str, check: bool = False, timeout: float = 10) -> tuple[int, str]:
        import subprocess

        done = subprocess.run(["ip", "netns", "exec", self.net.ns["client"], *argv], capture_output=True,
                              text=True, timeout=timeout, check=False)
        if check:
            assert done.returncode == 0, done.stderr
        return done.returncode, done.stdout + done.stderr

    def curl(self, url: str, timeout: float = 3) -> tuple[int, str]:
        return self.client_sh("curl", "-sS", "--max-time", str(timeout), url, timeout=timeout + 5)

    def serve_http(self, address: str, port: int, body: str) -> Proc:
        root = self.net.workdir / f"www-{address}-{port}"
        root.mkdir(exist_ok=True)
        (root / "index.html").write_text(body)
        proc = self.net.spawn("resource", ["python3", "-m", "http.server", "--bind", address, str(port),
                                           "--directory", str(root)], base_env(), f"http-{address}-{port}")
        wait_for(lambda: f"{address}:{port}" in netlab.sh("ss", "-ltn", ns=self.net.ns["resource"]), 10,
                 f"http server {address}:{port}")
        return proc


class LabDns:
    """unbound in the resource namespace on 198.18.2.2:53, serving `lab.test.` records we write.

    The gateway namespace's resolv.conf (/etc/netns/<ns>/resolv.conf) points at it, so the
    gateway resolves through its ordinary system configuration, as on a real host.
    """

    def __init__(self, net: netlab.NetLab, records: list[str], soa_minimum: int = 2) -> None:
        import tempfile

        self.net = net
        # unbound-control's socket path must fit in sun_path: keep it short.
        self.dir = Path(tempfile.mkdtemp(prefix="fzl-"))
        soa = f"lab.test. 10 IN SOA ns.lab.test. admin.lab.test. 1 3600 600 86400 {soa_minimum}"
        data = "\n".join(f'    local-data: "{rr}"' for rr in [soa, *records])
        self.config = self.dir / "unbound.conf"
        self.config.write_text(f"""server:
    interface: {netlab.NetLab.RESOURCE}
    port: 53
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{self.dir}"
    pidfile: "{self.dir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    num-threads: 1
    do-ip6: no
    access-control: 0.0.0.0/0 allow
    module-config: "iterator"
    local-zone: "." refuse
    local-zone: "lab.test." static
{data}
remote-control:
    control-enable: yes
    control-interface: {self.dir}/ctl.sock
""")
        self.proc = net.spawn("resource", ["unbound", "-d", "-c", str(self.config)], base_env(), "unbound")
        wait_for(lambda: self.control("status") is not None, 10, "unbound up")

    def control(self, *args: str) -> str | None:
        import subprocess

        done = subprocess.run(["ip", "netns", "exec", self.net.ns["resource"], "unbound-control", "-c",
                               str(self.config), *args], capture_output=True, text=True, check=False, timeout=10)
        return done.stdout if done.returncode == 0 else None

    def replace(self, name: str, *records: str) -> None:
        assert self.control("local_data_remove", name) is not None
        for record in records:
            assert self.control("local_data", *record.split()) is not None

    def queries(self) -> int:
        out = self.control("stats_noreset") or ""
        for line in out.splitlines():
            if line.startswith("total.num.queries="):
                return int(line.split("=", 1)[1])
        raise AssertionError("unbound has no query counter")

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


