"""The namespace lab of tests/netlab.py, with a management subnet of its own per run.

`tests.netlab.NetLab` always puts 198.18.3.1/24 on the root-namespace end of its management
veth. Two labs at once (a benchmark while someone runs the integration tests) then install
two routes for 198.18.3.0/24 in the root namespace: the dev portal of the second lab is
unreachable from its gateway and its `/readyz` probe of 198.18.3.2 reaches the *first* lab's
gateway. Here the management link gets a /30 out of 198.19.0.0/16 that no root-namespace
route uses, and the namespaces are named `fb??-<tag>` so they are recognisable as a bench.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.integration.conftest import LAB_TOKEN, Lab  # noqa: E402
from tests.netlab import NETNS_ETC, NetLab, sh  # noqa: E402
from tests.procs import VENV_BIN, Proc, base_env, wait_for  # noqa: E402

MGMT_POOL = ipaddress.ip_network("198.19.0.0/16")


def _root_routes() -> list[ipaddress.IPv4Network]:
    try:
        routes = json.loads(sh("ip", "-j", "-4", "route", "show", "table", "all") or "[]")
    except ValueError:
        return []
    found = []
    for route in routes:
        dst = route.get("dst", "")
        if dst and dst != "default" and route.get("type", "unicast") in ("unicast", "local"):
            try:
                found.append(ipaddress.ip_network(dst, strict=False))
            except ValueError:
                continue
    return found


class BenchNetLab(NetLab):
    """NetLab with a free management /30; everything else (addresses, names' tag) as NetLab."""

    mgmt_root: str = ""
    mgmt_gateway: str = ""

    def _pick_mgmt(self) -> tuple[str, str]:
        used = _root_routes()
        subnets = list(MGMT_POOL.subnets(new_prefix=30))
        start = int(self.tag, 16) % len(subnets)
        for offset in range(len(subnets)):
            net = subnets[(start + offset) % len(subnets)]
            if not any(net.overlaps(other) for other in used):
                hosts = list(net.hosts())
                return str(hosts[0]), str(hosts[1])
        raise RuntimeError("no free management subnet in 198.19.0.0/16")

    def up(self) -> BenchNetLab:
        t = self.tag
        self.ns = {"gateway": f"fbgw-{t}", "client": f"fbcl-{t}", "resource": f"fbrs-{t}"}
        for name in self.ns.values():
            sh("ip", "netns", "add", name)
            sh("ip", "link", "set", "lo", "up", ns=name)
        gw, cl, rs = self.ns["gateway"], self.ns["client"], self.ns["resource"]
        self.mgmt_root, self.mgmt_gateway = self._pick_mgmt()
        self._root_link = f"fm{t}r"
        self._veth(f"fm{t}r", None, f"{self.mgmt_root}/30", None, f"fm{t}g", gw, f"{self.mgmt_gateway}/30", None)
        self._veth(f"fc{t}c", cl, "198.18.1.2/24", "fd42:1::2/64", f"fc{t}g", gw, "198.18.1.1/24", "fd42:1::1/64")
        self._veth(f"fr{t}g", gw, "198.18.2.1/24", "fd42:2::1/64", f"fr{t}s", rs, "198.18.2.2/24", "fd42:2::2/64")
        sh("ip", "route", "add", "default", "via", self.RESOURCE, ns=gw)
        sh("ip", "-6", "route", "add", "default", "via", "fd42:2::2", ns=gw)
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                    "net.ipv4.conf.all.src_valid_mark=1"):
            sh("sysctl", "-q", "-w", key, ns=gw)
        (NETNS_ETC / gw).mkdir(parents=True, exist_ok=True)
        (NETNS_ETC / gw / "resolv.conf").write_text(f"nameserver {self.RESOURCE}\n")
        return self


class BenchLab(Lab):
    """`Lab` whose gateway talks to the portal and serves /readyz on the lab's own subnet."""

    net: BenchNetLab

    def start_gateway(self, extra_env: dict[str, str] | None = None) -> Proc:
        health = f"{self.net.mgmt_gateway}:8080"
        env = base_env() | {
            "FIREZONE_TOKEN": LAB_TOKEN,
            "FIREZONE_ID": "b" * 64,
            "FIREZONE_NAME": "bench-gateway",
            "FIREZONE_API_URL": self.portal.url,
            "HEALTH_CHECK_ADDR": health,
            "FIREZONE_NO_TELEMETRY": "true",
            "RUST_LOG": "info",
        } | (extra_env or {})
        init = self.net.spawn("gateway", [str(VENV_BIN / "firezone-gateway-init"), "--egress-interface",
                                          f"fr{self.net.tag}g"], base_env(), "gateway-init")
        if init.popen.wait(30) != 0:
            raise RuntimeError(f"firezone-gateway-init failed: {init.output()}")
        self.gateway = self.net.spawn("gateway", [str(VENV_BIN / "firezone-gateway")], env, "gateway")
        self.health = f"http://{health}"
        wait_for(lambda: self.readyz() == 200 or not self.gateway.running(), 20, "gateway ready")
        if not self.gateway.running():
            raise RuntimeError(f"the gateway exited: {self.gateway.output()[-2000:]}")
        return self.gateway
