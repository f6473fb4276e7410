"""Data-plane metrics. Direction "in" is client → resource (decrypted, written to TUN),
"out" is resource → client (read from TUN, encrypted).

Per-packet counts are plain integer attributes rendered by a collector at scrape time:
a labelled prometheus_client counter costs about 2.5 µs per increment (measured by
bench/bench_tunnel.py's profile), which on two counters per packet was a tenth of the
gateway's CPU. Rare events (drops, handshakes) use ordinary metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

DROPPED = Counter("firezone_gateway_dropped_packets", "Packets and datagrams dropped, by reason", ["reason"])
HANDSHAKES = Counter("firezone_gateway_wireguard_handshakes", "Completed WireGuard handshakes")
ACTIVE_PEERS = Gauge("firezone_gateway_active_peers", "Clients with at least one authorized resource")


class Traffic:
    __slots__ = ("bytes_in", "bytes_out", "packets_in", "packets_out")

    def __init__(self) -> None:
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0


TRAFFIC = Traffic()


class _TrafficCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily]:
        packets = CounterMetricFamily("firezone_gateway_packets", "IP packets forwarded", labels=["direction"])
        packets.add_metric(["in"], TRAFFIC.packets_in)
        packets.add_metric(["out"], TRAFFIC.packets_out)
        yield packets
        volume = CounterMetricFamily("firezone_gateway_bytes", "IP bytes forwarded", labels=["direction"])
        volume.add_metric(["in"], TRAFFIC.bytes_in)
        volume.add_metric(["out"], TRAFFIC.bytes_out)
        yield volume


class TraversalView(Protocol):
    """What NAT traversal (`ice.node.Traversal`) shows at scrape time."""

    relay_bytes_in: int
    relay_bytes_out: int

    @property
    def dropped(self) -> Mapping[str, int]: ...

    def paths(self) -> dict[str, str]: ...

    def relays_allocated(self) -> int: ...


_traversal: list[TraversalView] = []


def watch_traversal(view: TraversalView) -> None:
    """The data plane registers its traversal layer once; the last one registered is shown."""
    _traversal[:] = [view]


class _TraversalCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        if not _traversal:
            return
        view = _traversal[0]
        relayed = CounterMetricFamily("firezone_gateway_relay_bytes",
                                      "WireGuard bytes on relayed paths (our relays or the client's)",
                                      labels=["direction"])
        relayed.add_metric(["in"], view.relay_bytes_in)
        relayed.add_metric(["out"], view.relay_bytes_out)
        yield relayed
        paths = view.paths()
        by_kind = GaugeMetricFamily("firezone_gateway_ice_connections",
                                    "Clients with a nominated ICE path, by path", labels=["path"])
        for kind in ("host", "srflx", "relay"):
            by_kind.add_metric([kind], sum(1 for k in paths.values() if k == kind))
        yield by_kind
        per_client = GaugeMetricFamily("firezone_gateway_ice_client_path",
                                       "The path each client's tunnel takes (1 for the current one)",
                                       labels=["client_id", "path"])
        for client_id, kind in sorted(paths.items()):
            per_client.add_metric([client_id, kind], 1)
        yield per_client
        drops = CounterMetricFamily("firezone_gateway_stun_dropped",
                                    "STUN/TURN datagrams dropped, by reason", labels=["reason"])
        for reason, count in sorted(view.dropped.items()):
            drops.add_metric([reason], count)
        yield drops
        yield GaugeMetricFamily("firezone_gateway_relays_allocated", "TURN allocations in place",
                                value=view.relays_allocated())


REGISTRY.register(_TrafficCollector())
REGISTRY.register(_TraversalCollector())
