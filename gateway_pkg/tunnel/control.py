"""Client control, sans-I/O: which clients exist, what each may reach, what to tell whom.

Portal messages, p2p-control packets, resolution results and the time go in; effects come
out, in the order they must be executed (a goodbye before the peer is removed). The data
plane (`tunnel/dataplane.py`) only executes them: it owns the sockets, the TUN device, the
WireGuard device and the resolver, and never decides anything itself.

The rules, each unit-tested in tests/unit/tunnel/test_control.py:
- a client whose keys change is a new connection: the old session and its policy go,
  without a goodbye (the client already has the new keys);
- `init` (after every portal rejoin) reconciles the authorizations: resources it does not
  list are removed, listed ones take its expiry, and a client left with none is dropped;
- a 1.3 `request_connection` whose name does not resolve gets no reply at all (as upstream:
  the client times out and asks again), and no client is created;
- a resolution that ends after its client was removed (or replaced) changes nothing;
- removing a client's last resource (reject, expiry, init) says goodbye in-band first;
- at most `max_pending_resolutions` resolutions run at once; a new one beyond that fails
  at once (upstream drops the newest too);
- a flow with both ICE credentials (1.4) or a 1.3 connection with the client's ICE parameters
  starts an ICE session for the client (the traversal layer keeps an unchanged one); removing
  the client ends it; candidates for an unknown client are ignored; relays from `init` are
  added (never removed), `relays_presence` adds and removes.

Time: `now` is Unix time in seconds, because the portal's `expires_at` is; NAT sessions use
the same clock.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway_pkg.portal import messages
from gateway_pkg.resources import IPAddress
from gateway_pkg.tunnel import p2p_control
from gateway_pkg.tunnel.accounting import Accounting, ClientCounters
from gateway_pkg.tunnel.policy import ClientPolicy, TunAddresses

log = logging.getLogger("gateway_pkg.tunnel.control")

MAX_PENDING_RESOLUTIONS = 1000  # upstream's bound on concurrent DNS resolutions


# --- effects -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplyToPortal:
    event: str
    payload: dict[str, object]


@dataclass(frozen=True, slots=True)
class AddPeer:
    """Create or refresh the WireGuard peer (idempotent for unchanged keys)."""

    public_key: bytes
    preshared_key: bytes


@dataclass(frozen=True, slots=True)
class RemovePeer:
    public_key: bytes


@dataclass(frozen=True, slots=True)
class SendToPeer:
    """Encrypt `packet` (an IP packet) for the peer and send it."""

    public_key: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class Resolve:
    """Resolve `name`, then call `ClientControl.resolved(request, addresses or None, now)`."""

    name: str
    request: int


@dataclass(frozen=True, slots=True)
class SetTunAddresses:
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class CountDrop:
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectIce:
    """Start the client's ICE session (kept as it is when both credentials are unchanged)."""

    client_id: str
    local: messages.IceCredentials
    remote: messages.IceCredentials


@dataclass(frozen=True, slots=True)
class DisconnectIce:
    client_id: str


@dataclass(frozen=True, slots=True)
class RemoteCandidates:
    client_id: str
    candidates: tuple[str, ...]
    invalidate: bool


@dataclass(frozen=True, slots=True)
class UpdateRelays:
    connected: tuple[messages.Relay, ...]
    disconnected_ids: tuple[str, ...]


Effect = (ReplyToPortal | AddPeer | RemovePeer | SendToPeer | Resolve | SetTunAddresses | CountDrop
          | ConnectIce | DisconnectIce | RemoteCandidates | UpdateRelays)


# --- state -------------------------------------------------------------------------------


@dataclass
class Client:
    id: str
    public_key: bytes
    preshared_key: bytes
    policy: ClientPolicy
    addresses: tuple[bytes, ...] = field(default=())
    traffic: ClientCounters = field(default_factory=ClientCounters)


@dataclass(frozen=True, slots=True)
class _Connect:
    """1.3 request_connection waiting for its domain to resolve."""

    message: messages.RequestConnection


@dataclass(frozen=True, slots=True)
class _Allow:
    """1.3 allow_access waiting for its domain to resolve."""

    message: messages.AllowAccess
    client: Client


@dataclass(frozen=True, slots=True)
class _Assign:
    """1.4 AssignedIps waiting for its domain to resolve."""

    client: Client
    event: p2p_control.AssignedIps


_Pending = _Connect | _Allow | _Assign


class ClientControl:
    """The client table and the rules that change it.

    `by_key` and `by_address` (packed tunnel addresses) are read by the packet paths; they
    always index exactly the clients in `clients`.
    """

    def __init__(self, *, random_bytes: Callable[[int], bytes] = os.urandom,
                 max_pending_resolutions: int = MAX_PENDING_RESOLUTIONS) -> None:
        self.clients: dict[str, Client] = {}
        self.by_key: dict[bytes, Client] = {}
        self.by_address: dict[bytes, Client] = {}
        self.gateway_addresses = TunAddresses()
        self.accounting = Accounting()  # per-resource traffic, shared by every client's policy
        self._random = random_bytes
        self._max_pending = max_pending_resolutions
        self._pending: dict[int, _Pending] = {}
        self._next_request = 0

    @property
    def pending_resolutions(self) -> int:
        return len(self._pending)

    # --- portal messages ---------------------------------------------------------------

    def handle(self, message: messages.IngressMessage, now: float) -> list[Effect]:
        out: list[Effect] = []
        if isinstance(message, messages.Init):
            self._init(message, out)
        elif isinstance(message, messages.AuthorizeFlow):
            client = self._upsert(message.client, out)
            client.policy.add_resource(message.resource, message.expires_at)
            if message.gateway_ice_credentials is not None and message.client_ice_credentials is not None:
                out.append(ConnectIce(client.id, message.gateway_ice_credentials, message.client_ice_credentials))
            out.append(ReplyToPortal(*messages.flow_authorized(message.ref)))
            log.info("Authorized flow", extra={"fields": {"client": client.id, "resource": message.resource.id}})
        elif isinstance(message, messages.RequestConnection):
            if message.domain is None:
                self._connect(message, [], now, out)
            else:
                self._resolve(message.domain.name, _Connect(message), now, out)
        elif isinstance(message, messages.AllowAccess):
            known = self.clients.get(message.client_id)
            if known is None:
                log.warning("allow_access for unknown client %s", message.client_id)
            elif message.domain is None:
                self._allow(message, known, [], now)
            else:
                self._resolve(message.domain.name, _Allow(message, known), now, out)
        elif isinstance(message, messages.RejectAccess):
            self._reject(message.client_id, message.resource_id, out)
        elif isinstance(message, messages.ResourceUpdated):
            for holder in self.clients.values():
                if holder.policy.has_resource(message.resource.id):
                    holder.policy.update_filters(message.resource)
        elif isinstance(message, messages.AccessAuthorizationExpiryUpdated):
            expiring = self.clients.get(message.client_id)
            if expiring is not None:
                expiring.policy.set_expiry(message.resource_id, message.expires_at)
        elif isinstance(message, messages.RelaysPresence):
            out.append(UpdateRelays(message.connected, message.disconnected_ids))
        elif isinstance(message, messages.IceCandidates | messages.InvalidateIceCandidates):
            if message.client_id in self.clients:
                out.append(RemoteCandidates(message.client_id, message.candidates,
                                            isinstance(message, messages.InvalidateIceCandidates)))
            else:
                log.debug("ICE candidates for unknown client %s", message.client_id)
        return out

    def _init(self, init: messages.Init, out: list[Effect]) -> None:
        out.append(SetTunAddresses(init.interface.ipv4, init.interface.ipv6))
        if init.relays:
            out.append(UpdateRelays(init.relays, ()))  # upstream adds; it never removes on init
        self.gateway_addresses.set(init.interface.ipv4, init.interface.ipv6)
        listed: dict[str, dict[str, int | None]] = {}
        for auth in init.authorizations:
            listed.setdefault(auth.client_id, {})[auth.resource_id] = auth.expires_at
        for client in list(self.clients.values()):
            keep = listed.get(client.id, {})
            for resource_id in client.policy.resource_ids():
                if resource_id in keep:
                    client.policy.set_expiry(resource_id, keep[resource_id])
                else:
                    client.policy.remove_resource(resource_id)
            if client.policy.is_empty():
                self._remove(client, out, goodbye=True)

    def _connect(self, message: messages.RequestConnection, resolved: list[IPAddress], now: float,
                 out: list[Effect]) -> None:
        client = self._upsert(message.client, out)
        client.policy.add_resource(message.resource, message.expires_at)
        if message.domain is not None:
            client.policy.setup_nat(message.resource.id, message.domain.name, message.domain.proxy_ips,
                                    resolved, now)
        # The gateway's own ICE answer credentials, as upstream's accept_connection makes them.
        credentials = messages.IceCredentials(self._random(4).hex(), self._random(11).hex())
        if message.client_ice_credentials is not None:
            out.append(ConnectIce(client.id, credentials, message.client_ice_credentials))
        out.append(ReplyToPortal(*messages.connection_ready(message.ref, credentials)))
        log.info("Accepted connection", extra={"fields": {"client": client.id, "resource": message.resource.id}})

    def _allow(self, message: messages.AllowAccess, client: Client, resolved: list[IPAddress], now: float) -> None:
        client.policy.add_resource(message.resource, message.expires_at)
        if message.domain is not None:
            client.policy.setup_nat(message.resource.id, message.domain.name, message.domain.proxy_ips,
                                    resolved, now)
        log.info("Allowed access", extra={"fields": {"client": client.id, "resource": message.resource.id,
                                                     "resolved": len(resolved)}})

    def _reject(self, client_id: str, resource_id: str, out: list[Effect]) -> None:
        client = self.clients.get(client_id)
        if client is None:
            return
        client.policy.remove_resource(resource_id)
        log.info("Access rejected", extra={"fields": {"client": client_id, "resource": resource_id}})
        if client.policy.is_empty():
            self._remove(client, out, goodbye=True)

    # --- p2p control (in-band, from a client) --------------------------------------------

    def p2p_control(self, client: Client, packet: bytes, now: float) -> list[Effect]:
        """A decrypted control packet from `client` (the packet path checked `is_p2p_control`)."""
        out: list[Effect] = []
        try:
            event = p2p_control.decode(packet)
        except p2p_control.P2pControlError as exc:
            log.debug("Malformed p2p control packet: %s", exc)
            out.append(CountDrop("p2p_malformed"))
            return out
        if isinstance(event, p2p_control.AssignedIps):
            if client.policy.has_resource(event.resource):
                self._resolve(event.domain, _Assign(client, event), now, out)
            else:
                out.append(SendToPeer(client.public_key,
                                      p2p_control.encode_domain_status(event.resource, event.domain, False)))
        elif isinstance(event, p2p_control.Goodbye):
            log.info("Client said goodbye", extra={"fields": {"client": client.id}})
        return out

    # --- resolutions ---------------------------------------------------------------------

    def _resolve(self, name: str, pending: _Pending, now: float, out: list[Effect]) -> None:
        if len(self._pending) >= self._max_pending:
            log.warning("Too many DNS resolution requests, dropping the new one for %s", name)
            out.append(CountDrop("dns_overload"))
            self._continue(pending, None, now, out)
            return
        self._next_request += 1
        self._pending[self._next_request] = pending
        out.append(Resolve(name, self._next_request))

    def resolved(self, request: int, addresses: list[IPAddress] | None, now: float) -> list[Effect]:
        """The outcome of a `Resolve`: its addresses, or None when resolution failed."""
        out: list[Effect] = []
        pending = self._pending.pop(request, None)
        if pending is not None:
            self._continue(pending, addresses, now, out)
        return out

    def _continue(self, pending: _Pending, addresses: list[IPAddress] | None, now: float,
                  out: list[Effect]) -> None:
        if isinstance(pending, _Connect):
            if addresses is None:
                log.debug("DNS resolution failed as part of connection request")
                return
            self._connect(pending.message, addresses, now, out)
        elif isinstance(pending, _Allow):
            if self.clients.get(pending.message.client_id) is not pending.client:
                return  # removed (or reconnected with new keys) while resolving
            # Upstream carries on with no addresses when resolution fails here.
            self._allow(pending.message, pending.client, addresses or [], now)
        else:
            client, event = pending.client, pending.event
            if self.clients.get(client.id) is not client:
                return
            active = addresses is not None and client.policy.setup_nat(
                event.resource, event.domain, event.proxy_ips, addresses, now)
            out.append(SendToPeer(client.public_key,
                                  p2p_control.encode_domain_status(event.resource, event.domain, active)))

    # --- time and shutdown ---------------------------------------------------------------

    def expire(self, now: float) -> list[Effect]:
        """Drop expired authorizations (and NAT sessions); run about once a second."""
        out: list[Effect] = []
        for client in list(self.clients.values()):
            expired = client.policy.expire(now)
            if expired:
                log.info("Authorization expired", extra={"fields": {"client": client.id,
                                                                    "resources": ",".join(expired)}})
            if client.policy.is_empty():
                self._remove(client, out, goodbye=True)
        return out

    def goodbye_all(self) -> list[Effect]:
        """Shutdown: every client is told goodbye and removed."""
        out: list[Effect] = []
        for client in list(self.clients.values()):
            self._remove(client, out, goodbye=True)
        return out

    # --- the client table ----------------------------------------------------------------

    def _upsert(self, info: messages.FlowClient, out: list[Effect]) -> Client:
        client = self.clients.get(info.id)
        if client is not None and (client.public_key != info.public_key or client.preshared_key != info.preshared_key):
            # New keys mean a new connection: the old session and its policy go.
            self._remove(client, out, goodbye=False)
            client = None
        if client is None:
            policy = ClientPolicy(info.ipv4, info.ipv6, self.gateway_addresses, self.accounting)
            client = Client(info.id, info.public_key, info.preshared_key, policy)
            self.clients[info.id] = client
        self._unindex_addresses(client)
        client.addresses = (info.ipv4.packed, info.ipv6.packed)
        for packed in client.addresses:
            previous = self.by_address.get(packed)
            if previous is not None and previous is not client:
                # Another client held this tunnel address: the portal reassigned it.
                previous.addresses = tuple(a for a in previous.addresses if a != packed)
            self.by_address[packed] = client
        previous_holder = self.by_key.get(info.public_key)
        if previous_holder is not None and previous_holder is not client:
            # Another client id with the same key: the key is this client's now.
            self._remove(previous_holder, out, goodbye=False)
        self.by_key[info.public_key] = client
        out.append(AddPeer(info.public_key, info.preshared_key))
        return client

    def _unindex_addresses(self, client: Client) -> None:
        for packed in client.addresses:
            if self.by_address.get(packed) is client:
                del self.by_address[packed]

    def _remove(self, client: Client, out: list[Effect], *, goodbye: bool) -> None:
        if self.clients.get(client.id) is not client:
            return
        if goodbye:
            out.append(SendToPeer(client.public_key, p2p_control.encode_goodbye()))
        out.append(RemovePeer(client.public_key))
        out.append(DisconnectIce(client.id))
        del self.clients[client.id]
        if self.by_key.get(client.public_key) is client:
            del self.by_key[client.public_key]
        self._unindex_addresses(client)
        log.info("Removed client", extra={"fields": {"client": client.id}})
