"""NAT traversal for the whole gateway, sans-I/O: relays, local candidates, one ICE agent per client.

What it owns:
- one TURN allocation per relay entry (a relay id has one entry per address family); each
  allocation gives a relay candidate and, from its XOR-MAPPED-ADDRESS, our server-reflexive
  address; a relay that stops answering loses its candidates and is allocated again later;
- the host candidates (the uplink addresses the I/O layer found, with the bound ports);
- one `IceAgent` per client connection, keyed by client id; an unchanged connect (same local
  and remote credentials) reuses the agent;
- the demultiplexing of the shared UDP sockets: datagrams from a relay server go to its TURN
  client (the payload inside is STUN for an agent, or WireGuard), other STUN goes to the agent
  named by its USERNAME or owning its transaction, everything else is WireGuard;
- the route of each WireGuard endpoint: direct from our socket, or wrapped for a relay.

Datagrams and events come out of `drain()`. Time is monotonic seconds.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gateway_pkg.ice import stun
from gateway_pkg.ice.agent import (
    Credentials,
    Disconnected,
    IceAgent,
    IceTimings,
    LocalCandidate,
    LocalCandidateInvalidated,
    Selected,
)
from gateway_pkg.ice.candidate import (
    Candidate,
    CandidateType,
    foundation,
    parse_candidates,
    priority,
    sort_by_priority,
)
from gateway_pkg.ice.turn import Allocated, AllocationFailed, Lost, Received, TurnClient

log = logging.getLogger("gateway_pkg.ice")

Address = stun.Address
REALM = "firezone"  # upstream's TURN realm
RELAY_RETRY = 15.0  # seconds before a lost or failed allocation is tried again


@dataclass(frozen=True, slots=True)
class Direct:
    """Sent from, or received on, our own UDP socket of this IP version."""

    family: int


@dataclass(frozen=True, slots=True)
class Relayed:
    """Sent from, or received on, our allocation at relay entry `relay` of this IP version."""

    relay: str
    family: int


Via = Direct | Relayed


@dataclass(frozen=True, slots=True)
class Datagram:
    """A UDP datagram for the shared socket of the destination's family."""

    data: bytes
    destination: Address


@dataclass(frozen=True, slots=True)
class CandidatesForClient:
    """Tell the portal (`broadcast_ice_candidates` or `broadcast_invalidated_ice_candidates`)."""

    client_id: str
    candidates: tuple[str, ...]
    invalidated: bool = False


@dataclass(frozen=True, slots=True)
class PathSelected:
    """The client's nominated pair: WireGuard for it goes to `remote` on path `kind`."""

    client_id: str
    remote: Address
    kind: str  # "host", "srflx" or "relay"


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    client_id: str
    reason: str


TraversalEvent = CandidatesForClient | PathSelected | ConnectionFailed


def version_of(ip: str) -> int:
    return 6 if ":" in ip else 4


def parse_address(text: str) -> Address | None:
    """`ip:port` or `[v6]:port` → a normalised address, or None."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    number = int(port)
    if not 0 < number < 65536:
        return None
    return str(ip), number


def normalise(address: tuple[object, ...]) -> Address:
    """A socket address (IPv6 ones have four fields) as (ip, port)."""
    return str(address[0]), int(address[1])  # type: ignore[call-overload]


def path_kind(selected: Selected) -> str:
    types = {selected.local.type, selected.remote_candidate.type}
    if CandidateType.RELAY in types:
        return "relay"
    if types & {CandidateType.SRFLX, CandidateType.PRFLX}:
        return "srflx"
    return "host"


@dataclass
class _Relay:
    """One relay entry: one server address of one relay id."""

    id: str
    server: Address
    username: str
    password: str = field(repr=False)
    via: Relayed
    client: TurnClient | None = None
    retry_at: float | None = None
    candidates: tuple[Candidate, ...] = ()  # (relay, srflx) once allocated


@dataclass
class _Connection:
    client_id: str
    local: Credentials
    remote: Credentials
    agent: IceAgent
    path: PathSelected | None = None


class Traversal:
    def __init__(self, *, timings: IceTimings | None = None,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._timings = timings or IceTimings()
        self._random = random_bytes
        self._relays: dict[Address, _Relay] = {}
        self._by_via: dict[Relayed, _Relay] = {}
        self._host: list[tuple[Candidate, Direct]] = []
        self._connections: dict[str, _Connection] = {}
        self._by_ufrag: dict[str, _Connection] = {}
        self.routes: dict[Address, Relayed] = {}  # WireGuard endpoints reached through our relays
        # Remote ends of nominated pairs that involve any relay (ours or the client's): the data
        # plane counts the WireGuard bytes to and from them as relayed.
        self.relayed_remotes: set[Address] = set()
        self._out: list[Datagram] = []
        self._events: list[TraversalEvent] = []
        self._to_broadcast: dict[tuple[str, bool], list[Candidate]] = {}
        self.dropped: Counter[str] = Counter()
        self.relay_bytes_in = 0  # counted by the data plane, on relayed paths
        self.relay_bytes_out = 0

    # --- what the I/O layer and the control core tell us --------------------------------

    def set_host_addresses(self, addresses: Iterable[Address]) -> None:
        """The uplink addresses with the bound UDP port of their family (never the TUN's)."""
        self._host = []
        for index, (ip, port) in enumerate(addresses):
            local_preference = 65535 - index
            candidate = Candidate(foundation(CandidateType.HOST, ip), 1, "udp",
                                  priority(CandidateType.HOST, local_preference), ip, port, CandidateType.HOST)
            self._host.append((candidate, Direct(version_of(ip))))

    def add_relays(self, relays: Iterable[tuple[str, str, str | None, str | None]], now: float) -> None:
        """(id, "ip:port", username, password) per relay entry; known entries are kept."""
        for relay_id, addr, username, password in relays:
            server = parse_address(addr)
            if server is None or username is None or password is None:
                log.warning("Ignoring relay %s: no usable address or credentials", relay_id)
                continue
            known = self._relays.get(server)
            if known is not None:
                if (known.id, known.username, known.password) == (relay_id, username, password):
                    continue
                self._drop_relay(known, now)
            entry = _Relay(relay_id, server, username, password, Relayed(relay_id, version_of(server[0])))
            self._relays[server] = entry
            self._by_via[entry.via] = entry
            self._allocate(entry, now)

    def remove_relays(self, relay_ids: Iterable[str], now: float) -> None:
        gone = set(relay_ids)
        for entry in [e for e in self._relays.values() if e.id in gone]:
            log.info("Relay left", extra={"fields": {"relay": entry.id, "server": _text(entry.server)}})
            self._drop_relay(entry, now)

    def connect(self, client_id: str, local: Credentials, remote: Credentials, now: float) -> bool:
        """Start (or keep) the client's ICE session; False when the unchanged one is reused."""
        known = self._connections.get(client_id)
        if known is not None and known.local == local and known.remote == remote:
            return False
        if known is not None:
            self.disconnect(client_id)
        agent = IceAgent(local, remote, now=now, timings=self._timings, random_bytes=self._random)
        connection = _Connection(client_id, local, remote, agent)
        self._connections[client_id] = connection
        self._by_ufrag[local.ufrag] = connection
        for candidate, direct in self._host:
            agent.add_local_candidate(candidate, direct)
        for entry in self._relays.values():
            self._offer_relay(entry, agent)
        self._pump(connection, now)
        return True

    def disconnect(self, client_id: str) -> None:
        connection = self._connections.pop(client_id, None)
        if connection is None:
            return
        if self._by_ufrag.get(connection.local.ufrag) is connection:
            del self._by_ufrag[connection.local.ufrag]
        if connection.path is not None:
            self.routes.pop(connection.path.remote, None)
            self.relayed_remotes.discard(connection.path.remote)

    def remote_candidates(self, client_id: str, texts: Iterable[str], now: float, *, invalidate: bool = False) -> None:
        connection = self._connections.get(client_id)
        candidates = parse_candidates(texts)
        if connection is None:
            log.debug("Candidates for client %s without an ICE session", client_id)
            return
        for candidate in candidates:
            if invalidate:
                connection.agent.remove_remote_candidate(candidate)
            else:
                connection.agent.add_remote_candidate(candidate)
        self._pump(connection, now)

    # --- datagrams ------------------------------------------------------------------------

    def receive(self, data: bytes, source: Address, now: float) -> tuple[bytes, Address] | None:
        """A datagram that is not plain WireGuard. Returns WireGuard found inside a relay's frame."""
        entry = self._relays.get(source)
        if entry is not None:
            return self._from_relay(entry, data, now)
        if stun.is_stun(data):
            self._stun(data, source, Direct(version_of(source[0])), now)
            return None
        return data, source

    def outbound(self, datagrams: Iterable[tuple[bytes, tuple[object, ...]]],
                 now: float) -> list[tuple[bytes, tuple[object, ...]]]:
        """WireGuard datagrams for endpoints; those reached through a relay are framed for it."""
        result: list[tuple[bytes, tuple[object, ...]]] = []
        routes = self.routes
        for data, endpoint in datagrams:
            peer = normalise(endpoint)
            via = routes.get(peer) if routes else None
            if via is None:
                result.append((data, endpoint))
                continue
            entry = self._by_via.get(via)
            if entry is None or entry.client is None:
                self.dropped["relay_gone"] += 1
                continue
            channel = entry.client.channel_for(peer)
            if channel is not None:
                result.append((stun.encode_channel_data(channel, data), entry.server))
            else:
                entry.client.send(peer, data, now)
                self._pump_relay(entry, now)
        return result

    def tick(self, now: float) -> None:
        for entry in list(self._relays.values()):
            if entry.client is None:
                if entry.retry_at is not None and now >= entry.retry_at:
                    self._allocate(entry, now)
                continue
            entry.client.tick(now)
            self._pump_relay(entry, now)
        for connection in list(self._connections.values()):
            connection.agent.tick(now)
            self._pump(connection, now)

    def poll_timeout(self) -> float | None:
        deadlines: list[float] = []
        for entry in self._relays.values():
            if entry.client is not None:
                deadline = entry.client.poll_timeout()
                if deadline is not None:
                    deadlines.append(deadline)
            elif entry.retry_at is not None:
                deadlines.append(entry.retry_at)
        for connection in self._connections.values():
            deadline = connection.agent.poll_timeout()
            if deadline is not None:
                deadlines.append(deadline)
        return min(deadlines) if deadlines else None

    def drain(self) -> tuple[list[Datagram], list[TraversalEvent]]:
        for (client_id, invalidated), candidates in self._to_broadcast.items():
            texts = tuple(dict.fromkeys(c.to_sdp() for c in sort_by_priority(candidates)))
            self._events.append(CandidatesForClient(client_id, texts, invalidated))
        self._to_broadcast = {}
        out, events = self._out, self._events
        self._out, self._events = [], []
        return out, events

    # --- what the rest of the gateway reads ---------------------------------------------

    def path_of(self, client_id: str) -> str | None:
        connection = self._connections.get(client_id)
        return connection.path.kind if connection is not None and connection.path is not None else None

    def paths(self) -> dict[str, str]:
        return {cid: c.path.kind for cid, c in self._connections.items() if c.path is not None}

    def relay_servers(self) -> set[Address]:
        return set(self._relays)

    def relays_allocated(self) -> int:
        return sum(1 for e in self._relays.values() if e.client is not None and e.client.allocated)

    def ready(self) -> tuple[bool, str]:
        if self._relays and not self.relays_allocated():
            return False, f"{len(self._relays)} relay address(es) configured, none allocated"
        return True, "ready"

    # --- internals ------------------------------------------------------------------------

    def _allocate(self, entry: _Relay, now: float) -> None:
        entry.retry_at = None
        entry.client = TurnClient(entry.server, entry.username, entry.password, REALM, random_bytes=self._random)
        entry.client.allocate(now)
        self._pump_relay(entry, now)

    def _drop_relay(self, entry: _Relay, now: float) -> None:
        if entry.client is not None:
            entry.client.release(now)
            self._pump_relay(entry, now, releasing=True)
        self._withdraw(entry, now)
        self._relays.pop(entry.server, None)
        self._by_via.pop(entry.via, None)

    def _withdraw(self, entry: _Relay, now: float) -> None:
        """The relay's candidates and routes are no longer usable."""
        entry.candidates = ()
        for endpoint in [e for e, via in self.routes.items() if via == entry.via]:
            del self.routes[endpoint]
        for connection in list(self._connections.values()):
            connection.agent.remove_local_candidates(entry.via)
            self._pump(connection, now)

    def _offer_relay(self, entry: _Relay, agent: IceAgent) -> None:
        for candidate in entry.candidates:
            if candidate.type == CandidateType.RELAY:
                agent.add_local_candidate(candidate, entry.via)
            else:
                agent.add_local_candidate(candidate, Direct(entry.via.family))

    def _allocated(self, entry: _Relay, event: Allocated, now: float) -> None:
        relayed, mapped = event.relayed, event.mapped
        base = next((c for c, d in self._host if d.family == entry.via.family), None)
        relay = Candidate(foundation(CandidateType.RELAY, relayed[0], entry.server[0]), 1, "udp",
                          priority(CandidateType.RELAY), relayed[0], relayed[1], CandidateType.RELAY,
                          mapped[0], mapped[1])
        candidates = [relay]
        known_srflx = {c.addr for e in self._relays.values() for c in e.candidates if c.type == CandidateType.SRFLX}
        if (base is None or base.addr != mapped) and mapped not in known_srflx:
            related = base.addr if base is not None else (("::" if entry.via.family == 6 else "0.0.0.0"), 0)
            candidates.append(Candidate(foundation(CandidateType.SRFLX, related[0], entry.server[0]), 1, "udp",
                                        priority(CandidateType.SRFLX), mapped[0], mapped[1], CandidateType.SRFLX,
                                        related[0], related[1]))
        entry.candidates = tuple(candidates)
        log.info("Relay allocated", extra={"fields": {"relay": entry.id, "server": _text(entry.server),
                                                      "relayed": _text(relayed), "mapped": _text(mapped)}})
        for connection in list(self._connections.values()):
            self._offer_relay(entry, connection.agent)
            self._pump(connection, now)

    def _pump_relay(self, entry: _Relay, now: float, *, releasing: bool = False) -> tuple[bytes, Address] | None:
        client = entry.client
        if client is None:
            return None
        transmits, events = client.drain()
        for transmit in transmits:
            self._out.append(Datagram(transmit.data, transmit.destination))
        found: tuple[bytes, Address] | None = None
        for event in events:
            if isinstance(event, Received):
                if stun.is_stun(event.payload):
                    self._stun(event.payload, event.peer, entry.via, now)
                else:
                    self.routes[event.peer] = entry.via
                    found = (event.payload, event.peer)
            elif releasing:
                continue
            elif isinstance(event, Allocated):
                self._allocated(entry, event, now)
            elif isinstance(event, AllocationFailed | Lost):
                log.warning("Relay %s: %s; retrying in %.0f s", _text(entry.server), event.reason, RELAY_RETRY)
                entry.client = None
                entry.retry_at = now + RELAY_RETRY
                self._withdraw(entry, now)
                break
        return found

    def _from_relay(self, entry: _Relay, data: bytes, now: float) -> tuple[bytes, Address] | None:
        if entry.client is None or not entry.client.handle(data, now):
            self.dropped["turn_unexpected"] += 1
            return None
        return self._pump_relay(entry, now)

    def _stun(self, raw: bytes, source: Address, via: Via, now: float) -> None:
        try:
            message = stun.decode(raw)
        except stun.StunError:
            self.dropped["stun_malformed"] += 1
            return
        connection: _Connection | None = None
        if message.cls == stun.Class.REQUEST and message.method == stun.Method.BINDING:
            username = message.username() or ""
            connection = self._by_ufrag.get(username.partition(":")[0])
        elif message.cls in (stun.Class.SUCCESS, stun.Class.ERROR):
            connection = next((c for c in self._connections.values()
                               if c.agent.owns(message.transaction_id)), None)
        if connection is None:
            self.dropped["stun_unmatched"] += 1
            return
        connection.agent.handle(message, raw, source, via, now)
        self._pump(connection, now)

    def _pump(self, connection: _Connection, now: float) -> None:
        agent = connection.agent
        if agent.dropped:
            self.dropped.update(agent.dropped)
            agent.dropped.clear()
        transmits, events = agent.drain()
        for transmit in transmits:
            via = transmit.via
            if isinstance(via, Relayed):
                entry = self._by_via.get(via)
                if entry is None or entry.client is None:
                    continue
                entry.client.send(transmit.destination, transmit.data, now)
                self._pump_relay(entry, now)
            else:
                self._out.append(Datagram(transmit.data, transmit.destination))
        if self._connections.get(connection.client_id) is not connection:
            return
        for event in events:
            if isinstance(event, LocalCandidate | LocalCandidateInvalidated):
                key = (connection.client_id, isinstance(event, LocalCandidateInvalidated))
                self._to_broadcast.setdefault(key, []).append(event.candidate)
            elif isinstance(event, Selected):
                if connection.path is not None:
                    self.routes.pop(connection.path.remote, None)
                    self.relayed_remotes.discard(connection.path.remote)
                if isinstance(event.via, Relayed):
                    self.routes[event.remote] = event.via
                connection.path = PathSelected(connection.client_id, event.remote, path_kind(event))
                if connection.path.kind == "relay":
                    self.relayed_remotes.add(event.remote)
                self._events.append(connection.path)
            elif isinstance(event, Disconnected):
                # Final for this agent: forget it, so the same flow sent again starts afresh.
                self._events.append(ConnectionFailed(connection.client_id, event.reason))
                self.disconnect(connection.client_id)
                break


def _text(address: Address) -> str:
    ip, port = address
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


__all__ = [
    "REALM", "CandidatesForClient", "ConnectionFailed", "Datagram", "Direct", "PathSelected", "Relayed",
    "Traversal", "TraversalEvent", "Via", "normalise", "parse_address", "version_of",
]
