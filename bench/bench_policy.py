"""Per-packet cost of the policy paths (allow, deny, drop, DNS-resource NAT).

Run: .venv/bin/python bench/bench_policy.py
Prints microseconds per packet for 1420-byte packets; compare side by side within one run
(timings on shared machines vary up to ~1.8x between runs).
"""

import ipaddress
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway_pkg.resources import CidrResource, DnsResource, Filter, InternetResource
from gateway_pkg.tunnel.packet import TCP_ACK, IpPacket
from gateway_pkg.tunnel.policy import ClientPolicy, TunAddresses
from tests.packets import build_tcp, build_udp

C4, C6 = "100.64.0.2", "fd00:2021:1111::2"
PAYLOAD = bytes(1420 - 40)
ip = ipaddress.ip_address


def setup() -> ClientPolicy:
    policy = ClientPolicy(C4, C6, TunAddresses("100.64.0.1", "fd00:2021:1111::1"))
    for i in range(20):
        policy.add_resource(
            CidrResource(f"c{i}", ipaddress.ip_network(f"10.{i}.0.0/16"), "c", (Filter("tcp", 80, 80),)),
            1e12,
        )
    policy.add_resource(CidrResource("v6", ipaddress.ip_network("2001:db8::/32"), "v6"), None)
    policy.add_resource(InternetResource("inet", (Filter("udp", 53, 53),)), None)
    policy.add_resource(DnsResource("d", "*.corp.example", "d"), None)
    policy.setup_nat("d", "app.corp.example", [ip("100.96.0.1")], [ip("192.0.2.1")], 0)
    return policy


def bench(name: str, fn, packet: bytes, n: int = 200_000) -> float:
    for _ in range(1000):
        fn(packet, 1.0)
    start = time.perf_counter()
    for _ in range(n):
        fn(packet, 1.0)
    us = (time.perf_counter() - start) / n * 1e6
    print(f"{name:<44} {us:7.2f} us/packet")
    return us


def main() -> None:
    policy = setup()
    print(f"Python {sys.version.split()[0]}, 1420-byte packets, 20 CIDR resources + internet + dns")
    try:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        aead = ChaCha20Poly1305(bytes(32))
        nonce = bytes(12)
        bench("reference: ChaCha20Poly1305 encrypt", lambda p, _now: aead.encrypt(nonce, p, None), PAYLOAD)
    except ImportError:
        pass
    base = bench(
        "parse only (IpPacket)", lambda p, _now: IpPacket(p), build_tcp(C4, "10.5.0.1", 1, 80, payload=PAYLOAD)
    )
    rows = [
        ("allow: cidr tcp/80 (v4)", policy.check_outbound, build_tcp(C4, "10.5.0.1", 40000, 80, payload=PAYLOAD)),
        ("allow: cidr no filters (v6 udp)", policy.check_outbound, build_udp(C6, "2001:db8::1", 1, 9, PAYLOAD)),
        ("allow: internet udp/53", policy.check_outbound, build_udp(C4, "8.8.8.8", 1, 53, PAYLOAD)),
        (
            "allow inbound: cidr tcp from :80",
            policy.check_inbound,
            build_tcp("10.5.0.1", C4, 80, 40000, flags=TCP_ACK, payload=PAYLOAD),
        ),
        ("drop: spoofed source", policy.check_outbound, build_tcp("100.64.0.9", "10.5.0.1", 1, 80, payload=PAYLOAD)),
        (
            "deny: filtered tcp/22 + ICMP prohibited",
            policy.check_outbound,
            build_tcp(C4, "10.5.0.1", 1, 22, payload=PAYLOAD),
        ),
        (
            "NAT outbound: tcp to proxy IP",
            policy.check_outbound,
            build_tcp(C4, "100.96.0.1", 40000, 443, payload=PAYLOAD),
        ),
        (
            "NAT inbound: tcp reply from real IP",
            policy.check_inbound,
            build_tcp("192.0.2.1", C4, 443, 40000, flags=TCP_ACK, payload=PAYLOAD),
        ),
    ]
    for name, fn, packet in rows:
        us = bench(name, fn, packet)
        print(f"{'':<44} ({us / base:4.1f}x parse)")


if __name__ == "__main__":
    main()
