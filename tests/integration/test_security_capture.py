"""What never reaches a resource, proven by a capture on the resource's side (an AF_PACKET
socket on its interface, tests/sniff.py), beside the gateway's drop counters: packets from a
key the portal never authorized, replayed WireGuard datagrams, and packets whose inner source
is not the client's tunnel address. The same capture first sees the authorized packets, so a
silent capture cannot pass for a clean one."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest

from tests.netlab import NetLab, sh
from tests.procs import Proc, base_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]

SNIFF = str(Path(__file__).resolve().parents[1] / "sniff.py")
PORT = 9999  # nothing listens: the datagrams only have to arrive
COUNT = 5

SEND = r"""
import socket, sys
marker, count = sys.argv[1].encode(), int(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(count):
    sock.sendto(marker + b"-%d" % i, (sys.argv[3], int(sys.argv[4])))
"""

# A UDP datagram written whole (IP_HDRINCL) with another inner source; routed into the tunnel.
SPOOF = r"""
import socket, struct, sys
marker, count, src, dst, port = sys.argv[1].encode(), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for i in range(count):
    payload = marker + b"-%d" % i
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    sock.sendto(header + udp, (dst, 0))
"""

REPLAY = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for line in open(sys.argv[1]):
    line = line.strip()
    if line and line != "ready":
        sock.sendto(bytes.fromhex(line), (sys.argv[2], int(sys.argv[3])))
"""


def sniffer(lab, ns: str, ifname: str, *args: str) -> Proc:
    proc = lab.net.spawn(ns, [sys.executable, SNIFF, ifname, *args], base_env(), f"sniff-{ifname}-{args[0]}")
    wait_for(lambda: "ready" in proc.output(), 10, f"the capture on {ifname}")
    return proc


def seen(capture: Proc, marker: str) -> int:
    return capture.output().splitlines().count(marker)


def dropped(lab, reason: str) -> float:
    for line in lab.metrics().splitlines():
        if line.startswith(f'firezone_gateway_dropped_packets_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def send(lab, marker: str, count: int = COUNT) -> None:
    code, out = lab.client_sh(sys.executable, "-c", SEND, marker, str(count), NetLab.RESOURCE, str(PORT))
    assert code == 0, out


def test_unauthorized_replayed_and_spoofed_packets_never_reach_the_resource(lab):
    lab.start_gateway()
    flow = lab.authorize({"type": "cidr", "address": "198.18.2.0/24"})
    lab.connect_client(flow, ["198.18.2.0/24"])
    assert wait_for(lambda: lab.client_sh("ping", "-c", "1", "-W", "1", NetLab.RESOURCE)[0] == 0, 10, "a ping")
    tag = secrets.token_hex(3)
    allowed, replayed, spoofed, stranger, last = (f"fz-{kind}-{tag}" for kind in (
        "allowed", "replayed", "spoofed", "stranger", "last"))
    capture = sniffer(lab, "resource", f"fr{lab.net.tag}s", "count", allowed, replayed, spoofed, stranger, last)

    # The control: what the client may send arrives, each datagram once.
    send(lab, allowed)
    wait_for(lambda: seen(capture, allowed) >= COUNT, 10, "the authorized datagrams at the resource")

    # Replay: the client's encrypted datagrams, captured on its wire, sent again byte for byte.
    wire = sniffer(lab, "client", f"fc{lab.net.tag}c", "udp", str(flow["gateway"]["port"]))
    send(lab, replayed)
    wait_for(lambda: seen(capture, replayed) >= COUNT, 10, "the original datagrams at the resource")
    wire.stop()
    datagrams = [line for line in wire.output().splitlines() if line != "ready"]
    assert len(datagrams) >= COUNT, datagrams
    before = dropped(lab, "replay")
    code, out = lab.client_sh(sys.executable, "-c", REPLAY, str(wire.log_path), NetLab.GATEWAY_OUTER,
                              str(flow["gateway"]["port"]))
    assert code == 0, out
    wait_for(lambda: dropped(lab, "replay") - before >= len(datagrams), 10, "the replays counted as drops")

    # Spoofed: the authorized client's tunnel, another inner source address.
    before = dropped(lab, "spoofed_source")
    code, out = lab.client_sh(sys.executable, "-c", SPOOF, spoofed, str(COUNT), "100.64.0.77", NetLab.RESOURCE,
                              str(PORT))
    assert code == 0, out
    wait_for(lambda: dropped(lab, "spoofed_source") - before >= COUNT, 10, "the spoofed packets counted as drops")

    # A key the portal never authorized: the same client with a new private key.
    before = dropped(lab, "unknown_peer")
    keyfile = lab.net.workdir / "stranger.key"
    keyfile.write_text(sh("wg", "genkey"))
    keyfile.chmod(0o600)
    sh("wg", "set", lab.client.ifname, "private-key", str(keyfile), ns=lab.net.ns["client"])
    send(lab, stranger)
    wait_for(lambda: dropped(lab, "unknown_peer") - before >= 1, 15, "the stranger's handshake refused")

    # A last datagram from the gateway's host itself, so the capture was running all along: once
    # it is seen, everything sent before it through the tunnel would have been seen too.
    sh(sys.executable, "-c", SEND, last, "1", NetLab.RESOURCE, str(PORT), ns=lab.net.ns["gateway"])
    wait_for(lambda: seen(capture, last) >= 1, 10, "the last datagram at the resource")
    assert seen(capture, allowed) == COUNT
    assert seen(capture, replayed) == COUNT, "a replayed datagram reached the resource"
    assert seen(capture, spoofed) == 0, "a spoofed packet reached the resource"
    assert seen(capture, stranger) == 0, "a packet from an unauthorized key reached the resource"
