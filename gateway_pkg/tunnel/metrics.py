"""Data-plane metrics. Direction "in" is client → resource (decrypted, written to TUN),
"out" is resource → client (read from TUN, encrypted)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PACKETS = Counter("firezone_gateway_packets", "IP packets forwarded", ["direction"])
BYTES = Counter("firezone_gateway_bytes", "IP bytes forwarded", ["direction"])
DROPPED = Counter("firezone_gateway_dropped_packets", "Packets and datagrams dropped, by reason", ["reason"])
HANDSHAKES = Counter("firezone_gateway_wireguard_handshakes", "Completed WireGuard handshakes")
ACTIVE_PEERS = Gauge("firezone_gateway_active_peers", "Clients with at least one authorized resource")
