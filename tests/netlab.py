"""A three-host lab in network namespaces: client ── gateway ── resource, plus a management link.

Used by the data-plane integration tests, the benchmarks and `make demo-netns`. Every name carries
a random tag so that runs never collide; `down()` removes everything `up()` made and stops
every process the lab started, by PID.

    root ns  198.18.X.1 ──mgmt── 198.18.X.2  gateway ns   (dev portal listens in root ns; X per lab)
    client   198.18.1.2 ──────── 198.18.1.1  gateway
    gateway  198.18.2.1 ──────── 198.18.2.2  resource (+ .3, .4 as extra resource addresses)
Addresses come from 198.18.0.0/15 (benchmarking range) and exist only inside these namespaces.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from gateway_pkg.netconst import SYSCTLS
from tests.procs import Proc, base_env

NETNS_ETC = Path("/etc/netns")


def sh(*argv: str, check: bool = True, ns: str | None = None, input_text: str | None = None) -> str:
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    done = subprocess.run(full, capture_output=True, text=True, input=input_text, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def available() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "wireguard-go", "wg", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (run `make deps`)"
    return None


@dataclass
class WireGuardClient:
    """A stock wireguard-go + wg peer in the client namespace."""

    lab: NetLab
    ifname: str
    private_key: str
    public_key: str
    preshared_key: str
    ipv4: str = "100.64.0.2"
    ipv6: str = "fd00:2021:1111::2"
    proc: Proc | None = None

    def start(self) -> None:
        env = base_env() | {"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
        self.proc = self.lab.spawn("client", ["wireguard-go", self.ifname], env, f"wireguard-go-{self.ifname}")
        self.lab.wait_link("client", self.ifname)
        ns = self.lab.ns["client"]
        sh("ip", "addr", "add", f"{self.ipv4}/32", "dev", self.ifname, ns=ns)
        sh("ip", "-6", "addr", "add", f"{self.ipv6}/128", "dev", self.ifname, ns=ns)
        sh("ip", "link", "set", self.ifname, "mtu", "1280", "up", ns=ns)

    def connect(self, gateway_public_key: str, endpoint: str, routes: list[str], keepalive: int = 25) -> None:
        ns = self.lab.ns["client"]
        keyfile = self.lab.workdir / f"{self.ifname}.key"
        pskfile = self.lab.workdir / f"{self.ifname}.psk"
        keyfile.write_text(self.private_key + "\n")
        pskfile.write_text(self.preshared_key + "\n")
        os.chmod(keyfile, 0o600)
        os.chmod(pskfile, 0o600)
        sh("wg", "set", self.ifname, "private-key", str(keyfile), "peer", gateway_public_key,
           "preshared-key", str(pskfile), "endpoint", endpoint, "allowed-ips", ",".join(routes),
           "persistent-keepalive", str(keepalive), ns=ns)
        for route in routes:
            sh("ip", "-6" if ":" in route else "-4", "route", "replace", route, "dev", self.ifname, ns=ns)

    def latest_handshake(self) -> int:
        out = sh("wg", "show", self.ifname, "latest-handshakes", ns=self.lab.ns["client"])
        parts = out.split()
        return int(parts[1]) if len(parts) >= 2 else 0

    def flow_client(self) -> dict[str, str]:
        return {"public_key": self.public_key, "preshared_key": self.preshared_key,
                "ipv4": self.ipv4, "ipv6": self.ipv6}


@dataclass
class NetLab:
    workdir: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    procs: list[Proc] = field(default_factory=list)
    ns: dict[str, str] = field(default_factory=dict)
    _root_link: str | None = None

    # Set per lab in up() (a subnet derived from the tag), so two labs can run at once.
    MGMT_ROOT = ""
    MGMT_GATEWAY = ""
    GATEWAY_OUTER = "198.18.1.1"
    CLIENT_OUTER = "198.18.1.2"
    GATEWAY_INNER = "198.18.2.1"
    RESOURCE = "198.18.2.2"
    RESOURCE_EXTRA = ("198.18.2.3", "198.18.2.4")
    RESOURCE_V6 = "fd42:2::2"

    def up(self) -> NetLab:
        t = self.tag
        self.ns = {"gateway": f"fzgw-{t}", "client": f"fzcl-{t}", "resource": f"fzrs-{t}"}
        for name in self.ns.values():
            sh("ip", "netns", "add", name)
            sh("ip", "link", "set", "lo", "up", ns=name)
        gw, cl, rs = self.ns["gateway"], self.ns["client"], self.ns["resource"]
        subnet = 128 + int(t, 16) % 120
        self.MGMT_ROOT, self.MGMT_GATEWAY = f"198.18.{subnet}.1", f"198.18.{subnet}.2"
        self._veth(f"fm{t}r", None, f"{self.MGMT_ROOT}/30", None, f"fm{t}g", gw, f"{self.MGMT_GATEWAY}/30", None)
        self._root_link = f"fm{t}r"
        self._veth(f"fc{t}c", cl, "198.18.1.2/24", "fd42:1::2/64", f"fc{t}g", gw, "198.18.1.1/24", "fd42:1::1/64")
        self._veth(f"fr{t}g", gw, "198.18.2.1/24", "fd42:2::1/64", f"fr{t}s", rs, "198.18.2.2/24", "fd42:2::2/64")
        for extra in self.RESOURCE_EXTRA:
            sh("ip", "addr", "add", f"{extra}/24", "dev", f"fr{t}s", ns=rs)
        # The resource side is the gateway's way out, as a real host's default route would be.
        sh("ip", "route", "add", "default", "via", self.RESOURCE, ns=gw)
        sh("ip", "-6", "route", "add", "default", "via", "fd42:2::2", ns=gw)
        # What firezone-gateway-init sets on a host (it also sets them in the tests that run it).
        for key, value in SYSCTLS.items():
            sh("sysctl", "-q", "-w", f"{key}={value}", ns=gw)
        (NETNS_ETC / gw).mkdir(parents=True, exist_ok=True)
        (NETNS_ETC / gw / "resolv.conf").write_text(f"nameserver {self.RESOURCE}\n")
        return self

    def _veth(self, a: str, a_ns: str | None, a4: str, a6: str | None,
              b: str, b_ns: str, b4: str, b6: str | None) -> None:
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        sh("ip", "link", "set", b, "netns", b_ns)
        if a_ns:
            sh("ip", "link", "set", a, "netns", a_ns)
        for name, ns, v4, v6 in ((a, a_ns, a4, a6), (b, b_ns, b4, b6)):
            if v6:
                # No DAD: the link must be usable at once, not after a second of probing.
                sh("sysctl", "-q", "-w", f"net.ipv6.conf.{name}.accept_dad=0", ns=ns)
                sh("ip", "-6", "addr", "add", v6, "dev", name, "nodad", ns=ns)
            sh("ip", "addr", "add", v4, "dev", name, ns=ns)
            sh("ip", "link", "set", name, "up", ns=ns)

    def spawn(self, host: str, argv: list[str], env: dict[str, str], label: str) -> Proc:
        proc = Proc(argv, env, self.workdir / f"{label}.log", prefix=["ip", "netns", "exec", self.ns[host]])
        self.procs.append(proc)
        return proc

    def wait_link(self, host: str, ifname: str) -> None:
        from tests.procs import wait_for

        wait_for(lambda: ifname in sh("ip", "-o", "link", "show", ns=self.ns[host], check=False), 10,
                 f"{ifname} in {host}")

    def new_client(self) -> WireGuardClient:
        private = sh("wg", "genkey").strip()
        public = sh("wg", "pubkey", input_text=private + "\n").strip()
        psk = sh("wg", "genpsk").strip()
        return WireGuardClient(self, f"wgc{self.tag}", private, public, psk)

    def down(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception:  # keep cleaning whatever else is left
                pass
        if self._root_link:
            sh("ip", "link", "del", self._root_link, check=False)
        for name in self.ns.values():
            sh("ip", "netns", "del", name, check=False)
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
