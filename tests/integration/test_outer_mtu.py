"""An outer path narrower than a full tunnel packet: 1280 inner bytes make 1340-byte outer
datagrams over IPv4 and 1360 over IPv6, and here the path between client and gateway is 1300.

- The client-gateway link itself at MTU 1300, outer IPv4 and IPv6: both kernels fragment the
  outer datagrams; TCP transfers (8 MiB each way, checked by SHA-256) and 1400-byte UDP
  datagrams work both ways, and the gateway's /metrics shows the fragmentation.
- A router on a 1300 link between them that drops its own ICMP "fragmentation needed" (the
  black hole of upstream's #9772 / #10488): what the gateway sends gets through only because
  its socket clears DF, so the router fragments it.

The first tests here need no network (the socket options, the /proc parsers) and carry no
mark, so the fast tier runs them; the lab tests are marked one by one.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from gateway_pkg.tunnel import metrics
from gateway_pkg.tunnel.udp import (
    IP_MTU_DISCOVER,
    IP_PMTUDISC_DONT,
    IPV6_DONTFRAG,
    IPV6_MTU_DISCOVER,
    IPV6_PMTUDISC_DONT,
    allow_fragmentation,
)
from tests import transfer
from tests.netlab import NetLab, sh
from tests.procs import VENV_BIN, base_env, wait_for

NARROW = 1300
TCP_PORT = 9001
ECHO_PORT = 9000
TRANSFER = 8 * 1024 * 1024


# --- without a network -----------------------------------------------------------------------


class FakeSocket:
    def __init__(self, family: int, refuse: int | None = None) -> None:
        self.family = family
        self.options: dict[tuple[int, int], int] = {}
        self.refuse = refuse

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if option == self.refuse:
            raise OSError(92, "Protocol not available")
        self.options[(level, option)] = value


def test_the_ipv4_socket_clears_df_and_the_ipv6_one_lets_the_kernel_fragment():
    v4, v6 = FakeSocket(socket.AF_INET), FakeSocket(socket.AF_INET6)
    allow_fragmentation(v4)  # type: ignore[arg-type]
    allow_fragmentation(v6)  # type: ignore[arg-type]
    assert v4.options == {(socket.IPPROTO_IP, IP_MTU_DISCOVER): IP_PMTUDISC_DONT}
    assert v6.options == {(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER): IPV6_PMTUDISC_DONT,
                          (socket.IPPROTO_IPV6, IPV6_DONTFRAG): 0}
    assert (IP_MTU_DISCOVER, IP_PMTUDISC_DONT, IPV6_MTU_DISCOVER, IPV6_DONTFRAG) == (10, 0, 23, 62)  # <linux/in*.h>


def test_a_kernel_that_refuses_is_a_warning_not_a_failure(caplog):
    sock = FakeSocket(socket.AF_INET, refuse=IP_MTU_DISCOVER)
    allow_fragmentation(sock)  # type: ignore[arg-type]
    assert "Cannot set IP_MTU_DISCOVER on the UDP socket (Protocol not available)" in caplog.text
    assert "narrower than 1340 bytes" in caplog.text


SNMP = ("Ip: Forwarding DefaultTTL InReceives ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails "
        "FragCreates\n"
        "Ip: 1 64 100 0 12 6 1 3 2 6\n"
        "Icmp: InMsgs InErrors\nIcmp: 5 0\n")
SNMP6 = "Ip6InReceives  \t9\nIp6InTooBigErrors  4\nIp6ReasmReqds 2\nIp6ReasmOKs 1\nIp6FragOKs 7\nIp6FragFails 1\n"


def test_the_kernels_fragmentation_counters_by_family_and_reason():
    rows = {(family, reason): n for family, reason, n in
            metrics.fragmentation(metrics.parse_snmp(SNMP), metrics.parse_snmp6(SNMP6))}
    assert rows[("ipv4", "fragments_received")] == 12 and rows[("ipv4", "reassembled")] == 6
    assert rows[("ipv4", "reassembly_failed")] == 1 and rows[("ipv4", "fragmented")] == 3
    assert rows[("ipv4", "fragments_created")] == 6 and rows[("ipv4", "too_big")] == 2
    assert rows[("ipv6", "too_big")] == 5 and rows[("ipv6", "fragmented")] == 7  # FragFails + InTooBigErrors
    assert ("ipv6", "fragments_created") not in rows  # not in this kernel's file: not made up
    assert metrics.fragmentation({}, {}) == [] and metrics.parse_snmp("garbage") == {}


# --- in the lab ------------------------------------------------------------------------------

ECHO = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # stock options: DF while it fits the route
sock.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = sock.recvfrom(65535)
    sock.sendto(data, peer)
"""

# Each datagram must come back whole; a second try is allowed, since the first reply of the
# resource is larger than tun-firezone's 1280 and only teaches its kernel the path MTU.
SEND = r"""
import json, os, socket, sys
server, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(2)
sock.connect((server, port))
echoed, tries = 0, 0
for i in range(count):
    payload = i.to_bytes(4, "big") + os.urandom(size - 4)
    for _ in range(2):
        tries += 1
        sock.send(payload)
        try:
            while True:
                data = sock.recv(65535)
                if data[:4] == payload[:4]:
                    break
        except socket.timeout:
            continue
        echoed += data == payload
        break
print(json.dumps({"echoed": echoed, "tries": tries}))
"""


def serve_resource(lab) -> None:
    transfer.serve(lab, TCP_PORT)
    echo = lab.net.spawn("resource", [str(VENV_BIN / "python"), "-c", ECHO, NetLab.RESOURCE, str(ECHO_PORT)],
                         base_env(), "udp-echo")
    wait_for(lambda: "ready" in echo.output(), 10, "the UDP echo in the resource namespace")


def check_traffic_both_ways(lab) -> None:
    # TCP: 8 MiB up and 8 MiB down, each checked whole by its SHA-256 (a socket timeout of 10 s
    # turns a black hole into a failure instead of a hang).
    transfers = transfer.transfer(lab, NetLab.RESOURCE, TCP_PORT, TRANSFER, timeout=120)
    assert transfers["up"]["whole"] and transfers["down"]["whole"], transfers
    assert transfers["down"]["bytes"] == TRANSFER, transfers
    # UDP: 20 datagrams of 1400 bytes out and back, larger than the tunnel's 1280.
    code, out = lab.client_sh(str(VENV_BIN / "python"), "-c", SEND, NetLab.RESOURCE, str(ECHO_PORT), "20", "1400",
                              timeout=120)
    assert code == 0, out
    assert json.loads(out.strip().splitlines()[-1])["echoed"] == 20, out


def fragmentation(lab) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for line in lab.metrics().splitlines():
        if line.startswith("firezone_gateway_ip_fragmentation_total{"):
            labels, value = line.rsplit(" ", 1)
            family = labels.split('family="')[1].split('"')[0]
            reason = labels.split('reason="')[1].split('"')[0]
            found[(family, reason)] = float(value)
    return found


def kernel_counts(ns: str) -> dict[str, dict[str, int]]:
    """The fragmentation counters of another namespace, as the gateway would report them."""
    def read(name: str) -> str:
        return sh("cat", f"/proc/net/{name}", ns=ns)

    counts: dict[str, dict[str, int]] = {"ipv4": {}, "ipv6": {}}
    for family, reason, count in metrics.fragmentation(metrics.parse_snmp(read("snmp")),
                                                       metrics.parse_snmp6(read("snmp6"))):
        counts[family][reason] = count
    return counts


def set_mtu(ns: str, ifname: str, mtu: int) -> None:
    sh("ip", "link", "set", ifname, "mtu", str(mtu), ns=ns)


@pytest.mark.parametrize("outer", ["ipv4", "ipv6"])
@pytest.mark.integration
@pytest.mark.netns
def test_tcp_and_large_udp_both_ways_over_a_1300_byte_link(lab, outer):
    t = lab.net.tag
    set_mtu(lab.net.ns["client"], f"fc{t}c", NARROW)
    set_mtu(lab.net.ns["gateway"], f"fc{t}g", NARROW)
    serve_resource(lab)
    lab.start_gateway()
    flow = lab.authorize({"type": "cidr", "address": "198.18.2.0/24"})
    assert flow["status"] == "authorized", flow
    gw = flow["gateway"]
    endpoint = f"{NetLab.GATEWAY_OUTER}:{gw['port']}" if outer == "ipv4" else f"[fd42:1::1]:{gw['port']}"
    lab.client.connect(gw["public_key"], endpoint, ["198.18.2.0/24"])

    check_traffic_both_ways(lab)

    counts = fragmentation(lab)
    # Outer datagrams of full packets went out to the client in fragments, and came from it in
    # fragments (the client's kernel says so; the gateway's counts them for IPv4 only: IPv6
    # fragments are put together by conntrack, which keeps no count).
    assert counts[(outer, "fragmented")] >= 1, sorted(counts.items())
    if outer == "ipv4":
        assert counts[("ipv4", "reassembled")] >= 1, sorted(counts.items())
    client = kernel_counts(lab.net.ns["client"])[outer]
    assert client["fragmented"] >= 1 and client["reassembled"] >= 1, client
    # The resource's first 1400-byte reply (DF set) was too big for tun-firezone: the kernel
    # dropped it and said so (ICMP fragmentation needed), counted here.
    assert counts[("ipv4", "too_big")] >= 1, counts
    dropped = [line for line in lab.metrics().splitlines() if 'reason="udp_too_big"' in line]
    assert all(line.endswith(" 0.0") for line in dropped), dropped


@pytest.fixture
def narrow_router(lab) -> Iterator[str]:
    """client ──(MTU 1300)── router ──(1500)── gateway, the router dropping its own ICMP
    "fragmentation needed". Yields the gateway's address on that path."""
    t = lab.net.tag
    router = f"fzmr-{t}"
    cl, gw = lab.net.ns["client"], lab.net.ns["gateway"]
    sh("ip", "netns", "add", router)
    try:
        sh("ip", "link", "set", "lo", "up", ns=router)
        sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", ns=router)
        for a, a_ns, a4, b, b_ns, b4, mtu in ((f"mc{t}c", cl, "198.18.5.2/24", f"mc{t}r", router, "198.18.5.1/24",
                                               NARROW),
                                              (f"mg{t}r", router, "198.18.6.1/24", f"mg{t}g", gw, "198.18.6.2/24",
                                               1500)):
            sh("ip", "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns)
            for name, ns, address in ((a, a_ns, a4), (b, b_ns, b4)):
                sh("ip", "addr", "add", address, "dev", name, ns=ns)
                sh("ip", "link", "set", name, "mtu", str(mtu), "up", ns=ns)
        sh("ip", "route", "add", "198.18.6.0/24", "via", "198.18.5.1", ns=cl)
        sh("ip", "route", "add", "198.18.5.0/24", "via", "198.18.6.1", ns=gw)
        sh("iptables", "-w", "-A", "OUTPUT", "-p", "icmp", "--icmp-type", "fragmentation-needed", "-j", "DROP",
           ns=router)
        yield router
    finally:
        sh("ip", "netns", "del", router, check=False)


@pytest.mark.integration
@pytest.mark.netns
def test_a_router_on_a_narrower_link_fragments_what_the_gateway_sends(lab, narrow_router):
    serve_resource(lab)
    lab.start_gateway()
    flow = lab.authorize({"type": "cidr", "address": "198.18.2.0/24"})
    gw = flow["gateway"]
    lab.client.connect(gw["public_key"], f"198.18.6.2:{gw['port']}", ["198.18.2.0/24"])

    check_traffic_both_ways(lab)  # the download: every full segment is 1340 bytes on the wire

    # The router fragmented the gateway's datagrams (DF clear); had DF been set, it would have
    # dropped them and its ICMP would never have reached the gateway: the download would stall.
    assert kernel_counts(narrow_router)["ipv4"]["fragmented"] >= 1
    assert lab.client.latest_handshake() > 0

