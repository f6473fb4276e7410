"""The WireGuard device: peers, the index table, and the sans-I/O entry points.

Bytes and time go in (`receive_datagram`, `send_packet`, `tick`); datagrams to send,
decrypted packets and events come out in a `DeviceOutput`. Nothing here touches a socket or
reads a clock, so the whole protocol, timers included, runs in unit tests.
"""

from __future__ import annotations

import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterable

from cryptography.exceptions import InvalidTag

from gateway_pkg.tunnel.packet import total_length

from . import keys
from .cookie import CookieChecker, CookieGenerator
from .events import (
    DROP_COOKIE,
    DROP_COOKIE_REQUIRED,
    DROP_DECRYPT,
    DROP_EXPIRED,
    DROP_HANDSHAKE_TIMEOUT,
    DROP_INNER_MALFORMED,
    DROP_MAC1,
    DROP_MALFORMED,
    DROP_NO_ENDPOINT,
    DROP_QUEUE_FULL,
    DROP_RATE_LIMITED,
    DROP_REPLAY,
    DROP_UNKNOWN_INDEX,
    DROP_UNKNOWN_PEER,
    HANDSHAKE_UNCONFIRMED,
    DeviceOutput,
    Dropped,
    Endpoint,
    HandshakeCompleted,
    HandshakeFailed,
    PeerSessionExpired,
)
from .messages import (
    INITIATION_MAC1_OFFSET,
    INITIATION_MAC2_OFFSET,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_HANDSHAKE_INITIATION,
    MESSAGE_HANDSHAKE_RESPONSE,
    MESSAGE_TRANSPORT_DATA,
    RESPONSE_MAC1_OFFSET,
    RESPONSE_MAC2_OFFSET,
    TRANSPORT_HEADER,
    TRANSPORT_MIN_LEN,
    CookieReply,
    HandshakeInitiation,
    HandshakeResponse,
    MalformedMessage,
    message_type,
)
from .noise import (
    HandshakeError,
    InitiatorHandshake,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    initial_hash_for,
    tai64n,
)
from .session import Keypair
from .timers import PeerTimers, TimerConfig

# Firezone configures boringtun's handshake rate limiter with 100 handshakes per second;
# without an `under_load` callable the device considers itself loaded above that rate.
DEFAULT_HANDSHAKES_PER_SECOND = 100


class _PendingHandshake:
    """Index-table entry for an initiation we sent and whose response we await."""

    __slots__ = ("peer", "state")

    def __init__(self, peer: _Peer, state: InitiatorHandshake) -> None:
        self.peer = peer
        self.state = state


class _Peer:
    __slots__ = (
        "cookies",
        "current",
        "endpoint",
        "handshake",
        "handshake_attempt_started",
        "last_initiation_consumed",
        "last_initiation_sent",
        "last_timestamp",
        "next",
        "persistent_keepalive",
        "preshared_key",
        "previous",
        "public_key",
        "responder_hash",
        "staged",
        "static_static",
        "timers",
    )

    def __init__(
        self,
        public_key: bytes,
        preshared_key: bytes,
        static_static: bytes,
        persistent_keepalive: float | None,
        cookie_lifetime: float,
        max_staged: int,
    ) -> None:
        self.public_key = public_key
        self.preshared_key = preshared_key
        self.static_static = static_static
        self.persistent_keepalive = persistent_keepalive
        self.responder_hash = initial_hash_for(public_key)
        self.cookies = CookieGenerator(public_key, cookie_lifetime=cookie_lifetime)
        self.endpoint: Endpoint | None = None
        self.handshake: _PendingHandshake | None = None
        self.handshake_attempt_started: float | None = None
        self.last_initiation_sent = float("-inf")
        self.last_initiation_consumed = float("-inf")
        self.last_timestamp = bytes(12)
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None
        self.staged: deque[bytes] = deque(maxlen=max_staged)
        self.timers = PeerTimers()


class _HandshakeLoadMeter:
    """Decides per handshake message whether it needs a cookie first (True) or gets the
    Diffie-Hellman work at once, counting messages in one-second buckets.

    Up to `limit` messages a second the device is not loaded. Beyond that, a message still
    goes through when its source (address and port, what a cookie is bound to) has sent at most
    `per_source` handshake messages this second and fewer than `limit` such exemptions were
    granted: a flood from one source or a few (one host's sockets, or a host behind the same
    NAT as the client) cannot make a client that contacts us for the first time wait for its
    retransmission (5 s), and a flood from spoofed or ever-new sources still costs at most
    twice `limit` Diffie-Hellman operations a second. At most `max_sources` sources are
    remembered per second.
    """

    __slots__ = ("_bucket", "_count", "_exempted", "_limit", "_max_sources", "_per_source", "_sources")

    def __init__(self, limit: int, per_source: int = 2, max_sources: int = 4096) -> None:
        self._limit = limit
        self._per_source = per_source
        self._max_sources = max_sources
        self._bucket = -1
        self._count = 0
        self._exempted = 0
        self._sources: dict[Endpoint, int] = {}

    def observe(self, now: float, source: Endpoint = ("", 0)) -> bool:
        bucket = int(now)
        if bucket != self._bucket:
            self._bucket = bucket
            self._count = self._exempted = 0
            self._sources.clear()
        self._count += 1
        sources = self._sources
        seen = sources.get(source, 0) + 1
        if seen > 1 or len(sources) < self._max_sources:
            sources[source] = seen
        if self._count <= self._limit:
            return False
        if seen <= self._per_source and self._exempted < self._limit:
            self._exempted += 1
            return False
        return True


class WireGuardDevice:
    """A sans-I/O WireGuard interface holding our static key and the authorised peers."""

    def __init__(
        self,
        private_key: bytes,
        *,
        timers: TimerConfig | None = None,
        under_load: Callable[[], bool] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if len(private_key) != keys.KEY_LEN:
            raise keys.InvalidKey("a private key is 32 bytes")
        self._private_key = private_key
        self.public_key: bytes = keys.public_key(private_key)
        self._config = timers or TimerConfig()
        self._under_load = under_load
        self._load_meter = _HandshakeLoadMeter(DEFAULT_HANDSHAKES_PER_SECOND)
        self._rng = rng
        self._jitter_source: random.Random | None = None
        # Wall time feeds only the TAI64N timestamp inside initiations (replay protection
        # at the responder must survive our restarts, so it cannot be monotonic).
        self._wall_clock = wall_clock
        self._local_hash = initial_hash_for(self.public_key)
        self._cookie_checker = CookieChecker(
            self.public_key, cookie_secret_lifetime=self._config.cookie_refresh_time, rng=rng
        )
        self._peers: dict[bytes, _Peer] = {}
        self._index_table: dict[int, Keypair | _PendingHandshake] = {}

    # ----------------------------------------------------------------- peers

    def add_peer(
        self,
        public_key: bytes,
        preshared_key: bytes,
        *,
        persistent_keepalive: float | None = None,
    ) -> None:
        """Authorise a peer. Same key and PSK again keeps the session; a new PSK resets it."""
        if len(public_key) != keys.KEY_LEN or len(preshared_key) != keys.KEY_LEN:
            raise keys.InvalidKey("public and preshared keys are 32 bytes")
        if public_key == self.public_key:
            raise keys.InvalidKey("a peer cannot have the device's own public key")
        existing = self._peers.get(public_key)
        if existing is not None and existing.preshared_key == preshared_key:
            existing.persistent_keepalive = persistent_keepalive
            if persistent_keepalive is None:
                existing.timers.persistent_keepalive = None
            return
        static_static = keys.dh(self._private_key, public_key)
        endpoint = None
        if existing is not None:
            endpoint = existing.endpoint
            self.remove_peer(public_key)
        peer = _Peer(
            public_key,
            preshared_key,
            static_static,
            persistent_keepalive,
            self._config.cookie_refresh_time,
            self._config.max_staged_packets,
        )
        peer.endpoint = endpoint
        self._peers[public_key] = peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self._peers.pop(public_key, None)
        if peer is not None:
            self._zero_key_material(peer)

    def has_peer(self, public_key: bytes) -> bool:
        return public_key in self._peers

    def peer_endpoint(self, public_key: bytes) -> Endpoint | None:
        peer = self._peers.get(public_key)
        return peer.endpoint if peer is not None else None

    def set_peer_endpoint(self, public_key: bytes, endpoint: Endpoint) -> None:
        """Where to send initiations before the peer has contacted us (client side, tests)."""
        self._peers[public_key].endpoint = endpoint

    def peers(self) -> list[bytes]:
        return list(self._peers)

    @property
    def session_count(self) -> int:
        """Receiver indices the device still answers to: sessions and handshakes in flight.
        Zero once every key has been forgotten, which tests and diagnostics can observe."""
        return len(self._index_table)

    def has_session(self, public_key: bytes, now: float) -> bool:
        """Whether the peer has a session that can still carry data."""
        peer = self._peers.get(public_key)
        return peer is not None and peer.current is not None and peer.current.expires_at > now

    def connected_peers(self, now: float) -> int:
        """Peers with a session that can still carry data (younger than REJECT_AFTER_TIME)."""
        return sum(1 for p in self._peers.values() if p.current is not None and p.current.expires_at > now)

    def next_deadline(self) -> float | None:
        """The earliest time `tick` has work to do, so an event loop can sleep until then."""
        deadlines = [d for p in self._peers.values() if (d := p.timers.next_deadline())]
        expiries = [
            p.current.expires_at
            for p in self._peers.values()
            if p.current is not None and not p.current.expiry_reported
        ]
        candidates = deadlines + expiries
        return min(candidates) if candidates else None

    # ----------------------------------------------------------------- sending

    def send_packet(self, public_key: bytes, ip_packet: bytes, now: float) -> DeviceOutput:
        """Encrypt an IP packet to a peer, or queue it and start a handshake as initiator."""
        out = DeviceOutput()
        self._send(public_key, ip_packet, now, out)
        return out

    def send_packets(self, public_key: bytes, ip_packets: Iterable[bytes], now: float) -> DeviceOutput:
        """Several packets to one peer into one output, in order (e.g. a TUN read batch)."""
        out = DeviceOutput()
        for ip_packet in ip_packets:
            self._send(public_key, ip_packet, now, out)
        return out

    def _send(self, public_key: bytes, ip_packet: bytes, now: float, out: DeviceOutput) -> None:
        peer = self._peers.get(public_key)
        if peer is None:
            out.events.append(Dropped(DROP_UNKNOWN_PEER))
            return
        if peer.endpoint is None:
            out.events.append(Dropped(DROP_NO_ENDPOINT, public_key))
            return
        keypair = peer.current
        if keypair is None or not self._can_send(keypair, now):
            if len(peer.staged) == peer.staged.maxlen:
                out.events.append(Dropped(DROP_QUEUE_FULL, public_key))
            # Copy: the caller may hand us a view into a receive buffer it will reuse.
            peer.staged.append(bytes(ip_packet))
            self._initiate_handshake(peer, now, out, retry=False)
            return
        self._send_transport(peer, keypair, ip_packet, now, out)

    def _can_send(self, keypair: Keypair, now: float) -> bool:
        cfg = self._config
        return keypair.send_counter < cfg.reject_after_messages and now < keypair.expires_at

    def _send_transport(self, peer: _Peer, keypair: Keypair, ip_packet: bytes, now: float, out: DeviceOutput) -> None:
        assert peer.endpoint is not None
        out.datagrams.append((keypair.encrypt(ip_packet), peer.endpoint))
        timers = peer.timers
        # Data expects an answer; if none comes, the session may be dead on the other side.
        if ip_packet and timers.new_handshake is None:
            timers.new_handshake = now + self._config.keepalive_timeout + self._config.rekey_timeout + self._jitter()
        self._authenticated_packet_sent(peer, now)
        # The message-count rule applies to both roles (whitepaper §6.2), the time rule is
        # role-dependent and precomputed on the keypair.
        if now >= keypair.rekey_on_send_at or keypair.send_counter >= self._config.rekey_after_messages:
            self._initiate_handshake(peer, now, out, retry=False)

    def _authenticated_packet_sent(self, peer: _Peer, now: float) -> None:
        peer.timers.send_keepalive = None
        peer.timers.need_another_keepalive = False
        self._authenticated_packet_traversal(peer, now)

    def _authenticated_packet_traversal(self, peer: _Peer, now: float) -> None:
        if peer.persistent_keepalive:
            peer.timers.persistent_keepalive = now + peer.persistent_keepalive

    def _send_keepalive(self, peer: _Peer, now: float, out: DeviceOutput) -> None:
        keypair = peer.current
        if peer.staged:
            self._flush_staged(peer, now, out)
            return
        if keypair is None or peer.endpoint is None or not self._can_send(keypair, now):
            return
        self._send_transport(peer, keypair, b"", now, out)

    def _flush_staged(self, peer: _Peer, now: float, out: DeviceOutput) -> None:
        keypair = peer.current
        if keypair is None or peer.endpoint is None:
            return
        while peer.staged and self._can_send(keypair, now):
            self._send_transport(peer, keypair, peer.staged.popleft(), now, out)

    def _jitter(self) -> float:
        # Jitter only de-synchronises timers; it needs no secrecy, and os.urandom's syscall
        # would be paid on every request/response packet. Seeded from rng for reproducibility.
        if self._jitter_source is None:
            self._jitter_source = random.Random(self._rng(16))  # noqa: S311
        return self._jitter_source.random() * self._config.rekey_timeout_jitter_max

    def _new_index(self) -> int:
        while True:
            index = int.from_bytes(self._rng(4), "little")
            if index not in self._index_table:
                return index

    # ----------------------------------------------------------------- handshakes

    def _initiate_handshake(self, peer: _Peer, now: float, out: DeviceOutput, *, retry: bool) -> None:
        if peer.endpoint is None:
            return
        if not retry:
            if peer.handshake_attempt_started is not None:
                return  # already trying; the retransmit timer drives further attempts
            if now - peer.last_initiation_sent < self._config.rekey_timeout:
                return  # at most one initiation per REKEY_TIMEOUT
            peer.handshake_attempt_started = now
        if peer.handshake is not None:
            self._index_table.pop(peer.handshake.state.local_index, None)
        local_index = self._new_index()
        state, initiation = create_initiation(
            local_public_key=self.public_key,
            remote_public_key=peer.public_key,
            static_static=peer.static_static,
            local_index=local_index,
            ephemeral_private=keys.generate_private_key(self._rng),
            timestamp=tai64n(self._wall_clock()),
            responder_hash=peer.responder_hash,
        )
        pending = _PendingHandshake(peer, state)
        peer.handshake = pending
        self._index_table[local_index] = pending
        message = bytearray(initiation.encode())
        peer.cookies.add_macs(message, INITIATION_MAC1_OFFSET, now)
        out.datagrams.append((bytes(message), peer.endpoint))
        peer.last_initiation_sent = now
        peer.timers.retransmit_handshake = now + self._config.rekey_timeout + self._jitter()
        self._authenticated_packet_sent(peer, now)

    def initiate_handshake(self, public_key: bytes, now: float) -> DeviceOutput:
        """Start a handshake now (e.g. a client connecting); rate limited like any other."""
        out = DeviceOutput()
        peer = self._peers.get(public_key)
        if peer is None:
            out.events.append(Dropped(DROP_UNKNOWN_PEER))
        elif peer.endpoint is None:
            out.events.append(Dropped(DROP_NO_ENDPOINT, public_key))
        else:
            self._initiate_handshake(peer, now, out, retry=False)
        return out

    def _loaded(self, now: float, source: Endpoint) -> bool:
        if self._under_load is not None:
            return self._under_load()
        return self._load_meter.observe(now, source)

    def _cookie_required(self, data: bytes, sender_index: int, mac1_offset: int, mac2_offset: int,
                         source: Endpoint, now: float, out: DeviceOutput) -> bool:
        """Under load, a handshake message without a valid mac2 gets a cookie reply instead of
        Diffie-Hellman work. True when that happened (the message is not processed)."""
        checker = self._cookie_checker
        if not self._loaded(now, source) or checker.check_mac2(data, mac2_offset, source, now):
            return False
        reply = checker.create_reply(data, sender_index=sender_index, mac1_offset=mac1_offset, source=source, now=now)
        out.datagrams.append((reply, source))
        out.events.append(Dropped(DROP_COOKIE_REQUIRED))
        return True

    def _receive_initiation(self, data: bytes, source: Endpoint, now: float, out: DeviceOutput) -> None:
        checker = self._cookie_checker
        if not checker.check_mac1(data, INITIATION_MAC1_OFFSET):
            out.events.append(Dropped(DROP_MAC1))
            return
        message = HandshakeInitiation.decode(data)
        if self._cookie_required(data, message.sender_index, INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET,
                                 source, now, out):
            return
        peers = self._peers

        def static_static_for(public_key: bytes) -> bytes | None:
            peer = peers.get(public_key)
            return peer.static_static if peer is not None else None

        try:
            consumed = consume_initiation(
                message,
                local_private_key=self._private_key,
                local_hash=self._local_hash,
                static_static_for=static_static_for,
            )
        except HandshakeError as exc:
            out.events.append(Dropped(exc.reason))
            return
        peer = peers[consumed.initiator_public_key]
        # TAI64N is big-endian, so byte order is time order: an old initiation is a replay.
        if consumed.timestamp <= peer.last_timestamp:
            out.events.append(Dropped(DROP_REPLAY, peer.public_key))
            out.events.append(HandshakeFailed(peer.public_key, DROP_REPLAY))
            return
        if now - peer.last_initiation_consumed < self._config.handshake_initiation_rate:
            out.events.append(Dropped(DROP_RATE_LIMITED, peer.public_key))
            out.events.append(HandshakeFailed(peer.public_key, DROP_RATE_LIMITED))
            return
        local_index = self._new_index()
        try:
            response, transport_keys = create_response(
                consumed,
                local_index=local_index,
                ephemeral_private=keys.generate_private_key(self._rng),
                preshared_key=peer.preshared_key,
            )
        except HandshakeError as exc:
            out.events.append(Dropped(exc.reason, peer.public_key))
            out.events.append(HandshakeFailed(peer.public_key, exc.reason))
            return
        peer.last_timestamp = consumed.timestamp
        peer.last_initiation_consumed = now
        keypair = Keypair(
            sending_key=transport_keys.sending_key,
            receiving_key=transport_keys.receiving_key,
            local_index=local_index,
            remote_index=consumed.initiator_index,
            is_initiator=False,
            created=now,
            peer_public_key=peer.public_key,
            owner=peer,
            config=self._config,
        )
        # The responder may not send with a new session until the initiator confirms it,
        # so it waits in `next`; an older unconfirmed one is superseded.
        if peer.next is not None:
            self._index_table.pop(peer.next.local_index, None)
            out.events.append(HandshakeFailed(peer.public_key, HANDSHAKE_UNCONFIRMED))
        peer.next = keypair
        self._index_table[local_index] = keypair
        peer.endpoint = source
        encoded = bytearray(response.encode())
        peer.cookies.add_macs(encoded, RESPONSE_MAC1_OFFSET, now)
        out.datagrams.append((bytes(encoded), source))
        self._session_derived(peer, now)
        self._authenticated_packet_sent(peer, now)

    def _receive_response(self, data: bytes, source: Endpoint, now: float, out: DeviceOutput) -> None:
        checker = self._cookie_checker
        if not checker.check_mac1(data, RESPONSE_MAC1_OFFSET):
            out.events.append(Dropped(DROP_MAC1))
            return
        message = HandshakeResponse.decode(data)
        if self._cookie_required(data, message.sender_index, RESPONSE_MAC1_OFFSET, RESPONSE_MAC2_OFFSET,
                                 source, now, out):
            return
        pending = self._index_table.get(message.receiver_index)
        if not isinstance(pending, _PendingHandshake):
            out.events.append(Dropped(DROP_UNKNOWN_INDEX))
            return
        peer = pending.peer
        try:
            transport_keys = consume_response(
                pending.state,
                message,
                local_private_key=self._private_key,
                preshared_key=peer.preshared_key,
            )
        except HandshakeError as exc:
            out.events.append(Dropped(exc.reason, peer.public_key))
            out.events.append(HandshakeFailed(peer.public_key, exc.reason))
            return
        keypair = Keypair(
            sending_key=transport_keys.sending_key,
            receiving_key=transport_keys.receiving_key,
            local_index=pending.state.local_index,
            remote_index=message.sender_index,
            is_initiator=True,
            created=now,
            peer_public_key=peer.public_key,
            owner=peer,
            config=self._config,
        )
        peer.handshake = None
        self._index_table[keypair.local_index] = keypair
        # If the peer also sent us an initiation we answered, that session may still carry
        # its traffic: keep it as `previous` rather than the older current one.
        if peer.next is not None:
            self._drop_keypair(peer.previous)
            self._drop_keypair(peer.current)
            peer.previous = peer.next
            peer.next = None
        else:
            self._drop_keypair(peer.previous)
            peer.previous = peer.current
        peer.current = keypair
        peer.endpoint = source
        peer.handshake_attempt_started = None
        peer.timers.retransmit_handshake = None
        self._session_derived(peer, now)
        self._authenticated_packet_received(peer)
        self._authenticated_packet_traversal(peer, now)
        out.events.append(HandshakeCompleted(peer.public_key, initiator=True))
        # The responder cannot send until it sees our first transport message.
        if peer.staged:
            self._flush_staged(peer, now, out)
        else:
            self._send_transport(peer, keypair, b"", now, out)

    def _receive_cookie_reply(self, data: bytes, now: float, out: DeviceOutput) -> None:
        reply = CookieReply.decode(data)
        entry = self._index_table.get(reply.receiver_index)
        if entry is None:
            out.events.append(Dropped(DROP_UNKNOWN_INDEX))
            return
        peer = entry.peer if isinstance(entry, _PendingHandshake) else self._peers.get(entry.peer_public_key)
        if peer is None or not peer.cookies.consume_reply(reply, now):
            out.events.append(Dropped(DROP_COOKIE))

    def _session_derived(self, peer: _Peer, now: float) -> None:
        peer.timers.zero_key_material = now + 3 * self._config.reject_after_time

    def _authenticated_packet_received(self, peer: _Peer) -> None:
        peer.timers.new_handshake = None

    def _drop_keypair(self, keypair: Keypair | None) -> None:
        if keypair is not None and self._index_table.get(keypair.local_index) is keypair:
            del self._index_table[keypair.local_index]

    # ----------------------------------------------------------------- receiving

    def receive_datagram(self, data: bytes, source: Endpoint, now: float) -> DeviceOutput:
        """Process one UDP datagram. Never raises on bad input: it reports Dropped."""
        out = DeviceOutput()
        self._receive(data, source, now, out)
        return out

    def receive_datagrams(self, datagrams: Iterable[tuple[bytes, Endpoint]], now: float) -> DeviceOutput:
        """A batch (e.g. from recvmmsg) into one output, in order; saves an output per packet."""
        out = DeviceOutput()
        receive = self._receive
        for data, source in datagrams:
            receive(data, source, now, out)
        return out

    def _receive(self, data: bytes, source: Endpoint, now: float, out: DeviceOutput) -> None:
        # Transport data is by far the most common message: test for it before anything else.
        if len(data) >= TRANSPORT_MIN_LEN and data[0] == MESSAGE_TRANSPORT_DATA:
            kind, receiver_index, counter = TRANSPORT_HEADER.unpack_from(data)
            if kind == MESSAGE_TRANSPORT_DATA:
                self._receive_transport(data, receiver_index, counter, source, now, out)
                return
        # Handshake messages are rare: one copy lets callers pass views of reused buffers.
        data = bytes(data)
        try:
            kind = message_type(data)
            if kind == MESSAGE_HANDSHAKE_INITIATION:
                self._receive_initiation(data, source, now, out)
            elif kind == MESSAGE_HANDSHAKE_RESPONSE:
                self._receive_response(data, source, now, out)
            elif kind == MESSAGE_COOKIE_REPLY:
                self._receive_cookie_reply(data, now, out)
            else:
                out.events.append(Dropped(DROP_MALFORMED))
        except MalformedMessage:
            out.events.append(Dropped(DROP_MALFORMED))

    def _receive_transport(
        self,
        data: bytes,
        receiver_index: int,
        counter: int,
        source: Endpoint,
        now: float,
        out: DeviceOutput,
    ) -> None:
        # The hot path: every check is one comparison against a precomputed value.
        keypair = self._index_table.get(receiver_index)
        if keypair.__class__ is not Keypair:
            out.events.append(Dropped(DROP_UNKNOWN_INDEX))
            return
        assert isinstance(keypair, Keypair)
        if now >= keypair.expires_at:
            out.events.append(Dropped(DROP_EXPIRED, keypair.peer_public_key))
            # The peer still uses a session we no longer accept: offer it a new one now
            # rather than waiting for its own timers (rate limited to one per REKEY_TIMEOUT).
            owner: _Peer = keypair.owner  # type: ignore[assignment]
            self._initiate_handshake(owner, now, out, retry=False)
            return
        replay = keypair.replay
        if not replay.check(counter):
            reason = DROP_EXPIRED if counter >= self._config.reject_after_messages else DROP_REPLAY
            out.events.append(Dropped(reason, keypair.peer_public_key))
            return
        try:
            plaintext = keypair.decrypt(data, counter)
        except InvalidTag:
            out.events.append(Dropped(DROP_DECRYPT, keypair.peer_public_key))
            return
        if not replay.record(counter):
            out.events.append(Dropped(DROP_REPLAY, keypair.peer_public_key))
            return
        peer: _Peer = keypair.owner  # type: ignore[assignment]
        # Roaming: the latest authenticated packet decides where we answer.
        peer.endpoint = source
        if keypair is peer.next:
            self._confirm_session(peer, keypair, now, out)
        timers = peer.timers
        timers.new_handshake = None
        if peer.persistent_keepalive:
            timers.persistent_keepalive = now + peer.persistent_keepalive
        if now >= keypair.rekey_on_receive_at and keypair is peer.current:
            # Rekey before the session dies even if we only receive on it (see Keypair).
            self._initiate_handshake(peer, now, out, retry=False)
        if not plaintext:
            return  # keepalive
        # Passive keepalive: if we have nothing to say within KEEPALIVE_TIMEOUT, say that.
        if timers.send_keepalive is None:
            timers.send_keepalive = now + self._config.keepalive_timeout
        else:
            timers.need_another_keepalive = True
        # Strip WireGuard's zero padding by the IP header's own length (inline: per packet).
        length = total_length(plaintext)
        size = len(plaintext)
        if length is None or length > size:
            out.events.append(Dropped(DROP_INNER_MALFORMED, peer.public_key))
            return
        out.packets.append((peer.public_key, plaintext if length == size else plaintext[:length]))

    def _confirm_session(self, peer: _Peer, keypair: Keypair, now: float, out: DeviceOutput) -> None:
        """The initiator's first transport message makes the responder's new session current."""
        self._drop_keypair(peer.previous)
        peer.previous = peer.current
        peer.current = keypair
        peer.next = None
        out.events.append(HandshakeCompleted(peer.public_key, initiator=False))
        self._flush_staged(peer, now, out)

    # ----------------------------------------------------------------- timers

    def tick(self, now: float) -> DeviceOutput:
        """Fire due timers: handshake retransmits, keepalives, rekeys, expiry, zeroing."""
        out = DeviceOutput()
        cfg = self._config
        for peer in list(self._peers.values()):
            timers = peer.timers
            if timers.retransmit_handshake is not None and timers.retransmit_handshake <= now:
                timers.retransmit_handshake = None
                self._retransmit_handshake(peer, now, out)
            if timers.send_keepalive is not None and timers.send_keepalive <= now:
                timers.send_keepalive = None
                self._send_keepalive(peer, now, out)
                if timers.need_another_keepalive:
                    timers.need_another_keepalive = False
                    timers.send_keepalive = now + cfg.keepalive_timeout
            if timers.new_handshake is not None and timers.new_handshake <= now:
                timers.new_handshake = None
                # We sent data and heard nothing back: the peer may have lost the session.
                self._initiate_handshake(peer, now, out, retry=False)
            if timers.persistent_keepalive is not None and timers.persistent_keepalive <= now:
                timers.persistent_keepalive = None
                if peer.persistent_keepalive:
                    self._send_keepalive(peer, now, out)
            current = peer.current
            if current is not None and not current.expiry_reported and now >= current.expires_at:
                current.expiry_reported = True
                out.events.append(PeerSessionExpired(peer.public_key))
            if timers.zero_key_material is not None and timers.zero_key_material <= now:
                timers.zero_key_material = None
                self._zero_key_material(peer)
        return out

    def _retransmit_handshake(self, peer: _Peer, now: float, out: DeviceOutput) -> None:
        started = peer.handshake_attempt_started
        if started is None:
            return
        if now - started >= self._config.rekey_attempt_time:
            peer.handshake_attempt_started = None
            if peer.handshake is not None:
                self._index_table.pop(peer.handshake.state.local_index, None)
                peer.handshake = None
            peer.timers.new_handshake = None
            if peer.staged:
                out.events.append(Dropped(DROP_HANDSHAKE_TIMEOUT, peer.public_key, count=len(peer.staged)))
                peer.staged.clear()
            out.events.append(HandshakeFailed(peer.public_key))
            if peer.timers.zero_key_material is None:
                peer.timers.zero_key_material = now + 3 * self._config.reject_after_time
            return
        self._initiate_handshake(peer, now, out, retry=True)

    def _zero_key_material(self, peer: _Peer) -> None:
        for keypair in (peer.previous, peer.current, peer.next):
            self._drop_keypair(keypair)
        peer.previous = peer.current = peer.next = None
        if peer.handshake is not None:
            self._index_table.pop(peer.handshake.state.local_index, None)
            peer.handshake = None
        peer.handshake_attempt_started = None
        peer.staged.clear()
        timers = peer.timers
        timers.retransmit_handshake = timers.send_keepalive = timers.new_handshake = None

