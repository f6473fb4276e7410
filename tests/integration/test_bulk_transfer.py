"""Correctness under speed: 200 MB of random bytes each way through the tunnel arrive whole
(SHA-256 on both ends), over IPv4 and IPv6, with the kernel offloads on, without TUN UDP
segmentation (as on Linux 6.1) and off; and UDP bursts each way arrive uncorrupted.

The gateway's /metrics shows which offloads carried the traffic, so each mode is seen to take
its own path: with offloads, TUN reads of TCP super-packets (TSO) and UDP ones (USO), GRO
writes and GSO sends; with `off`, none. A client that sends with GSO (newer wireguard-go)
reaches the gateway's UDP_GRO socket as runs: the last test sends such runs itself.
"""

from __future__ import annotations

import json
import os

import pytest

from gateway_pkg.netconst import DEFAULT_UDP_PORT
from gateway_pkg.tunnel import checksum
from tests import transfer
from tests.hygiene import UdpErrorWatch
from tests.netlab import NetLab, sh
from tests.procs import VENV_BIN, base_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]

SIZE = 200 * 1000 * 1000
TCP_PORT = 9100
UDP_PORT = 9101
UDP_COUNT = 2048
UDP_SIZE = 1200
RESOURCE_V6_NET = "fd42:2::/64"

# A UDP sink/source in the resource namespace. Payloads are derived from their index, so
# either end can tell a whole datagram from a damaged one. `count` reports what it received
# and resets; `send N ADDR PORT` sends N datagrams back in GSO bursts of 32 (one sendmsg
# each, so the resource's kernel hands the gateway's TUN UDP super-packets when it has USO).
UDP_PEER = r"""
import json, socket, sys, threading, time
SIZE = int(sys.argv[2])
def payload(i):
    return i.to_bytes(4, "big") + bytes([i % 251]) * (SIZE - 4)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
# A receive buffer for the whole burst (SO_RCVBUFFORCE, as root): this Python loop checks each
# datagram and may fall behind on a busy machine, and its losses are not the gateway's.
sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)
sock.bind((sys.argv[1], int(sys.argv[3])))
good, bad = set(), 0
print("ready", flush=True)
while True:
    data, peer = sock.recvfrom(65535)
    if data.startswith(b"count"):
        sock.sendto(json.dumps({"good": len(good), "bad": bad}).encode(), peer)
        good, bad = set(), 0
    elif data.startswith(b"send"):
        count = int(data.split()[1])
        segment = [(17, 103, SIZE.to_bytes(2, sys.byteorder))]  # SOL_UDP, UDP_SEGMENT
        for start in range(0, count, 32):
            sock.sendmsg([b"".join(payload(i) for i in range(start, min(start + 32, count)))], segment, 0, peer)
            time.sleep(0.004)
    else:
        i = int.from_bytes(data[:4], "big")
        if data == payload(i):
            good.add(i)
        else:
            bad += 1
"""

UDP_CLIENT = r"""
import json, socket, sys, time
server, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def payload(i):
    return i.to_bytes(4, "big") + bytes([i % 251]) * (size - 4)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: beyond net.core.rmem_max
sock.connect((server, port))
for i in range(count):
    sock.send(payload(i))
    if i % 32 == 31:
        time.sleep(0.002)
time.sleep(0.5)
sock.settimeout(5)
sock.send(b"count")
up = json.loads(sock.recv(65535))
sock.send(f"send {count}".encode())
good, bad = set(), 0
sock.settimeout(2)
try:
    while len(good) < count:
        data = sock.recv(65535)
        i = int.from_bytes(data[:4], "big")
        if data == payload(i):
            good.add(i)
        else:
            bad += 1
except socket.timeout:
    pass
print(json.dumps({"up": up, "down": {"good": len(good), "bad": bad}}))
"""


def offload_counts(lab) -> dict[str, float]:
    found = {}
    for line in lab.metrics().splitlines():
        if line.startswith("firezone_gateway_offload_packets_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('offload="')[1].split('"')[0]] = float(value)
    return found


@pytest.mark.parametrize("mode", ["auto", "no-uso", "off"])
def test_200_mb_each_way_arrive_whole_over_ipv4_and_ipv6(lab, mode):
    transfer.serve(lab, TCP_PORT, (NetLab.RESOURCE, NetLab.RESOURCE_V6))
    udp = lab.net.spawn("resource", [str(VENV_BIN / "python"), "-c", UDP_PEER, NetLab.RESOURCE, str(UDP_SIZE),
                                     str(UDP_PORT)], base_env(), "udp-peer")
    wait_for(lambda: "ready" in udp.output(), 10, "the UDP peer in the resource namespace")
    lab.start_gateway({"FIREZONE_OFFLOADS": mode})
    flows = [lab.authorize({"type": "cidr", "address": address}) for address in ("198.18.2.0/24", RESOURCE_V6_NET)]
    assert all(f["status"] == "authorized" for f in flows), flows
    lab.connect_client(flows[0], ["198.18.2.0/24", RESOURCE_V6_NET])

    # Upstream's gate: the gateway's UDP socket drops nothing during TCP transfers.
    with UdpErrorWatch(lab.net.ns["gateway"]) as watch:
        for address in (NetLab.RESOURCE, NetLab.RESOURCE_V6):
            result = transfer.transfer(lab, address, TCP_PORT, SIZE)
            assert result["up"]["whole"] and result["down"]["whole"], (address, result)
            assert result["down"]["bytes"] == SIZE, (address, result)
    watch.check("the TCP transfers")

    code, out = lab.client_sh(str(VENV_BIN / "python"), "-c", UDP_CLIENT, NetLab.RESOURCE, str(UDP_PORT),
                              str(UDP_COUNT), str(UDP_SIZE), timeout=60)
    assert code == 0, out
    udp_result = json.loads(out.strip().splitlines()[-1])
    # Nothing damaged, ever; a little loss is UDP's right (1 %).
    assert udp_result["up"]["bad"] == 0 and udp_result["down"]["bad"] == 0, udp_result
    drops = [line for line in lab.metrics().splitlines() if line.startswith("firezone_gateway_dropped")]
    assert udp_result["up"]["good"] >= UDP_COUNT * 0.99 and udp_result["down"]["good"] >= UDP_COUNT * 0.99, \
        (udp_result, drops, sh("nstat", "-az", "Udp*", ns=lab.net.ns["client"]),
         sh("nstat", "-az", "Udp*", ns=lab.net.ns["resource"]))

    used = {name for name, count in offload_counts(lab).items() if count > 0}
    if mode == "off":
        assert used == set(), used
    else:
        # Not udp_gro: Debian's wireguard-go client sends one datagram per call, and a veth
        # does not merge those (test_gso_runs_from_a_client_are_split below covers GRO).
        expected = {"udp_gso", "tun_tso", "tun_gro_tcp"} | ({"tun_uso", "tun_gro_udp"} if mode == "auto" else set())
        assert used == expected, used
    assert f"Packet path: {expected_packet_path()}" in lab.gateway.output()


def expected_packet_path() -> str:
    """What the gateway's start log says runs: FIREZONE_NATIVE (passed through by base_env)
    and whether gateway_pkg._native is built."""
    if os.environ.get("FIREZONE_NATIVE", "").strip().lower() == "off":
        return "pure Python (FIREZONE_NATIVE=off)"
    if checksum.native is None:
        return "pure Python (native module not built)"
    return "native checksums (gateway_pkg._native)"


GSO_BURST = r"""
import socket, sys
count, size = int(sys.argv[3]), int(sys.argv[4])
run = b"".join(bytes([1, 0, 0, 0]) + bytes([i]) * (size - 4) for i in range(count))  # type 1, too short
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.sendmsg([run], [(17, 103, size.to_bytes(2, sys.byteorder))], 0, (sys.argv[1], int(sys.argv[2])))
"""


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_gso_runs_from_a_client_are_split_into_each_datagram(lab, mode):
    """A run of 16 datagrams sent with one GSO call: with offloads the gateway receives it in one
    call (udp_gro) and still handles every datagram on its own: 16 WireGuard initiations too
    short to be valid, 16 drops as malformed. Off, the kernel splits them: the same 16 drops."""
    lab.start_gateway({"FIREZONE_OFFLOADS": mode})
    port = DEFAULT_UDP_PORT

    def dropped() -> float:
        for line in lab.metrics().splitlines():
            if line.startswith('firezone_gateway_dropped_packets_total{reason="malformed"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = dropped()
    code, out = lab.client_sh(str(VENV_BIN / "python"), "-c", GSO_BURST, NetLab.GATEWAY_OUTER, str(port), "16", "100")
    assert code == 0, out
    wait_for(lambda: dropped() - before >= 16, 10, "16 malformed drops")
    assert dropped() - before == 16
    calls = offload_counts(lab).get("udp_gro", 0.0)
    assert (calls > 0) if mode == "auto" else calls == 0, calls
