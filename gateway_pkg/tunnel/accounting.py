"""Traffic counted per client and per resource, sans-I/O.

The packet paths add to plain integer slots (a labelled Prometheus counter costs a lookup
per packet); `tunnel.metrics` turns them into series when `/metrics` is scraped. Direction
follows the rest of the data plane: "in" is client → resource, "out" is resource → client.

Resource counters live as long as the process, so their series never go backwards when a
resource is removed and authorized again; a client's counters live as long as the client.
"""

from __future__ import annotations

from gateway_pkg.resources import CidrResource, DnsResource, Resource


class Counters:
    """Packets and bytes each way."""

    __slots__ = ("bytes_in", "bytes_out", "packets_in", "packets_out")

    def __init__(self) -> None:
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0


class ClientCounters(Counters):
    """A client's traffic and its WireGuard handshakes (failures by reason)."""

    __slots__ = ("handshake_failures", "handshakes")

    def __init__(self) -> None:
        super().__init__()
        self.handshakes = 0
        self.handshake_failures: dict[str, int] = {}


class ResourceCounters(Counters):
    """A resource's counters and what the metrics show about it."""

    __slots__ = ("address", "id", "kind", "name")

    def __init__(self, resource: Resource) -> None:
        super().__init__()
        self.id = resource.id
        self.describe(resource)

    def describe(self, resource: Resource) -> None:
        if isinstance(resource, CidrResource):
            self.kind, self.name, self.address = "cidr", resource.name, str(resource.address)
        elif isinstance(resource, DnsResource):
            self.kind, self.name, self.address = "dns", resource.name, resource.address
        else:
            self.kind, self.name, self.address = "internet", "Internet", ""


class Accounting:
    """Every resource's counters, shared by all clients' policies."""

    def __init__(self) -> None:
        self.resources: dict[str, ResourceCounters] = {}

    def resource(self, resource: Resource) -> ResourceCounters:
        """The counters of `resource`, created on first use; its name and address follow the
        latest authorization."""
        counters = self.resources.get(resource.id)
        if counters is None:
            counters = self.resources[resource.id] = ResourceCounters(resource)
        else:
            counters.describe(resource)
        return counters
