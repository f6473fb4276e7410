"""Per-client resource policy: what a client may send through the gateway, and receive.

One `ClientPolicy` per connected client, fed by the portal messages (authorize_flow /
allow_access -> `add_resource`, reject_access -> `remove_resource`, resource_updated ->
`update_filters`, access_authorization_expiry_updated / init -> `set_expiry`) and by
AssignedIps (`setup_nat`), and asked once per packet:

- `check_outbound(packet, now)` for a packet decrypted from the client, before it is
  written to the TUN device;
- `check_inbound(packet, now)` for a packet read from the TUN device for this client,
  before it is encrypted.

Both return a `Verdict`: `FORWARD` (with `packet` set when the DNS-resource NAT rewrote
it, else None: forward the input as is; `resource` is the counters of the resource the packet
is accounted to, None for the gateway's own addresses and ICMP errors), `REPLY` (do not forward; send `reply`, an ICMP
error, back to the client) or `DROP`. `REPLY` and `DROP` carry a short stable `reason`
for metrics: "malformed", "spoofed_source", "not_for_client", "not_authorized",
"expired", "filtered", "nat_unmapped", "nat_unsupported", "nat_no_session",
"nat_ports_exhausted".

Rules (upstream `ClientOnGateway`, ../shared/reference/firezone-gateway-facts.md §3.4):
- outbound: the source must be the client's tunnel IPv4/IPv6; the gateway's own TUN IPs
  are always reachable; otherwise the destination must be covered by an authorized,
  unexpired resource (CIDR network, DNS proxy IP assigned by the client, or the internet
  resource for anything outside the proxy ranges) and the packet must pass the filters of
  the resources covering it; denied packets get ICMP "administratively prohibited"; a
  proxy IP whose name did not resolve in its family gets host/address unreachable;
- inbound: the destination must be the client's IP; ICMP errors are always let through
  (mapped back through the NAT when they quote a NAT-ed flow); NAT answers are mapped
  back; otherwise the source must pass the filters (its port against the port ranges);
  failures are dropped.

Overlapping resources: a destination is allowed when any covering resource allows it.
That is what upstream's longest-prefix table computes (each prefix's filters are the
union of all resources containing it), written as a per-destination cache. Its traffic is
accounted to the most specific one: the DNS resource owning a proxy IP, else the CIDR
resource with the longest prefix, else the internet resource.

Expiry: `expires_at` (Unix seconds) is enforced per packet from `now`; `expire(now)`,
called every second, removes expired resources and returns their ids so the caller can
say goodbye to a client left with none (`is_empty`).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from gateway_pkg.resources import (
    CidrResource,
    DnsResource,
    Filter,
    InternetResource,
    IPAddress,
    Resource,
)
from gateway_pkg.tunnel import icmp
from gateway_pkg.tunnel.accounting import Accounting, ResourceCounters
from gateway_pkg.tunnel.dns_match import domain_matches
from gateway_pkg.tunnel.nat import (
    REASON_UNMAPPED,
    DnsResourceNat,
    is_proxy_ip,
)
from gateway_pkg.tunnel.packet import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    IpPacket,
    PacketError,
)

log = logging.getLogger(__name__)

REASON_MALFORMED: Final = "malformed"
REASON_SPOOFED: Final = "spoofed_source"
REASON_NOT_FOR_CLIENT: Final = "not_for_client"
REASON_NOT_AUTHORIZED: Final = "not_authorized"
REASON_EXPIRED: Final = "expired"
REASON_FILTERED: Final = "filtered"

_INFINITY: Final = float("inf")
# Per-destination decisions cached per client; bounded because the internet resource
# makes every address a destination.
_CACHE_LIMIT: Final = 4096


class Action(enum.IntEnum):
    FORWARD = 0
    REPLY = 1
    DROP = 2


class Verdict(NamedTuple):
    action: Action
    packet: bytes | bytearray | None = None  # rewritten packet to forward (None: as is)
    reply: bytes | None = None  # ICMP error to send back to the client
    reason: str | None = None
    resource: ResourceCounters | None = None  # FORWARD: the resource the packet counts for


ALLOW: Final = Verdict(Action.FORWARD)
_DROPS: dict[str, Verdict] = {}


def _drop(reason: str) -> Verdict:
    verdict = _DROPS.get(reason)
    if verdict is None:
        verdict = _DROPS[reason] = Verdict(Action.DROP, reason=reason)
    return verdict


class CompiledFilters:
    """The union of the filters of one or more resources, ready for per-packet checks."""

    __slots__ = ("allow_all", "icmp", "tcp", "udp")

    def __init__(self, filter_lists: Iterable[tuple[Filter, ...]]) -> None:
        self.allow_all = False
        self.icmp = False
        tcp: list[tuple[int, int]] = []
        udp: list[tuple[int, int]] = []
        for filters in filter_lists:
            if not filters:
                self.allow_all = True  # an empty list permits everything
            for f in filters:
                if f.protocol == "icmp":
                    self.icmp = True
                elif f.protocol == "tcp":
                    tcp.append((f.port_range_start, f.port_range_end))
                else:
                    udp.append((f.port_range_start, f.port_range_end))
        self.tcp = tuple(tcp)
        self.udp = tuple(udp)

    def permits(self, protocol: int, port: int | None) -> bool:
        """`port`: the resource-side port (destination outbound, source inbound)."""
        if self.allow_all:
            return True
        if protocol == PROTO_TCP:
            ranges = self.tcp
        elif protocol == PROTO_UDP:
            ranges = self.udp
        else:
            return self.icmp and protocol in (PROTO_ICMP, PROTO_ICMPV6)
        if port is None:  # a later fragment: no port to check
            return False
        # A plain loop: any() over a generator costs about twice as much per packet.
        for lo, hi in ranges:  # noqa: SIM110
            if lo <= port <= hi:
                return True
        return False


@dataclass(slots=True)
class Authorization:
    """One resource authorized for a client."""

    resource: Resource
    expires_at: float | None
    counters: ResourceCounters
    allow: Verdict  # FORWARD as is, accounted to this resource
    # DNS resources: the proxy IPs (packed) the client assigned, over all its domains.
    proxy_ips: set[bytes] = field(default_factory=set)
    # CIDR resources: (address length, network as int, netmask as int)
    network: tuple[int, int, int] | None = None


class TunAddresses:
    """The gateway's own TUN addresses, shared by all clients' policies.

    Set again on every `init`; policies read it per packet.
    """

    __slots__ = ("packed",)

    def __init__(self, *addresses: IPAddress | str) -> None:
        self.packed: frozenset[bytes] = frozenset()
        self.set(*addresses)

    def set(self, *addresses: IPAddress | str) -> None:
        self.packed = frozenset(ipaddress.ip_address(a).packed for a in addresses)


# (filters or None, valid until, reason when filters is None, destination is a proxy IP,
#  the FORWARD verdict of the resource accounted for it, that resource's counters)
_CacheEntry = tuple[CompiledFilters | None, float, str, bool, Verdict, ResourceCounters | None]


class ClientPolicy:
    """The resources one client may use, and the per-packet checks."""

    def __init__(
        self,
        client_ipv4: IPAddress | str,
        client_ipv6: IPAddress | str,
        gateway_addresses: TunAddresses | None = None,
        accounting: Accounting | None = None,
    ) -> None:
        self.client_ipv4 = ipaddress.IPv4Address(client_ipv4)
        self.client_ipv6 = ipaddress.IPv6Address(client_ipv6)
        self._ipv4 = self.client_ipv4.packed
        self._ipv6 = self.client_ipv6.packed
        self._gateway = gateway_addresses if gateway_addresses is not None else TunAddresses()
        self._accounting = accounting if accounting is not None else Accounting()
        self._authorizations: dict[str, Authorization] = {}
        self._cache: dict[bytes, _CacheEntry] = {}
        self.nat = DnsResourceNat()

    # --- authorization state (portal messages) -------------------------------------------

    def add_resource(self, resource: Resource, expires_at: float | None) -> None:
        """Authorize `resource` until `expires_at` (None: no expiry). Re-adding replaces
        the resource and its expiry, keeping a DNS resource's proxy IPs and NAT."""
        old = self._authorizations.get(resource.id)
        counters = self._accounting.resource(resource)
        auth = Authorization(resource, expires_at, counters, Verdict(Action.FORWARD, resource=counters))
        if isinstance(resource, CidrResource):
            net = resource.address
            auth.network = (
                net.max_prefixlen // 8,
                int(net.network_address),
                int(net.netmask),
            )
        if old is not None:
            if isinstance(resource, DnsResource) and isinstance(old.resource, DnsResource):
                auth.proxy_ips = old.proxy_ips
            else:
                self.nat.remove_resource(resource.id)
        self._authorizations[resource.id] = auth
        self._cache.clear()

    def remove_resource(self, resource_id: str) -> bool:
        auth = self._authorizations.pop(resource_id, None)
        if auth is None:
            return False
        self.nat.remove_resource(resource_id)
        self._cache.clear()
        return True

    def update_filters(self, resource: Resource) -> bool:
        """resource_updated: apply the new filters only. A changed type is an error the
        portal should never cause (it sends reject_access instead); it is logged and
        ignored, as upstream does."""
        auth = self._authorizations.get(resource.id)
        if auth is None:
            return False
        if type(auth.resource) is not type(resource):
            log.error(
                "resource_updated changed the type of resource %s from %s to %s; ignored",
                resource.id,
                type(auth.resource).__name__,
                type(resource).__name__,
            )
            return False
        old = auth.resource
        self._accounting.resource(resource)  # its name may have changed
        if isinstance(old, CidrResource):
            auth.resource = CidrResource(old.id, old.address, old.name, resource.filters)
        elif isinstance(old, DnsResource):
            auth.resource = DnsResource(old.id, old.address, old.name, resource.filters)
        else:
            auth.resource = InternetResource(old.id, resource.filters)
        self._cache.clear()
        return True

    def set_expiry(self, resource_id: str, expires_at: float | None) -> bool:
        auth = self._authorizations.get(resource_id)
        if auth is None:
            return False
        auth.expires_at = expires_at
        self._cache.clear()
        return True

    def expire(self, now: float) -> list[str]:
        """Remove resources whose authorization has expired; returns their ids.

        Also forgets expired NAT sessions, so call it periodically (every second).
        """
        gone = [
            rid for rid, auth in self._authorizations.items() if auth.expires_at is not None and auth.expires_at <= now
        ]
        for rid in gone:
            self.remove_resource(rid)
        self.nat.purge(now)
        return gone

    def is_empty(self) -> bool:
        return not self._authorizations

    def resource_ids(self) -> list[str]:
        return list(self._authorizations)

    def has_resource(self, resource_id: str) -> bool:
        return resource_id in self._authorizations

    def setup_nat(
        self,
        resource_id: str,
        domain: str,
        proxy_ips: Iterable[IPAddress],
        resolved_ips: Iterable[IPAddress],
        now: float,
    ) -> bool:
        """Install the DNS-resource NAT for `domain` (AssignedIps, or 1.3's payload).

        Returns whether it is active (the DomainStatus to answer): False when the
        resource is not an authorized DNS resource or `domain` is not covered by its
        address pattern; only proxy IPs inside the proxy ranges are accepted.
        """
        auth = self._authorizations.get(resource_id)
        if auth is None or not isinstance(auth.resource, DnsResource):
            return False
        if not domain_matches(auth.resource.address, domain):
            log.warning(
                "domain %s is not covered by resource %s (%s)",
                domain,
                resource_id,
                auth.resource.address,
            )
            return False
        proxies = [ip for ip in proxy_ips if is_proxy_ip(ip.packed)]
        self.nat.setup(resource_id, domain, proxies, resolved_ips, now)
        # A reset may have dropped other resources' proxy IPs: re-read from the table.
        for other in self._authorizations.values():
            if isinstance(other.resource, DnsResource):
                other.proxy_ips = self.nat.proxies_of(other.resource.id)
        self._cache.clear()
        return True

    # --- per-packet checks -------------------------------------------------------------

    def _lookup(self, address: bytes, now: float) -> _CacheEntry:
        """Which authorized resources cover `address`, as one decision (cached)."""
        proxy = is_proxy_ip(address)
        addr_int = int.from_bytes(address, "big")
        addr_len = len(address)
        active: list[tuple[Filter, ...]] = []
        valid_until = _INFINITY
        expired = False
        primary: Authorization | None = None
        rank = -1  # of `primary`: a proxy IP's resource 256, a CIDR its prefix length, internet 0
        for auth in self._authorizations.values():
            resource = auth.resource
            if proxy:
                covers = address in auth.proxy_ips
            elif auth.network is not None:
                length, net, mask = auth.network
                covers = length == addr_len and (addr_int & mask) == net
            else:
                covers = isinstance(resource, InternetResource)
            if not covers:
                continue
            expires_at = auth.expires_at
            if expires_at is not None:
                if expires_at <= now:
                    expired = True
                    continue
                valid_until = min(valid_until, expires_at)
            active.append(resource.filters)
            this_rank = 256 if proxy else resource.address.prefixlen if isinstance(resource, CidrResource) else 0
            if this_rank > rank:
                primary, rank = auth, this_rank
        entry: _CacheEntry
        if primary is not None:
            entry = (CompiledFilters(active), valid_until, "", proxy, primary.allow, primary.counters)
        else:
            entry = (None, _INFINITY, REASON_EXPIRED if expired else REASON_NOT_AUTHORIZED, proxy, ALLOW, None)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[address] = entry
        return entry

    def _reject(self, p: IpPacket, reason: str) -> Verdict:
        reply = icmp.unreachable(p) if reason == REASON_UNMAPPED else icmp.prohibited(p)
        if reply is None:
            return _drop(reason)
        return Verdict(Action.REPLY, None, reply, reason)

    def check_outbound(self, packet: bytes | bytearray, now: float) -> Verdict:
        """A packet from the client (decrypted), about to be written to the TUN device."""
        try:
            p = IpPacket(packet)
        except PacketError:
            return _drop(REASON_MALFORMED)
        if p.src != (self._ipv4 if p.version == 4 else self._ipv6):
            return _drop(REASON_SPOOFED)
        dst = p.dst
        if dst in self._gateway.packed:
            return ALLOW
        entry = self._cache.get(dst)
        if entry is None or now >= entry[1]:
            entry = self._lookup(dst, now)
        filters = entry[0]
        if filters is None:
            return self._reject(p, entry[2])
        if not filters.permits(p.protocol, p.dst_port):
            return self._reject(p, REASON_FILTERED)
        if not entry[3]:
            return entry[4]
        translated = self.nat.translate_outbound(p, now)
        if isinstance(translated, str):
            if translated == REASON_UNMAPPED:
                return self._reject(p, translated)
            return _drop(translated)
        return Verdict(Action.FORWARD, translated, resource=entry[5])

    def check_inbound(self, packet: bytes | bytearray, now: float) -> Verdict:
        """A packet read from the TUN device for this client, about to be encrypted."""
        try:
            p = IpPacket(packet)
        except PacketError:
            return _drop(REASON_MALFORMED)
        if p.dst != (self._ipv4 if p.version == 4 else self._ipv6):
            return _drop(REASON_NOT_FOR_CLIENT)
        src = p.src
        if src in self._gateway.packed:
            return ALLOW
        if p.is_icmp_error:
            translated_error = self.nat.translate_icmp_error(p, now)
            return ALLOW if translated_error is None else Verdict(Action.FORWARD, translated_error)
        session = self.nat.lookup_inbound(p, now)
        if isinstance(session, str):
            return _drop(session)
        if session is not None:
            src = self.nat.proxy_of(session)
        entry = self._cache.get(src)
        if entry is None or now >= entry[1]:
            entry = self._lookup(src, now)
        filters = entry[0]
        if filters is None:
            return _drop(entry[2])
        if not filters.permits(p.protocol, p.src_port):
            return _drop(REASON_FILTERED)
        if session is None:
            return entry[4]
        return Verdict(Action.FORWARD, self.nat.rewrite_inbound(p, session, now), resource=entry[5])
