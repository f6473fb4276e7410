"""Per-packet cost of the TUN offloads' byte work (tunnel/offload.py), sans I/O.

Run: .venv/bin/python bench/bench_offload.py [--native both|auto|off]
Prints microseconds per packet: split_read of a 64 KB TCP super-packet (per segment it
yields), coalesce of 44 TCP segments into one GRO write (per segment), a NEEDS_CSUM
completion and a plain NO_OFFLOAD pass-through (per packet), with a reference (copying and
checksumming one 1280-byte packet) and the 1-minute load average before and after: on a busy
machine the figures run high (timings on shared machines vary up to ~1.8x between runs).
--native: the checksums of gateway_pkg._native (auto), the pure-Python ones (off), or both
(the default), each case measured on both paths back to back, with the ratio off / native.
"""

import argparse
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway_pkg.tunnel import checksum
from gateway_pkg.tunnel.checksum import internet_checksum
from gateway_pkg.tunnel.offload import GSO_NONE, VNET_HDR_LEN, coalesce, split_read
from tests.unit.tunnel.test_offload import flow, gso_read, udp, vnet

MSS = 1240  # the TCP payload of a 1280-byte IPv4 packet (tun-firezone's MTU)


MODES: list[str] = ["off", "auto"]


def measure(fn: Callable[[], object], per: int, seconds: float) -> float:
    for _ in range(20):
        fn()
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            fn()
        n += 20
    return (time.perf_counter() - start) / (n * per) * 1e6


def bench(name: str, fn: Callable[[], object], per: int, seconds: float = 1.0) -> None:
    """`fn` on each path of MODES (the checksums switched as the gateway switches them)."""
    figures = {}
    for mode in MODES:
        checksum.select_native(mode)
        figures[mode] = measure(fn, per, seconds)
    cells = " ".join(f"{figures[m]:7.2f}" for m in MODES)
    ratio = f" {figures['off'] / figures['auto']:5.2f}x" if len(MODES) == 2 else ""
    print(f"{name:<58} {cells}{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native", choices=["both", "auto", "off"], default="both")
    args = parser.parse_args()
    MODES[:] = ["off", "auto"] if args.native == "both" else [args.native]
    load = os.getloadavg()[0]
    print(f"Python {sys.version.split()[0]}; load average (1 min) before: {load:.2f}"
          + (" (above 0.5: not idle, the figures and ratios are taken under load)" if load > 0.5 else ""))
    for mode in MODES:
        print(f"  {mode:<4}: {checksum.select_native(mode)}")
    if "auto" in MODES and not checksum.native_active:
        print("  (gateway_pkg._native is not built: auto is pure Python here)")
    header = " ".join(f"{'pure' if m == 'off' else 'native':>7}" for m in MODES)
    print(f"{'us/packet':<58} {header}{'  ratio' if len(MODES) == 2 else ''}")
    tso4 = gso_read(6, 4, bytes(i % 251 for i in range(65535 - 40)), MSS)
    tso6 = gso_read(6, 6, bytes(i % 251 for i in range(65535 - 20)), MSS - 20)
    uso4 = gso_read(17, 4, bytes(i % 251 for i in range(44 * 1252)), 1252)
    segments4 = flow(44, 4, MSS)
    segments6 = flow(44, 6, MSS - 20)
    datagrams = [udp(4, bytes([i]) * 1252, ident=i) for i in range(44)]
    assert len(coalesce(segments4)) == 1 and len(coalesce(datagrams, udp=True)) == 1
    packet = segments4[0]
    needs_csum = bytearray(tso4[: VNET_HDR_LEN + 40 + MSS])
    needs_csum[:VNET_HDR_LEN] = vnet(1, GSO_NONE, 0, 0, 20, 16)
    struct.pack_into("!H", needs_csum, VNET_HDR_LEN + 2, 40 + MSS)
    needs_csum_read = bytes(needs_csum)
    plain = b"\x00" * VNET_HDR_LEN + packet

    n4, n6, nu = len(split_read(tso4)), len(split_read(tso6)), len(split_read(uso4))
    bench("reference: copy + internet_checksum of a 1280-byte packet", lambda: internet_checksum(bytes(packet)), 1)
    bench(f"split_read: 64 KB TCP/IPv4 super-packet ({n4} segments)", lambda: split_read(tso4), n4)
    bench(f"split_read: 64 KB TCP/IPv6 super-packet ({n6} segments)", lambda: split_read(tso6), n6)
    bench(f"split_read: UDP/IPv4 USO read ({nu} datagrams)", lambda: split_read(uso4), nu)
    bench("split_read: NEEDS_CSUM completion (1280-byte TCP)", lambda: split_read(needs_csum_read), 1)
    bench("split_read: NO_OFFLOAD pass-through (1280 bytes)", lambda: split_read(plain), 1)
    bench("coalesce: 44 TCP/IPv4 segments -> 1 write", lambda: coalesce(segments4), 44)
    bench("coalesce: 44 TCP/IPv6 segments -> 1 write", lambda: coalesce(segments6), 44)
    bench("coalesce: 44 UDP/IPv4 datagrams -> 1 write (udp=True)", lambda: coalesce(datagrams, udp=True), 44)
    bench("coalesce: 44 UDP/IPv4 datagrams, udp=False (44 writes)", lambda: coalesce(datagrams), 44)
    print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
