"""Data-plane metrics. Direction "in" is client → resource (decrypted, written to TUN),
"out" is resource → client (read from TUN, encrypted).

Per-packet counts are plain integer attributes rendered by a collector at scrape time:
a labelled prometheus_client counter costs about 2.5 µs per increment (measured by
bench/bench_tunnel.py's profile), which on two counters per packet was a tenth of the
gateway's CPU. Rare events (drops, handshakes) use ordinary metrics.

Clients and resources (`watch_clients`): aggregate and per-resource series always; series
labelled by client only with `FIREZONE_METRICS_PER_CLIENT` (one series per client can be many).

IP fragmentation (outer datagrams on a path narrower than 1340/1360 bytes, see tunnel/udp.py)
is counted by the kernel, not per packet here: its counters for the gateway's network namespace
(/proc/net/snmp, /proc/net/snmp6) are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway_pkg.tunnel.accounting import ClientCounters, Counters, ResourceCounters

DROPPED = Counter("firezone_gateway_dropped_packets", "Packets and datagrams dropped, by reason", ["reason"])
HANDSHAKES = Counter("firezone_gateway_wireguard_handshakes", "Completed WireGuard handshakes")
HANDSHAKE_FAILURES = Counter("firezone_gateway_wireguard_handshake_failures",
                             "Failed WireGuard handshakes with authorized clients, by reason", ["reason"])
ACTIVE_PEERS = Gauge("firezone_gateway_active_peers", "Clients with at least one authorized resource")


# The kernel offloads, each counted where a system call carried more than one packet.
OFFLOADS = ("udp_gro", "udp_gso", "tun_tso", "tun_uso", "tun_gro_tcp", "tun_gro_udp")


class Traffic:
    """Plain integers on the packet path (a labelled Counter costs a lookup per packet),
    turned into metrics when scraped."""

    __slots__ = ("bytes_in", "bytes_out", "offload_calls", "offload_packets", "packets_in", "packets_out")

    def __init__(self) -> None:
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0
        self.offload_calls = dict.fromkeys(OFFLOADS, 0)  # system calls that carried several packets
        self.offload_packets = dict.fromkeys(OFFLOADS, 0)  # the packets they carried


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
        calls = CounterMetricFamily("firezone_gateway_offload_calls",
                                    "System calls that carried several packets, by kernel offload: "
                                    "udp_gro receive, udp_gso send, tun_tso/tun_uso read (TCP/UDP), "
                                    "tun_gro_tcp/tun_gro_udp write",
                                    labels=["offload"])
        carried = CounterMetricFamily("firezone_gateway_offload_packets",
                                      "Packets carried by those system calls, by kernel offload", labels=["offload"])
        for name in OFFLOADS:
            calls.add_metric([name], TRAFFIC.offload_calls[name])
            carried.add_metric([name], TRAFFIC.offload_packets[name])
        yield calls
        yield carried


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
        if _per_client():
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


class ClientsView(Protocol):
    """What the data plane shows about its clients and resources at scrape time."""

    def client_counters(self) -> Iterable[tuple[str, ClientCounters, Iterable[str]]]:
        """(client id, its counters, the ids of the resources it may use) for every client."""
        ...

    def resource_counters(self) -> Iterable[ResourceCounters]: ...

    def connected_clients(self) -> int: ...

    def active_flows(self) -> int | None:
        """Flows tracked for the flow logs; None when they are off."""
        ...


_clients: list[tuple[ClientsView, bool]] = []


def watch_clients(view: ClientsView, per_client: bool) -> None:
    """The data plane registers itself once; `per_client` adds the series labelled by client."""
    _clients[:] = [(view, per_client)]


def _per_client() -> bool:
    return bool(_clients) and _clients[0][1]


def _traffic_families(prefix: str, what: str, label: str,
                      rows: Iterable[tuple[str, Counters]]) -> tuple[CounterMetricFamily, CounterMetricFamily]:
    packets = CounterMetricFamily(f"{prefix}_packets", f"IP packets forwarded, by {what} and direction",
                                  labels=[label, "direction"])
    volume = CounterMetricFamily(f"{prefix}_bytes", f"IP bytes forwarded, by {what} and direction",
                                 labels=[label, "direction"])
    for key, counters in rows:
        packets.add_metric([key, "in"], counters.packets_in)
        packets.add_metric([key, "out"], counters.packets_out)
        volume.add_metric([key, "in"], counters.bytes_in)
        volume.add_metric([key, "out"], counters.bytes_out)
    return packets, volume


class _ClientCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        if not _clients:
            return
        view, per_client = _clients[0]
        clients = sorted(view.client_counters(), key=lambda row: row[0])
        yield GaugeMetricFamily("firezone_gateway_connected_clients",
                                "Clients with a WireGuard session that can carry traffic",
                                value=view.connected_clients())
        resources = sorted(view.resource_counters(), key=lambda r: r.id)
        authorized = dict.fromkeys((r.id for r in resources), 0)
        for _client_id, _counters, resource_ids in clients:
            for resource_id in resource_ids:
                authorized[resource_id] = authorized.get(resource_id, 0) + 1
        flows = GaugeMetricFamily("firezone_gateway_resource_flows",
                                  "Clients authorized to use each resource (the portal's flows)",
                                  labels=["resource_id"])
        for resource_id, count in sorted(authorized.items()):
            flows.add_metric([resource_id], count)
        yield flows
        info = GaugeMetricFamily("firezone_gateway_resource_info", "Each resource's name, type and address",
                                 labels=["resource_id", "name", "type", "address"])
        for r in resources:
            info.add_metric([r.id, r.name, r.kind, r.address], 1)
        yield info
        yield from _traffic_families("firezone_gateway_resource", "resource", "resource_id",
                                     ((r.id, r) for r in resources))
        active = view.active_flows()
        if active is not None:
            yield GaugeMetricFamily("firezone_gateway_flows_tracked", "Flows followed for the flow logs",
                                    value=active)
        if not per_client:
            return
        yield from _traffic_families("firezone_gateway_client", "client", "client_id",
                                     ((cid, counters) for cid, counters, _ in clients))
        handshakes = CounterMetricFamily("firezone_gateway_client_handshakes",
                                         "Completed WireGuard handshakes, by client", labels=["client_id"])
        failures = CounterMetricFamily("firezone_gateway_client_handshake_failures",
                                       "Failed WireGuard handshakes, by client and reason",
                                       labels=["client_id", "reason"])
        for client_id, counters, _ in clients:
            handshakes.add_metric([client_id], counters.handshakes)
            for reason, count in sorted(counters.handshake_failures.items()):
                failures.add_metric([client_id, reason], count)
        yield handshakes
        yield failures


# reason -> the kernel's counters summed for it: IPv4 (/proc/net/snmp "Ip:"), IPv6 (/proc/net/snmp6).
FRAGMENTATION: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "fragments_received": (("ReasmReqds",), ("Ip6ReasmReqds",)),  # fragments that arrived
    "reassembled": (("ReasmOKs",), ("Ip6ReasmOKs",)),  # packets put back together from them
    "reassembly_failed": (("ReasmFails",), ("Ip6ReasmFails",)),  # incl. a fragment lost on the way
    "fragmented": (("FragOKs",), ("Ip6FragOKs",)),  # packets sent (or forwarded) in fragments
    "fragments_created": (("FragCreates",), ("Ip6FragCreates",)),
    # Too big for the next link and not to be fragmented (IPv4 DF, IPv6 in transit): dropped,
    # ICMP "fragmentation needed" / Packet Too Big sent back (e.g. a resource's DF-set reply
    # larger than tun-firezone's 1280).
    "too_big": (("FragFails",), ("Ip6FragFails", "Ip6InTooBigErrors")),
}


def parse_snmp(text: str) -> dict[str, int]:
    """The `Ip:` counters of /proc/net/snmp (a line of names, then a line of values)."""
    rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Ip:")]
    if len(rows) < 2:
        return {}
    return {name: int(value) for name, value in zip(rows[0], rows[1], strict=False) if value.lstrip("-").isdigit()}


def parse_snmp6(text: str) -> dict[str, int]:
    """/proc/net/snmp6: one `name value` per line."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            values[parts[0]] = int(parts[1])
    return values


def fragmentation(ipv4: Mapping[str, int], ipv6: Mapping[str, int]) -> list[tuple[str, str, int]]:
    """(family, reason, count) for every reason the kernel reports."""
    rows: list[tuple[str, str, int]] = []
    for reason, (names4, names6) in FRAGMENTATION.items():
        for family, names, values in (("ipv4", names4, ipv4), ("ipv6", names6, ipv6)):
            if any(name in values for name in names):
                rows.append((family, reason, sum(values.get(name, 0) for name in names)))
    return rows


class _FragmentationCollector(Collector):
    def __init__(self, proc_net: Path = Path("/proc/net")) -> None:
        self._proc_net = proc_net

    def _read(self, name: str) -> str:
        try:
            return (self._proc_net / name).read_text()
        except OSError:
            return ""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "firezone_gateway_ip_fragmentation",
            "IP fragmentation in the gateway's network namespace, by IP version and reason (the kernel's counters)",
            labels=["family", "reason"])
        for version, reason, count in fragmentation(parse_snmp(self._read("snmp")), parse_snmp6(self._read("snmp6"))):
            family.add_metric([version, reason], count)
        yield family


REGISTRY.register(_TrafficCollector())
REGISTRY.register(_TraversalCollector())
REGISTRY.register(_ClientCollector())
REGISTRY.register(_FragmentationCollector())
