"""Interfaces failing under a running gateway, with a stock wireguard-go client (docs/dataplane.md,
"When interfaces fail"):

- `tun-firezone` deleted underneath: one ERROR line naming the device and what happens next,
  /readyz 503 with the reason while it is gone, the device recreated in-process with its
  addresses, routes and rule, and the client's traffic back on its existing session;
- the egress interface down and up: traffic to the resource fails while down, the gateway
  neither crashes nor floods its log, and traffic resumes after `up` without a restart;
- the client-facing interface down and up: the client's traffic and handshakes resume.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gateway_pkg.netconst import TUN_NAME
from tests.netlab import NetLab, sh
from tests.procs import http, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]

HTTP_OK = "resource-behind-the-gateway"
# The bound this file documents for traffic to come back once the fault is repaired.
RECOVERY_BOUND = 5.0
LOST_LINE = f"TUN device {TUN_NAME} was removed"
RECREATED_LINE = f"TUN device {TUN_NAME} recreated"


def ping(lab, address: str = NetLab.RESOURCE, wait: float = 1.0) -> bool:
    return lab.client_sh("ping", "-c", "1", "-W", str(wait), address)[0] == 0


def readyz(lab) -> tuple[int | None, str]:
    try:
        status, body = http("GET", lab.health + "/readyz", timeout=2)
    except OSError as exc:
        return None, str(exc)
    return status, str(body)


def gw(lab, *argv: str, check: bool = True) -> str:
    return sh(*argv, ns=lab.net.ns["gateway"], check=check)


def expect_logs(lab, *patterns: str) -> None:
    """Tell the log gate (tests/hygiene.py, where the lab has one) which WARN/ERROR lines this
    test provokes on purpose."""
    gate = getattr(lab, "logs", None)
    if gate is not None:
        gate.allow(*patterns)


def log_lines(lab) -> list[str]:
    return lab.gateway.output().splitlines()


def lines_since(lab, start: int) -> list[str]:
    """The gateway's log lines (any level: the lab runs it at debug) after the first `start`,
    less the TUN DNS server's probes, which this lab without a DNS server fails on its own."""
    return [line for line in log_lines(lab)[start:] if "gateway_pkg.dns" not in line]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def connected(lab):
    """The gateway up, a cidr resource authorized, the client's ping and HTTP through it."""
    lab.start_gateway()
    lab.serve_http(NetLab.RESOURCE, 80, HTTP_OK)
    flow = lab.authorize({"type": "cidr", "address": "198.18.2.0/24"})
    lab.connect_client(flow, ["198.18.2.0/24"])
    assert wait_for(lambda: ping(lab), 10, "ping through the tunnel")
    code, out = lab.curl(f"http://{NetLab.RESOURCE}/")
    assert code == 0 and HTTP_OK in out, out
    return flow


def tun_addresses(lab) -> set[str]:
    """The device's addresses, link-local ones left out (the kernel makes a new one)."""
    words = gw(lab, "ip", "-o", "addr", "show", "dev", TUN_NAME, check=False).split()
    return {words[i + 1] for i, word in enumerate(words[:-1])
            if word in ("inet", "inet6") and not words[i + 1].startswith("fe80")}


def test_deleted_tun_device_is_recreated_and_traffic_resumes(lab):
    connected(lab)
    before = tun_addresses(lab)
    handshake = lab.client.latest_handshake()
    expect_logs(lab, LOST_LINE)
    deleted = time.monotonic()
    gw(lab, "ip", "link", "del", TUN_NAME)

    # Traffic comes back within the bound, on the client's existing session.
    wait_for(lambda: ping(lab, wait=0.5), RECOVERY_BOUND, "ping after the TUN device was deleted")
    recovered = time.monotonic() - deleted
    print(f"traffic back {recovered:.2f} s after `ip link del {TUN_NAME}`")
    assert lab.gateway.running()
    code, out = lab.curl(f"http://{NetLab.RESOURCE}/")
    assert code == 0 and HTTP_OK in out, out
    assert lab.client.latest_handshake() == handshake  # no new handshake was needed
    assert readyz(lab)[0] == 200

    # One ERROR line, naming the device and what happens next; then one line for the recovery.
    lost = [line for line in log_lines(lab) if LOST_LINE in line]
    assert len(lost) == 1, lost
    assert "ERROR" in lost[0] and "recreating it" in lost[0], lost[0]
    assert sum(RECREATED_LINE in line for line in log_lines(lab)) == 1
    assert "TUN read failed" not in lab.gateway.output()  # what it logged per wake-up, before
    # The same addresses, the routes of the tunnel ranges and the fwmark rule, all back.
    assert len(before) == 2 and tun_addresses(lab) == before, before  # the portal's /32 and /128
    routes = gw(lab, "ip", "route", "show", "table", "all", "dev", TUN_NAME)
    assert "100.64.0.0/11" in routes, routes
    assert "fd00:2021:1111::/107" in gw(lab, "ip", "-6", "route", "show", "table", "all", "dev", TUN_NAME)
    assert gw(lab, "ip", "rule").count("not from all fwmark 0xfd002021") == 1


def test_tun_name_held_by_another_interface_keeps_readyz_503_until_it_is_free(lab):
    connected(lab)
    expect_logs(lab, LOST_LINE, f"Cannot recreate TUN device {TUN_NAME} yet")
    # Take the name first (rename the device, give its name to a veth), then delete the
    # device: the gateway's attempts to recreate it fail until the name is free again.
    holder, old = f"fh{lab.net.tag}g", f"fo{lab.net.tag}g"
    gw(lab, "ip", "link", "set", TUN_NAME, "down")
    gw(lab, "ip", "link", "set", TUN_NAME, "name", old)
    gw(lab, "ip", "link", "add", TUN_NAME, "type", "veth", "peer", "name", holder)
    gw(lab, "ip", "link", "del", old)
    _, body = wait_for(lambda: (r := readyz(lab))[0] == 503 and r, 5, "/readyz 503")
    assert f"TUN device {TUN_NAME} was removed" in body and "recreating it" in body, body
    wait_for(lambda: "Cannot recreate" in lab.gateway.output(), 5, "the warning for the failed attempt")
    _, body = readyz(lab)
    assert "(last attempt: cannot create TUN device tun-firezone: Invalid argument" in body, body
    # While the device is gone: no traffic, and no busy loop on the dead descriptor.
    cpu = cpu_seconds(lab.gateway.pid)
    assert not ping(lab, wait=1.0)  # also the measuring window: about one second
    assert cpu_seconds(lab.gateway.pid) - cpu < 0.3
    assert lab.gateway.running()

    freed = time.monotonic()
    gw(lab, "ip", "link", "del", TUN_NAME)  # the veth (and its peer with it)
    wait_for(lambda: readyz(lab)[0] == 200, RECOVERY_BOUND, "/readyz 200 once the name is free")
    wait_for(lambda: ping(lab, wait=0.5), RECOVERY_BOUND, "ping once the name is free")
    print(f"traffic back {time.monotonic() - freed:.2f} s after the name was freed")
    lines = log_lines(lab)
    assert sum(LOST_LINE in line for line in lines) == 1
    assert sum("Cannot recreate" in line for line in lines) == 1  # not one per attempt
    assert "tun type tun" in gw(lab, "ip", "-d", "link", "show", TUN_NAME)  # ours again, not the veth


def test_egress_interface_down_and_up(lab):
    connected(lab)
    egress = f"fr{lab.net.tag}g"  # the gateway's way to the resource and its default route
    assert egress in gw(lab, "ip", "route", "show", "default")
    lines_before = len(log_lines(lab))

    gw(lab, "ip", "link", "set", egress, "down")
    assert not ping(lab)
    # A burst of packets into the tunnel while the egress is down: each one fails, none is logged.
    code, out = lab.client_sh("ping", "-c", "100", "-i", "0.01", "-W", "1", NetLab.RESOURCE, timeout=15)
    assert code != 0 and " 0 received" in out, out
    code, _ = lab.curl(f"http://{NetLab.RESOURCE}/", timeout=1)
    assert code != 0
    assert lab.gateway.running() and readyz(lab)[0] == 200
    during = lines_since(lab, lines_before)
    assert len(during) <= 3, during

    # Up again. The kernel dropped the link's routes (and its IPv6 address) when it went down;
    # a host's network manager puts them back on link up, as this does.
    up = time.monotonic()
    gw(lab, "ip", "link", "set", egress, "up")
    gw(lab, "ip", "-6", "addr", "replace", "fd42:2::1/64", "dev", egress, "nodad")
    gw(lab, "ip", "route", "replace", "default", "via", NetLab.RESOURCE)
    gw(lab, "ip", "-6", "route", "replace", "default", "via", "fd42:2::2")
    wait_for(lambda: ping(lab, wait=0.5), RECOVERY_BOUND, "ping after the egress came back")
    print(f"traffic back {time.monotonic() - up:.2f} s after `ip link set {egress} up`")
    code, out = lab.curl(f"http://{NetLab.RESOURCE}/")
    assert code == 0 and HTTP_OK in out, out
    assert lab.gateway.running()
    # The MASQUERADE rule names the interface, so it survived.
    assert f"-o {egress}" in gw(lab, "iptables", "-t", "nat", "-S", "POSTROUTING")


def test_client_facing_interface_down_and_up(lab):
    connected(lab)
    outer = f"fc{lab.net.tag}g"  # the gateway's side of the link the client reaches it over
    lines_before = len(log_lines(lab))

    gw(lab, "ip", "link", "set", outer, "down")
    code, out = lab.client_sh("ping", "-c", "50", "-i", "0.01", "-W", "1", NetLab.RESOURCE, timeout=15)
    assert code != 0 and " 0 received" in out, out
    assert lab.gateway.running() and readyz(lab)[0] == 200
    during = lines_since(lab, lines_before)
    assert len(during) <= 3, during

    up = time.monotonic()
    gw(lab, "ip", "link", "set", outer, "up")
    gw(lab, "ip", "-6", "addr", "replace", "fd42:1::1/64", "dev", outer, "nodad")
    # The existing session carries on ...
    wait_for(lambda: ping(lab, wait=0.5), RECOVERY_BOUND, "ping after the outer link came back")
    print(f"traffic back {time.monotonic() - up:.2f} s after `ip link set {outer} up`")
    # ... and a fresh handshake is accepted: the client forgets its session and starts again.
    client_ns = lab.net.ns["client"]
    peer = sh("wg", "show", lab.client.ifname, "peers", ns=client_ns).strip()
    endpoint = sh("wg", "show", lab.client.ifname, "endpoints", ns=client_ns).split()[1]
    sh("wg", "set", lab.client.ifname, "peer", peer, "remove", ns=client_ns)
    readded = int(time.time())  # wg reports handshakes in whole seconds of the wall clock
    lab.client.connect(peer, endpoint, ["198.18.2.0/24"])
    wait_for(lambda: ping(lab, wait=0.5), RECOVERY_BOUND, "ping on a new session")
    assert lab.client.latest_handshake() >= readded
    assert lab.gateway.running()
