"""Per-packet and per-handshake costs of the WireGuard core, side by side in one run.

    .venv/bin/python bench/bench_wireguard_core.py [--packets N]

Prints a table of microseconds per operation (best of several rounds) and ratios. Timings on
shared machines vary up to ~1.8x between runs; compare the rows of one run.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.wireguard_support

from gateway_pkg.wireguard import WireGuardDevice, keys
from gateway_pkg.wireguard.primitives import hmac, mac
from tests.wireguard_support import icmp_echo

PAYLOAD = 1420
NONCE = struct.Struct("<4xQ")


def measure(ops: list[tuple[str, Callable[[], object], int]], rounds: int) -> list[tuple[str, float]]:
    """Best-of-rounds microseconds per call, rounds interleaved across all operations so a
    burst of load on a shared machine hits every row alike."""
    best = {name: float("inf") for name, _, _ in ops}
    for _ in range(rounds):
        for name, fn, n in ops:
            start = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / n)
    return [(name, best[name] * 1e6) for name, _, _ in ops]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=2_000, help="calls per round and row")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    n = args.packets
    key = os.urandom(32)
    plaintext = os.urandom(PAYLOAD)
    aead = ChaCha20Poly1305(key)
    nonce = NONCE.pack(1)
    sealed = aead.encrypt(nonce, plaintext, None)
    view = memoryview(bytearray(16 + PAYLOAD + 16))[16:]

    # The whole core on a 1420-byte IPv4 packet, through the public API.
    gateway = WireGuardDevice(keys.generate_private_key(), under_load=lambda: False)
    client = WireGuardDevice(keys.generate_private_key(), under_load=lambda: False)
    gateway.add_peer(client.public_key, bytes(32))
    client.add_peer(gateway.public_key, bytes(32))
    gw_addr, cl_addr = ("192.0.2.1", 52625), ("192.0.2.2", 40000)
    client.set_peer_endpoint(gateway.public_key, gw_addr)
    out = client.initiate_handshake(gateway.public_key, 0.0)
    response = gateway.receive_datagram(out.datagrams[0][0], cl_addr, 0.0)
    confirm = client.receive_datagram(response.datagrams[0][0], gw_addr, 0.0)
    gateway.receive_datagram(confirm.datagrams[0][0], cl_addr, 0.0)
    packet = icmp_echo("100.64.0.2", "10.0.0.1", identifier=1, sequence=1, payload=bytes(PAYLOAD - 28))
    datagrams = [
        client.send_packet(gateway.public_key, packet, 1.0).datagrams[0][0] for _ in range(2 * n * args.rounds + 10)
    ]
    feed = iter(datagrams)
    batch_out = [packet] * 32
    priv, pub = keys.generate_private_key(), keys.public_key(keys.generate_private_key())

    def full_handshake() -> None:
        c = WireGuardDevice(keys.generate_private_key(), under_load=lambda: False)
        c.add_peer(gateway.public_key, bytes(32))
        c.set_peer_endpoint(gateway.public_key, gw_addr)
        gateway.add_peer(c.public_key, bytes(32))
        init = c.initiate_handshake(gateway.public_key, 0.0)
        resp = gateway.receive_datagram(init.datagrams[0][0], cl_addr, 0.0)
        c.receive_datagram(resp.datagrams[0][0], gw_addr, 0.0)
        gateway.remove_peer(c.public_key)

    ops: list[tuple[str, Callable[[], object], int]] = [
        ("AEAD encrypt: cryptography ChaCha20Poly1305.encrypt", lambda: aead.encrypt(nonce, plaintext, None), n),
        ("AEAD encrypt: cryptography encrypt_into (preallocated)",
         lambda: aead.encrypt_into(nonce, plaintext, None, view), n),
        ("AEAD encrypt: PyNaCl crypto_aead_chacha20poly1305_ietf_encrypt",
         lambda: crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, None, nonce, key), n),
        ("AEAD decrypt: cryptography ChaCha20Poly1305.decrypt", lambda: aead.decrypt(nonce, sealed, None), n),
        ("AEAD decrypt: PyNaCl crypto_aead_chacha20poly1305_ietf_decrypt",
         lambda: crypto_aead_chacha20poly1305_ietf_decrypt(sealed, None, nonce, key), n),
        ("core: send_packet (pad, encrypt, timers, DeviceOutput)",
         lambda: gateway.send_packet(client.public_key, packet, 1.0), n),
        ("core: receive_datagram (replay, decrypt, trim, roaming)",
         lambda: gateway.receive_datagram(next(feed), cl_addr, 1.0), n),
        ("core: send_packets, batch of 32 (per packet)",
         lambda: gateway.send_packets(client.public_key, batch_out, 1.0), n // 32),
        ("core: receive_datagrams, batch of 32 (per packet)",
         lambda: gateway.receive_datagrams([(next(feed), cl_addr) for _ in range(32)], 1.0), n // 32),
        ("X25519 (PyNaCl crypto_scalarmult)", lambda: keys.dh(priv, pub), max(n // 10, 10)),
        ("keyed BLAKE2s-128 (mac1 over 116 bytes)", lambda: mac(key, plaintext[:116]), n),
        ("HMAC-BLAKE2s (one KDF step)", lambda: hmac(key, plaintext[:32]), n),
        ("full handshake, both sides (incl. peer setup)", full_handshake, max(n // 200, 3)),
    ]  # fmt: skip
    rows = [(name, us / 32 if "batch of 32" in name else us) for name, us in measure(ops, args.rounds)]

    baseline = rows[0][1]
    print(f"WireGuard core, {PAYLOAD}-byte payload, best of {args.rounds} interleaved rounds")
    print(f"{'operation':<64} {'us/op':>8} {'vs row 1':>9}")
    for name, micros in rows:
        print(f"{name:<64} {micros:>8.2f} {micros / baseline:>8.2f}x")
    by_name = dict(rows)
    send = by_name["core: send_packet (pad, encrypt, timers, DeviceOutput)"]
    receive = by_name["core: receive_datagram (replay, decrypt, trim, roaming)"]
    nacl_ratio = (
        by_name["AEAD encrypt: PyNaCl crypto_aead_chacha20poly1305_ietf_encrypt"]
        / by_name["AEAD encrypt: cryptography ChaCha20Poly1305.encrypt"]
    )
    print(f"\nPyNaCl / cryptography AEAD encrypt: {nacl_ratio:.1f}x")
    print(f"core on one core: send {1e6 / send:,.0f} pkt/s, receive {1e6 / receive:,.0f} pkt/s")


if __name__ == "__main__":
    main()
