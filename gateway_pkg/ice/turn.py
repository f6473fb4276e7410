"""TURN client over UDP (RFC 8656), sans-I/O: datagrams and `now` in, datagrams and events out.

One `TurnClient` holds one allocation on one relay server address. It authenticates with the
long-term credential mechanism (the first Allocate goes out unauthenticated to learn the
realm and nonce), refreshes the allocation, keeps permissions and channel bindings alive,
and frames peer data as Send indications or, once a channel is bound, as ChannelData.
Requests are retransmitted with upstream's STUN timings; a request that exhausts them means
the relay is gone (`Lost`). Success responses to authenticated requests must carry a valid
MESSAGE-INTEGRITY; error responses may lack one (401 and 438 always do), but one that
carries a wrong one is dropped.
"""

from __future__ import annotations

import ipaddress
import os
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from . import stun
from .stun import Address, Attr, Class, Method

REQUESTED_FAMILY_IPV6 = bytes([0x02, 0, 0, 0])  # REQUESTED-ADDRESS-FAMILY value for IPv6

MAX_BUFFERED_PER_PEER = 32
MAX_STALE_NONCE_RETRIES = 3


@dataclass(frozen=True, slots=True)
class TurnTimings:
    initial_rto: float = 0.25
    max_rto: float = 1.5
    max_retransmits: int = 12
    # Permissions live 5 min and channel bindings 10 min on the server (RFC 8656 §9, §12).
    permission_refresh: float = 240.0
    channel_refresh: float = 300.0
    # Used when a response carries no LIFETIME; the allocation is refreshed at half its lifetime.
    default_lifetime: float = 600.0

    def __post_init__(self) -> None:
        if min(self.initial_rto, self.max_rto, self.permission_refresh, self.channel_refresh,
               self.default_lifetime) <= 0 or self.max_retransmits < 0:
            raise ValueError("TURN timings must be positive")


@dataclass(frozen=True, slots=True)
class Transmit:
    """A datagram for the relay server."""

    data: bytes
    destination: Address


@dataclass(frozen=True, slots=True)
class Allocated:
    relayed: Address
    mapped: Address


@dataclass(frozen=True, slots=True)
class AllocationFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class Received:
    peer: Address
    payload: bytes


@dataclass(frozen=True, slots=True)
class Lost:
    reason: str


TurnEvent = Allocated | AllocationFailed | Received | Lost

# Transaction kinds.
_ALLOCATE = "allocate"
_CLEAR = "clear"  # Refresh(LIFETIME 0) for a stale allocation on our 5-tuple (437), then Allocate again
_REFRESH = "refresh"
_RELEASE = "release"
_PERMISSION = "permission"
_CHANNEL = "channel"
_METHODS = {_ALLOCATE: Method.ALLOCATE, _CLEAR: Method.REFRESH, _REFRESH: Method.REFRESH,
            _RELEASE: Method.REFRESH, _PERMISSION: Method.CREATE_PERMISSION, _CHANNEL: Method.CHANNEL_BIND}


@dataclass(slots=True)
class _Transaction:
    kind: str
    data: bytes
    authenticated: bool
    next_at: float
    rto: float
    retransmits: int = 0
    stale_retries: int = 0
    peer_ip: str | None = None
    peer: Address | None = None
    channel: int | None = None


@dataclass(slots=True)
class _Permission:
    installed: bool = False
    refresh_at: float | None = None  # None while a CreatePermission is in flight
    buffered: deque[tuple[Address, bytes]] = field(default_factory=deque)


@dataclass(slots=True)
class _Channel:
    number: int
    bound: bool = False
    failed: bool = False
    refresh_at: float | None = None


@dataclass(slots=True)
class _Credentials:
    username: str
    password: str = field(repr=False)
    realm: str
    nonce: bytes | None = field(default=None, repr=False)
    key: bytes = field(default=b"", repr=False)

    def learn(self, realm: str | None, nonce: bytes | None) -> None:
        if realm is not None:
            self.realm = realm
        if nonce is not None:
            self.nonce = nonce
        self.key = stun.long_term_key(self.username, self.realm, self.password)


def _family(ip: str) -> int:
    return ipaddress.ip_address(ip).version


class TurnClient:
    """One allocation on one TURN server; see the module docstring."""

    def __init__(self, server: Address, username: str, password: str, realm: str = "firezone", *,
                 random_bytes: Callable[[int], bytes] = os.urandom, software: str | None = None,
                 timings: TurnTimings | None = None) -> None:
        self._server = server
        self._credentials = _Credentials(username, password, realm)
        self._random_bytes = random_bytes
        self._software = software
        self._timings = timings or TurnTimings()
        self._state = "idle"  # idle, allocating, allocated, failed, lost, released
        self._relayed: Address | None = None
        self._mapped: Address | None = None
        self._refresh_at: float | None = None
        self._cleared = False
        self._transactions: dict[bytes, _Transaction] = {}
        self._permissions: dict[str, _Permission] = {}
        self._channels: dict[Address, _Channel] = {}
        self._channel_peers: dict[int, Address] = {}
        self._next_channel = stun.CHANNEL_MIN
        self._transmits: list[Transmit] = []
        self._events: list[TurnEvent] = []
        self.dropped: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"TurnClient(server={self._server!r}, username={self._credentials.username!r}, state={self._state})"

    # --- properties ---------------------------------------------------------------------

    @property
    def server(self) -> Address:
        return self._server

    @property
    def relayed(self) -> Address | None:
        return self._relayed

    @property
    def mapped(self) -> Address | None:
        return self._mapped

    @property
    def allocated(self) -> bool:
        return self._state == "allocated"

    @property
    def state(self) -> str:
        return self._state

    def permitted(self, peer_ip: str) -> bool:
        """True once the server confirmed a permission for `peer_ip`."""
        permission = self._permissions.get(peer_ip)
        return permission is not None and permission.installed

    def channel_for(self, peer: Address) -> int | None:
        channel = self._channels.get(peer)
        return channel.number if channel is not None and channel.bound else None

    # --- commands -----------------------------------------------------------------------

    def allocate(self, now: float) -> None:
        """Start (or, after a failure or loss, restart) the allocation; nothing after `release`."""
        if self._state in ("allocating", "allocated", "released"):
            return
        self._reset()
        self._credentials.nonce = None
        self._state = "allocating"
        self._start(_ALLOCATE, now)

    def refresh(self, now: float) -> None:
        """Refresh the allocation now instead of at its scheduled time."""
        if self._state == "allocated" and not self._in_flight(_REFRESH):
            self._refresh_at = None
            self._start(_REFRESH, now)

    def release(self, now: float) -> None:
        """Delete the allocation (Refresh with LIFETIME 0); nothing else is sent afterwards."""
        if self._state in ("released", "idle"):
            self._state = "released"
            return
        had_nonce = self._credentials.nonce is not None and self._state in ("allocating", "allocated")
        self._reset()
        self._state = "released"
        if had_nonce:
            self._start(_RELEASE, now)

    def permit(self, peer_ip: str, now: float) -> None:
        """Install a permission for `peer_ip` and keep it refreshed (idempotent)."""
        if self._state not in ("allocating", "allocated") or not self._same_family(peer_ip):
            return
        if peer_ip in self._permissions:
            return
        self._permissions[peer_ip] = _Permission()
        if self._state == "allocated":
            self._start(_PERMISSION, now, peer_ip=peer_ip)

    def revoke(self, peer_ip: str) -> None:
        """Stop refreshing the permission and channels of `peer_ip`; the server lets them expire."""
        self._permissions.pop(peer_ip, None)
        for peer in [p for p in self._channels if p[0] == peer_ip]:
            channel = self._channels.pop(peer)
            self._channel_peers.pop(channel.number, None)
        for tid in [t for t, tx in self._transactions.items() if tx.peer_ip == peer_ip]:
            del self._transactions[tid]

    def send(self, peer: Address, payload: bytes, now: float) -> None:
        """Relay `payload` to `peer`: ChannelData on a bound channel, else a Send indication
        (buffered until the permission is installed); the first use permits and binds."""
        if self._state != "allocated" or not self._same_family(peer[0]):
            self.dropped["not_allocated" if self._state != "allocated" else "family_mismatch"] += 1
            return
        channel = self._channels.get(peer)
        if channel is not None and channel.bound:
            self._transmit(stun.encode_channel_data(channel.number, payload))
            return
        self.permit(peer[0], now)
        if channel is None and self._next_channel <= stun.CHANNEL_MAX:
            channel = _Channel(self._next_channel)
            self._next_channel += 1
            self._channels[peer] = channel
            self._channel_peers[channel.number] = peer
            self._start(_CHANNEL, now, peer_ip=peer[0], peer=peer, channel=channel.number)
        permission = self._permissions[peer[0]]
        if permission.installed:
            self._send_indication(peer, payload)
        elif len(permission.buffered) < MAX_BUFFERED_PER_PEER:
            permission.buffered.append((peer, payload))
        else:
            self.dropped["buffer_full"] += 1

    # --- input --------------------------------------------------------------------------

    def handle(self, data: bytes, now: float) -> bool:
        """A datagram from the server; True when it was ours."""
        if stun.is_channel_data(data):
            try:
                number, payload = stun.decode_channel_data(data)
            except stun.StunError:
                return False
            peer = self._channel_peers.get(number)
            if peer is None or self._state != "allocated":
                return False
            self._events.append(Received(peer, payload))
            return True
        if not stun.is_stun(data):
            return False
        try:
            message = stun.decode(data)
        except stun.StunError:
            return False
        if message.cls == Class.INDICATION:
            return self._on_indication(message, data)
        if message.cls == Class.REQUEST:
            return False
        tx = self._transactions.get(message.transaction_id)
        if tx is None or message.method != _METHODS[tx.kind]:
            return False
        if stun.verify_fingerprint(data) is False:
            self.dropped["bad_fingerprint"] += 1
            return True
        has_integrity = message.has(Attr.MESSAGE_INTEGRITY) or message.has(Attr.MESSAGE_INTEGRITY_SHA256)
        if tx.authenticated and (message.cls == Class.SUCCESS or has_integrity) and not stun.verify_integrity(
                data, self._credentials.key):
            self.dropped["bad_integrity"] += 1
            return True  # as if never received: the transaction keeps retransmitting
        del self._transactions[message.transaction_id]
        if message.cls == Class.SUCCESS:
            self._on_success(tx, message, now)
        else:
            self._on_error(tx, message, now)
        return True

    def _on_indication(self, message: stun.Message, data: bytes) -> bool:
        if message.method != Method.DATA or self._state != "allocated":
            return False
        if stun.verify_fingerprint(data) is False:
            self.dropped["bad_fingerprint"] += 1
            return True
        peer, payload = message.xor_address(Attr.XOR_PEER_ADDRESS), message.data()
        if peer is None or payload is None:
            self.dropped["malformed_data_indication"] += 1
            return True
        self._events.append(Received(peer, payload))
        return True

    def _on_success(self, tx: _Transaction, message: stun.Message, now: float) -> None:
        if tx.kind == _ALLOCATE:
            relayed = message.xor_address(Attr.XOR_RELAYED_ADDRESS)
            mapped = message.xor_address(Attr.XOR_MAPPED_ADDRESS)
            if relayed is None or mapped is None:
                self._fail("allocate response without XOR-RELAYED-ADDRESS or XOR-MAPPED-ADDRESS")
                return
            self._state, self._relayed, self._mapped = "allocated", relayed, mapped
            self._schedule_refresh(message, now)
            self._events.append(Allocated(relayed, mapped))
            for peer_ip in [ip for ip in self._permissions if not self._same_family(ip)]:
                del self._permissions[peer_ip]
            for peer_ip in self._permissions:
                self._start(_PERMISSION, now, peer_ip=peer_ip)
        elif tx.kind == _CLEAR:
            self._start(_ALLOCATE, now)
        elif tx.kind == _REFRESH:
            self._schedule_refresh(message, now)
        elif tx.kind == _PERMISSION and tx.peer_ip is not None:
            self._permission_installed(tx.peer_ip, now)
        elif tx.kind == _CHANNEL and tx.peer is not None:
            channel = self._channels.get(tx.peer)
            if channel is not None:
                channel.bound, channel.refresh_at = True, now + self._timings.channel_refresh
            self._permission_installed(tx.peer[0], now)

    def _on_error(self, tx: _Transaction, message: stun.Message, now: float) -> None:
        code, reason = message.error() or (0, "malformed error response")
        if code == stun.STALE_NONCE and tx.stale_retries < MAX_STALE_NONCE_RETRIES and message.nonce() is not None:
            self._credentials.learn(message.realm(), message.nonce())
            self._retry(tx, now, stale_retries=tx.stale_retries + 1)
            return
        if code == stun.UNAUTHORIZED and not tx.authenticated:
            realm, nonce = message.realm(), message.nonce()
            if realm is None or nonce is None:
                self._fail_kind(tx, f"{code} {reason} without REALM and NONCE")
                return
            self._credentials.learn(realm, nonce)
            self._retry(tx, now, stale_retries=tx.stale_retries)
            return
        if tx.kind == _ALLOCATE and code == stun.ALLOCATION_MISMATCH and not self._cleared:
            self._cleared = True
            self._start(_CLEAR, now)
            return
        what = "wrong credentials" if code in (stun.UNAUTHORIZED, stun.WRONG_CREDENTIALS) else "refused"
        self._fail_kind(tx, f"{what}: {code} {reason}".rstrip())

    def _fail_kind(self, tx: _Transaction, reason: str) -> None:
        if tx.kind in (_ALLOCATE, _CLEAR):
            self._fail(reason)
        elif tx.kind == _REFRESH:
            self._lose(f"refresh {reason}")
        elif tx.kind == _PERMISSION and tx.peer_ip is not None:
            permission = self._permissions.pop(tx.peer_ip, None)
            if permission is not None:
                self.dropped["no_permission"] += len(permission.buffered)
        elif tx.kind == _CHANNEL and tx.peer is not None:
            channel = self._channels.get(tx.peer)
            if channel is not None:
                channel.failed, channel.bound = True, False

    # --- time ---------------------------------------------------------------------------

    def poll_timeout(self) -> float | None:
        deadlines = [tx.next_at for tx in self._transactions.values()]
        if self._state == "allocated":
            if self._refresh_at is not None:
                deadlines.append(self._refresh_at)
            deadlines.extend(p.refresh_at for p in self._permissions.values() if p.refresh_at is not None)
            deadlines.extend(c.refresh_at for c in self._channels.values() if c.refresh_at is not None)
        return min(deadlines, default=None)

    def tick(self, now: float) -> None:
        for tid, tx in list(self._transactions.items()):
            if tid not in self._transactions or tx.next_at > now:
                continue
            if tx.retransmits >= self._timings.max_retransmits:
                del self._transactions[tid]
                self._timed_out(tx)
                continue
            tx.retransmits += 1
            tx.rto = min(tx.rto * 2, self._timings.max_rto)
            tx.next_at = now + tx.rto
            self._transmit(tx.data)
        if self._state != "allocated":
            return
        if self._refresh_at is not None and self._refresh_at <= now:
            self._refresh_at = None
            self._start(_REFRESH, now)
        for peer_ip, permission in self._permissions.items():
            if permission.refresh_at is not None and permission.refresh_at <= now:
                permission.refresh_at = None
                self._start(_PERMISSION, now, peer_ip=peer_ip)
        for peer, channel in self._channels.items():
            if channel.refresh_at is not None and channel.refresh_at <= now:
                channel.refresh_at = None
                self._start(_CHANNEL, now, peer_ip=peer[0], peer=peer, channel=channel.number)

    def drain(self) -> tuple[list[Transmit], list[TurnEvent]]:
        transmits, events = self._transmits, self._events
        self._transmits, self._events = [], []
        return transmits, events

    # --- internals ----------------------------------------------------------------------

    def _timed_out(self, tx: _Transaction) -> None:
        if tx.kind == _RELEASE:
            return
        if tx.kind in (_ALLOCATE, _CLEAR):
            self._fail("no response from the relay")
        else:
            self._lose(f"the relay stopped answering ({tx.kind} timed out)")

    def _fail(self, reason: str) -> None:
        self._reset()
        self._state = "failed"
        self._events.append(AllocationFailed(reason))

    def _lose(self, reason: str) -> None:
        self._reset()
        self._state = "lost"
        self._events.append(Lost(reason))

    def _reset(self) -> None:
        self._transactions.clear()
        self._permissions.clear()
        self._channels.clear()
        self._channel_peers.clear()
        self._next_channel = stun.CHANNEL_MIN
        self._relayed = self._mapped = self._refresh_at = None
        self._cleared = False

    def _same_family(self, ip: str) -> bool:
        try:
            family = _family(ip)
        except ValueError:
            return False
        reference = self._relayed[0] if self._relayed is not None else self._server[0]
        return family == _family(reference)

    def _in_flight(self, kind: str) -> bool:
        return any(tx.kind == kind for tx in self._transactions.values())

    def _schedule_refresh(self, message: stun.Message, now: float) -> None:
        lifetime = message.lifetime()
        seconds = float(lifetime) if lifetime else self._timings.default_lifetime
        self._refresh_at = now + seconds / 2

    def _permission_installed(self, peer_ip: str, now: float) -> None:
        permission = self._permissions.get(peer_ip)
        if permission is None:
            return
        permission.installed = True
        if permission.refresh_at is None and not any(
                tx.kind == _PERMISSION and tx.peer_ip == peer_ip for tx in self._transactions.values()):
            permission.refresh_at = now + self._timings.permission_refresh
        while permission.buffered:
            peer, payload = permission.buffered.popleft()
            channel = self._channels.get(peer)
            if channel is not None and channel.bound:
                self._transmit(stun.encode_channel_data(channel.number, payload))
            else:
                self._send_indication(peer, payload)

    def _send_indication(self, peer: Address, payload: bytes) -> None:
        tid = stun.new_transaction_id(self._random_bytes)
        message = stun.indication(Method.SEND, tid, (Attr.XOR_PEER_ADDRESS, stun.encode_xor_address(peer, tid)),
                                  (Attr.DATA, payload))
        self._transmit(stun.encode(message, fingerprint=False))

    def _transmit(self, data: bytes) -> None:
        self._transmits.append(Transmit(data, self._server))

    def _retry(self, tx: _Transaction, now: float, stale_retries: int) -> None:
        self._start(tx.kind, now, peer_ip=tx.peer_ip, peer=tx.peer, channel=tx.channel, stale_retries=stale_retries)

    def _start(self, kind: str, now: float, *, peer_ip: str | None = None, peer: Address | None = None,
               channel: int | None = None, stale_retries: int = 0) -> None:
        tid = stun.new_transaction_id(self._random_bytes)
        attrs: list[tuple[int, bytes]] = []
        if kind == _ALLOCATE:
            attrs.append((Attr.REQUESTED_TRANSPORT, stun.encode_requested_transport()))
            if ":" in self.server[0]:
                # RFC 8656 §7.1: without it a server relays IPv4 whatever family we came in on.
                attrs.append((Attr.REQUESTED_ADDRESS_FAMILY, REQUESTED_FAMILY_IPV6))
        elif kind in (_CLEAR, _RELEASE):
            attrs.append((Attr.LIFETIME, stun.encode_u32(0)))
        elif kind == _PERMISSION and peer_ip is not None:
            attrs.append((Attr.XOR_PEER_ADDRESS, stun.encode_xor_address((peer_ip, 0), tid)))
        elif kind == _CHANNEL and peer is not None and channel is not None:
            attrs.append((Attr.CHANNEL_NUMBER, stun.encode_channel_number(channel)))
            attrs.append((Attr.XOR_PEER_ADDRESS, stun.encode_xor_address(peer, tid)))
        if self._software is not None:
            attrs.append((Attr.SOFTWARE, self._software.encode()))
        credentials = self._credentials
        authenticated = credentials.nonce is not None
        if authenticated and credentials.nonce is not None:
            attrs.append((Attr.USERNAME, credentials.username.encode()))
            attrs.append((Attr.REALM, credentials.realm.encode()))
            attrs.append((Attr.NONCE, credentials.nonce))
        message = stun.request(_METHODS[kind], tid, *attrs)
        data = stun.encode(message, key=credentials.key if authenticated else None)
        rto = self._timings.initial_rto
        self._transactions[tid] = _Transaction(kind, data, authenticated, now + rto, rto, stale_retries=stale_retries,
                                               peer_ip=peer_ip, peer=peer, channel=channel)
        self._transmit(data)
