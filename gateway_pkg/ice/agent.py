"""ICE agent (RFC 8445) in the controlled role, with consent freshness (RFC 7675), sans-I/O.

One `IceAgent` per client connection. The caller feeds it candidates, the STUN messages that
name it (by USERNAME or by one of its transaction ids) and the time; it answers with datagrams
to send (`Transmit`) and events (`IceEvent`) from `drain()`, and says with `poll_timeout()`
when `tick()` is due. No sockets, no clock, randomness injectable.

Where we stray from the RFCs, on purpose:
- We never change role. A request carrying ICE-CONTROLLED gets 487 (Role Conflict) whatever
  the tie-breakers say, and a 487 to one of our checks retries the check as controlled: the
  client is controlling by contract (Firezone's protocol), so a conflict is the peer's to fix.
- A local candidate is named by its "via", the caller's key for the socket or TURN allocation
  a datagram leaves from. Pairs are keyed by (via, remote address); a check's mapped address
  is not turned into a local peer-reflexive candidate (it would leave from the same via).
- Requests failing FINGERPRINT or MESSAGE-INTEGRITY are dropped silently and counted (no
  unsigned 400/401 replies to spoofable datagrams).
- Consent checks run every `idle_interval` (upstream's 25 s, not RFC 7675's 5 s) on each
  nominated pair; the selected one is the nominated pair of highest priority.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

from gateway_pkg.ice import stun
from gateway_pkg.ice.candidate import Candidate, CandidateType, foundation, priority
from gateway_pkg.ice.stun import Address, Attr

log = logging.getLogger(__name__)

MAX_PAIRS = 100  # RFC 8445 §6.1.2.5 recommends a limit of 100
MAX_REMOTE_CANDIDATES = 100
MAX_ROLE_CONFLICT_RETRIES = 4

DROP_REASONS = (
    "malformed",
    "missing_integrity",
    "bad_integrity",
    "bad_fingerprint",
    "unknown_username",
    "unexpected_source",
)

Via = Hashable
State = Literal["checking", "connected", "disconnected"]


@dataclass(frozen=True, slots=True)
class IceTimings:
    """Upstream's (str0m's) values, in seconds."""

    initial_rto: float = 0.25
    max_rto: float = 1.5
    max_retransmits: int = 12
    idle_interval: float = 25.0  # consent checks on nominated pairs
    idle_retransmits: int = 4
    candidate_timeout: float = 10.0  # no remote candidate at all by then: give up
    disconnect_timeout: float = 2.0  # consent lost and no other nominated pair: grace period
    handshake_timeout: float = 20.0  # nothing nominated by then: give up
    pacing: float = 0.05  # Ta between new checks
    consent_timeout: float = 30.0  # RFC 7675 §5.1: consent expires without a response

    def __post_init__(self) -> None:
        durations = (
            self.initial_rto,
            self.max_rto,
            self.idle_interval,
            self.candidate_timeout,
            self.disconnect_timeout,
            self.handshake_timeout,
            self.pacing,
            self.consent_timeout,
        )
        if min(durations) <= 0 or self.initial_rto > self.max_rto:
            raise ValueError("ICE timings must be positive, initial_rto at most max_rto")
        if self.max_retransmits < 0 or self.idle_retransmits < 0:
            raise ValueError("retransmit counts must not be negative")


@dataclass(frozen=True, slots=True)
class Credentials:
    ufrag: str
    pwd: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Transmit:
    data: bytes
    destination: Address
    via: Via


@dataclass(frozen=True, slots=True)
class Selected:
    """The nominated pair to send on; emitted again whenever it changes."""

    remote: Address
    via: Via
    local: Candidate
    remote_candidate: Candidate


@dataclass(frozen=True, slots=True)
class Disconnected:
    reason: str


@dataclass(frozen=True, slots=True)
class LocalCandidate:
    """A local candidate to trickle to the client."""

    candidate: Candidate


@dataclass(frozen=True, slots=True)
class LocalCandidateInvalidated:
    candidate: Candidate


IceEvent = Selected | Disconnected | LocalCandidate | LocalCandidateInvalidated


class PairState(StrEnum):
    FROZEN = "frozen"
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(slots=True, eq=False)
class _Pair:
    local: Candidate
    via: Via
    remote: Candidate
    priority: int
    state: PairState = PairState.FROZEN
    remote_nominated: bool = False  # USE-CANDIDATE seen; nominated once valid
    nominated: bool = False
    removed: bool = False
    consent_at: float | None = None  # last authenticated success response
    next_consent: float | None = None
    consent_txn: bytes | None = None
    role_conflicts: int = 0

    @property
    def foundation(self) -> tuple[str, str]:
        return (self.local.foundation, self.remote.foundation)


@dataclass(slots=True, eq=False)
class _Transaction:
    pair: _Pair
    data: bytes
    consent: bool
    rto: float
    deadline: float
    retransmits_left: int
    cancelled: bool = False  # superseded by a triggered check: no retransmits, no failure


def pair_priority(controlling: int, controlled: int) -> int:
    """RFC 8445 §6.1.2.3 with G the controlling agent's candidate priority, D the controlled's."""
    g, d = controlling, controlled
    return (1 << 32) * min(g, d) + 2 * max(g, d) + (1 if g > d else 0)


def _canonical(address: Address) -> Address:
    try:
        return (str(ipaddress.ip_address(address[0])), address[1])
    except ValueError:
        return (address[0], address[1])


def _version(ip: str) -> int:
    try:
        return ipaddress.ip_address(ip).version
    except ValueError:
        return 0


class IceAgent:
    """The controlled ICE agent of one client connection."""

    def __init__(
        self,
        local: Credentials,
        remote: Credentials,
        *,
        now: float,
        timings: IceTimings = IceTimings(),
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._local_credentials = local
        self._remote_credentials = remote
        self._local_key = stun.short_term_key(local.pwd)
        self._remote_key = stun.short_term_key(remote.pwd)
        self._timings = timings
        self._random_bytes = random_bytes
        self.tie_breaker = int.from_bytes(random_bytes(8), "big")
        self._created = now
        self._now = now  # the latest time the caller gave us
        self._locals: list[tuple[Candidate, Via]] = []
        self._remotes: list[Candidate] = []
        self._pairs: list[_Pair] = []  # highest priority first
        self._by_key: dict[tuple[Via, Address], _Pair] = {}
        self._triggered: deque[_Pair] = deque()
        self._transactions: dict[bytes, _Transaction] = {}
        self._next_check = now
        self._selected: _Pair | None = None
        self._selected_event: Selected | None = None
        self._ever_selected = False
        self._disconnect_at: float | None = None
        self._state: State = "checking"
        self._transmits: list[Transmit] = []
        self._events: list[IceEvent] = []
        self.dropped: Counter[str] = Counter()

    # --- what the caller reads --------------------------------------------------------

    @property
    def local_credentials(self) -> Credentials:
        return self._local_credentials

    @property
    def remote_credentials(self) -> Credentials:
        return self._remote_credentials

    @property
    def selected(self) -> Selected | None:
        return self._selected_event

    @property
    def state(self) -> State:
        return self._state

    def pairs(self) -> list[tuple[Candidate, Via, Candidate, PairState, bool]]:
        """(local, via, remote, state, nominated) of every pair, highest priority first."""
        return [(p.local, p.via, p.remote, p.state, p.nominated) for p in self._pairs]

    def owns(self, transaction_id: bytes) -> bool:
        return transaction_id in self._transactions

    def drain(self) -> tuple[list[Transmit], list[IceEvent]]:
        transmits, events = self._transmits, self._events
        self._transmits, self._events = [], []
        return transmits, events

    # --- candidates -------------------------------------------------------------------

    def add_local_candidate(self, candidate: Candidate, via: Via) -> None:
        """Advertise `candidate`; host and relay candidates pair, srflx ones pair as their base."""
        if candidate.type == CandidateType.PRFLX:
            raise ValueError("peer-reflexive local candidates are not added")
        if self._state == "disconnected" or (candidate, via) in self._locals:
            return
        self._locals.append((candidate, via))
        self._events.append(LocalCandidate(candidate))
        for remote in self._remotes:
            if remote.type != CandidateType.PRFLX:
                self._form_pairs(remote)
        self._sort()

    def remove_local_candidates(self, via: Via) -> None:
        """Withdraw every local candidate on `via` (a lost relay, a closed socket)."""
        gone = [c for c, v in self._locals if v == via]
        if not gone:
            return
        self._locals = [(c, v) for c, v in self._locals if v != via]
        if self._state != "disconnected":
            self._events.extend(LocalCandidateInvalidated(c) for c in gone)
        self._remove_pairs([p for p in self._pairs if p.via == via])

    def add_remote_candidate(self, candidate: Candidate) -> None:
        if self._state == "disconnected" or candidate.component != 1 or candidate.transport.lower() != "udp":
            return
        try:
            if ipaddress.ip_address(candidate.address).is_unspecified or candidate.port == 0:
                return
        except ValueError:
            return
        known = self._find_remote(candidate.addr)
        if known is not None:
            if known.type == CandidateType.PRFLX and candidate.type != CandidateType.PRFLX:
                self._replace_remote(known, candidate)  # RFC 8445 §7.3.1.3: signalled after learned
            return
        if len(self._remotes) >= MAX_REMOTE_CANDIDATES:
            log.debug("ignoring remote candidate %s: too many", candidate.to_sdp())
            return
        self._remotes.append(candidate)
        self._form_pairs(candidate)
        self._sort()

    def remove_remote_candidate(self, candidate: Candidate) -> None:
        known = self._find_remote(candidate.addr)
        if known is None:
            return
        self._remotes.remove(known)
        self._remove_pairs([p for p in self._pairs if p.remote is known])

    # --- STUN -------------------------------------------------------------------------

    def handle(self, message: stun.Message, raw: bytes, source: Address, via: Via, now: float) -> bool:
        """Process a STUN message; True when it belonged to this agent (even if dropped)."""
        if message.method != stun.Method.BINDING:
            return False
        self._now = max(self._now, now)
        if message.cls == stun.Class.REQUEST:
            return self._on_request(message, raw, _canonical(source), via, now)
        if message.cls in (stun.Class.SUCCESS, stun.Class.ERROR):
            transaction = self._transactions.get(message.transaction_id)
            if transaction is None:
                return False
            self._on_response(transaction, message, raw, _canonical(source), via, now)
            return True
        return False

    def _on_request(self, message: stun.Message, raw: bytes, source: Address, via: Via, now: float) -> bool:
        username = message.username()
        if username is None:
            return False
        ours, colon, theirs = username.partition(":")
        if ours != self._local_credentials.ufrag:
            return False
        if not colon or theirs != self._remote_credentials.ufrag:
            self.dropped["unknown_username"] += 1
            return True
        if stun.verify_fingerprint(raw) is False:
            self.dropped["bad_fingerprint"] += 1
            return True
        if not (message.has(Attr.MESSAGE_INTEGRITY) or message.has(Attr.MESSAGE_INTEGRITY_SHA256)):
            self.dropped["missing_integrity"] += 1
            return True
        if not stun.verify_integrity(raw, self._local_key):
            self.dropped["bad_integrity"] += 1
            return True
        if self._state == "disconnected":
            return True
        unknown = message.unknown_comprehension_required()
        if unknown:
            self._reply_error(
                message,
                stun.UNKNOWN_ATTRIBUTE,
                "Unknown Attribute",
                source,
                via,
                (Attr.UNKNOWN_ATTRIBUTES, stun.encode_unknown_attributes(unknown)),
            )
            return True
        prio = message.priority()
        malformed = (
            (prio is None and message.has(Attr.PRIORITY))
            or (message.ice_controlled() is None and message.has(Attr.ICE_CONTROLLED))
            or (message.ice_controlling() is None and message.has(Attr.ICE_CONTROLLING))
        )
        if malformed:
            self.dropped["malformed"] += 1
            return True
        if message.has(Attr.ICE_CONTROLLED):
            # The peer thinks it is controlled too; we stay controlled (see the module docstring).
            self._reply_error(message, stun.ROLE_CONFLICT, "Role Conflict", source, via)
            return True
        if prio is None:
            self._reply_error(message, stun.BAD_REQUEST, "PRIORITY missing", source, via)
            return True
        response = stun.success_response(
            message, (Attr.XOR_MAPPED_ADDRESS, stun.encode_xor_address(source, message.transaction_id))
        )
        self._send(stun.encode(response, key=self._local_key), source, via)
        self._on_check(source, via, prio, message.use_candidate(), now)
        return True

    def _on_check(self, source: Address, via: Via, prio: int, use_candidate: bool, now: float) -> None:
        """RFC 8445 §7.3.1.3-7.3.1.5: learn a prflx candidate, trigger a check, note nomination."""
        remote = self._find_remote(source)
        if remote is None:
            if len(self._remotes) >= MAX_REMOTE_CANDIDATES:
                return
            remote = Candidate(
                foundation(CandidateType.PRFLX, source[0]), 1, "udp", prio, source[0], source[1], CandidateType.PRFLX
            )
            self._remotes.append(remote)  # paired only with the base it arrived on, below
        pair = self._by_key.get((via, remote.addr))
        if pair is None:
            base = self._base_on(via, _version(source[0]))
            if base is None:
                return  # a via without a local candidate of that family: answered, not paired
            pair = self._add_pair(base, via, remote)
            if pair is None:
                return
            self._sort()
        if use_candidate:
            pair.remote_nominated = True
        stale = pair.consent_at is None or now - pair.consent_at >= self._timings.idle_interval
        if pair.state == PairState.SUCCEEDED and not stale:
            if use_candidate and not pair.nominated:
                self._nominate(pair, now)
            return
        if pair.state == PairState.IN_PROGRESS:
            for transaction in self._transactions.values():
                if transaction.pair is pair and not transaction.consent:
                    transaction.cancelled = True
        if pair.state != PairState.SUCCEEDED:
            pair.state = PairState.WAITING
        if pair not in self._triggered:
            self._triggered.append(pair)
        self._pace(now)

    def _on_response(
        self, transaction: _Transaction, message: stun.Message, raw: bytes, source: Address, via: Via, now: float
    ) -> None:
        if stun.verify_fingerprint(raw) is False:
            self.dropped["bad_fingerprint"] += 1
            return
        if not (message.has(Attr.MESSAGE_INTEGRITY) or message.has(Attr.MESSAGE_INTEGRITY_SHA256)):
            self.dropped["missing_integrity"] += 1
            return
        if not stun.verify_integrity(raw, self._remote_key):
            self.dropped["bad_integrity"] += 1
            return
        pair = transaction.pair
        if source != pair.remote.addr or via != pair.via:
            # RFC 8445 §7.2.5.2.1: not symmetric. Wait for the genuine answer or the timeout.
            self.dropped["unexpected_source"] += 1
            return
        del self._transactions[message.transaction_id]
        if pair.consent_txn == message.transaction_id:
            pair.consent_txn = None
        if pair.removed or self._state == "disconnected":
            return
        if message.cls == stun.Class.ERROR:
            error = message.error()
            if error is not None and error[0] == stun.ROLE_CONFLICT and pair.role_conflicts < MAX_ROLE_CONFLICT_RETRIES:
                # The peer must be controlling anyway: retry as controlled.
                pair.role_conflicts += 1
                self._start_transaction(pair, now, consent=transaction.consent)
                return
            log.debug("check %s -> %s failed: %s", pair.local.addr, pair.remote.addr, error)
            self._failed(pair, transaction.consent, now)
            return
        pair.consent_at = now
        pair.role_conflicts = 0
        if transaction.consent:
            return
        pair.next_consent = now + self._timings.idle_interval
        if pair.state != PairState.SUCCEEDED:
            pair.state = PairState.SUCCEEDED
            for other in self._pairs:  # RFC 8445 §7.2.5.3.3
                if other.state == PairState.FROZEN and other.foundation == pair.foundation:
                    other.state = PairState.WAITING
        if pair.remote_nominated and not pair.nominated:
            self._nominate(pair, now)

    # --- time -------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        self._now = max(self._now, now)
        if self._state == "disconnected":
            return
        timings = self._timings
        for tid, transaction in list(self._transactions.items()):
            if now < transaction.deadline:
                continue
            if not transaction.cancelled and transaction.retransmits_left > 0:
                transaction.retransmits_left -= 1
                transaction.rto = min(transaction.rto * 2, timings.max_rto)
                transaction.deadline = now + transaction.rto
                self._send(transaction.data, transaction.pair.remote.addr, transaction.pair.via)
                continue
            del self._transactions[tid]
            pair = transaction.pair
            if pair.consent_txn == tid:
                pair.consent_txn = None
            if not transaction.cancelled and not pair.removed:
                self._failed(pair, transaction.consent, now)
        for pair in [p for p in self._pairs if p.nominated]:
            if pair.consent_at is not None and now - pair.consent_at >= timings.consent_timeout:
                self._lose_consent(pair, "no consent response", now)
            elif pair.consent_txn is None and pair.next_consent is not None and now >= pair.next_consent:
                pair.next_consent = now + timings.idle_interval
                self._start_transaction(pair, now, consent=True)
        self._pace(now)
        if self._selected is None:
            if not self._ever_selected and now >= self._created + timings.handshake_timeout:
                self._disconnect(f"no candidate pair nominated within {timings.handshake_timeout:g} s")
            elif not self._remotes and now >= self._created + timings.candidate_timeout and not self._ever_selected:
                self._disconnect(f"no remote candidate within {timings.candidate_timeout:g} s")
            elif self._disconnect_at is not None and now >= self._disconnect_at:
                self._disconnect("consent lost and no other nominated pair")

    def poll_timeout(self) -> float | None:
        if self._state == "disconnected":
            return None
        timings = self._timings
        deadlines = [t.deadline for t in self._transactions.values()]
        if self._triggered or any(p.state in (PairState.WAITING, PairState.FROZEN) for p in self._pairs):
            deadlines.append(self._next_check)
        for pair in self._pairs:
            if pair.nominated:
                if pair.consent_at is not None:
                    deadlines.append(pair.consent_at + timings.consent_timeout)
                if pair.consent_txn is None and pair.next_consent is not None:
                    deadlines.append(pair.next_consent)
        if self._selected is None:
            if not self._ever_selected:
                deadlines.append(self._created + timings.handshake_timeout)
                if not self._remotes:
                    deadlines.append(self._created + timings.candidate_timeout)
            if self._disconnect_at is not None:
                deadlines.append(self._disconnect_at)
        return min(deadlines) if deadlines else None

    # --- internals --------------------------------------------------------------------

    def _send(self, data: bytes, destination: Address, via: Via) -> None:
        self._transmits.append(Transmit(data, destination, via))

    def _reply_error(
        self, request: stun.Message, code: int, reason: str, source: Address, via: Via, *attrs: tuple[int, bytes]
    ) -> None:
        response = stun.error_response(request, code, reason, *attrs)
        self._send(stun.encode(response, key=self._local_key), source, via)

    def _pace(self, now: float) -> None:
        """Start one check per Ta: the triggered queue first, then the best waiting/frozen pair."""
        if now < self._next_check:
            return
        pair: _Pair | None = None
        while self._triggered and pair is None:
            candidate = self._triggered.popleft()
            if not candidate.removed and candidate.state in (PairState.WAITING, PairState.SUCCEEDED):
                pair = candidate
        if pair is None:
            pair = next((p for p in self._pairs if p.state == PairState.WAITING), None)
        if pair is None:
            pair = next((p for p in self._pairs if p.state == PairState.FROZEN), None)
        if pair is None:
            return
        self._next_check = now + self._timings.pacing
        self._start_transaction(pair, now, consent=False)

    def _start_transaction(self, pair: _Pair, now: float, *, consent: bool) -> None:
        timings = self._timings
        tid = stun.new_transaction_id(self._random_bytes)
        request = stun.request(
            stun.Method.BINDING,
            tid,
            (Attr.USERNAME, f"{self._remote_credentials.ufrag}:{self._local_credentials.ufrag}".encode()),
            (Attr.PRIORITY, stun.encode_u32(priority(CandidateType.PRFLX, pair.local.local_preference))),
            (Attr.ICE_CONTROLLED, stun.encode_u64(self.tie_breaker)),
        )
        data = stun.encode(request, key=self._remote_key)
        retransmits = timings.idle_retransmits if consent else timings.max_retransmits
        self._transactions[tid] = _Transaction(
            pair, data, consent, timings.initial_rto, now + timings.initial_rto, retransmits
        )
        if consent:
            pair.consent_txn = tid
        elif pair.state != PairState.SUCCEEDED:
            pair.state = PairState.IN_PROGRESS
        self._send(data, pair.remote.addr, pair.via)

    def _failed(self, pair: _Pair, consent: bool, now: float) -> None:
        if consent or pair.nominated:
            self._lose_consent(pair, "consent check failed", now)
        else:
            pair.state = PairState.FAILED

    def _lose_consent(self, pair: _Pair, reason: str, now: float) -> None:
        log.debug("pair %s -> %s lost consent: %s", pair.local.addr, pair.remote.addr, reason)
        pair.state = PairState.FAILED
        pair.nominated = pair.remote_nominated = False
        pair.consent_at = pair.next_consent = None
        if pair.consent_txn is not None:
            self._transactions.pop(pair.consent_txn, None)
            pair.consent_txn = None
        self._reselect(now)

    def _nominate(self, pair: _Pair, now: float) -> None:
        pair.nominated = True
        if pair.next_consent is None:
            pair.next_consent = now + self._timings.idle_interval
        self._reselect(now)

    def _reselect(self, now: float) -> None:
        best = next((p for p in self._pairs if p.nominated and p.state == PairState.SUCCEEDED), None)
        if best is None:
            if self._selected is not None:
                self._selected = self._selected_event = None
                self._state = "checking"
                self._disconnect_at = now + self._timings.disconnect_timeout
            return
        event = Selected(best.remote.addr, best.via, best.local, best.remote)
        self._selected = best
        self._ever_selected = True
        self._disconnect_at = None
        self._state = "connected"
        if event != self._selected_event:
            self._selected_event = event
            self._events.append(event)

    def _disconnect(self, reason: str) -> None:
        log.debug("ICE disconnected: %s", reason)
        self._state = "disconnected"
        self._selected = self._selected_event = None
        self._transactions.clear()
        self._triggered.clear()
        self._events.append(Disconnected(reason))

    def _find_remote(self, address: Address) -> Candidate | None:
        return next((c for c in self._remotes if c.addr == address), None)

    def _bases(self) -> list[tuple[Candidate, Via]]:
        """The local candidates checks leave from: hosts, relays, and srflx replaced by their base
        (RFC 8445 §6.1.2.4); a srflx without a host on its via gets a base built from it."""
        bases: list[tuple[Candidate, Via]] = []
        for candidate, via in self._locals:
            if candidate.type in (CandidateType.HOST, CandidateType.RELAY):
                bases.append((candidate, via))
        for candidate, via in self._locals:
            if candidate.type != CandidateType.SRFLX:
                continue
            if any(v == via and c.version == candidate.version for c, v in bases):
                continue
            address = candidate.related_address or candidate.address
            if _version(address) != candidate.version or ipaddress.ip_address(address).is_unspecified:
                address = candidate.address
            port = candidate.related_port or candidate.port
            base = Candidate(
                foundation(CandidateType.HOST, address),
                1,
                "udp",
                priority(CandidateType.HOST, candidate.local_preference),
                address,
                port,
                CandidateType.HOST,
            )
            bases.append((base, via))
        return bases

    def _base_on(self, via: Via, version: int) -> Candidate | None:
        return next((c for c, v in self._bases() if v == via and c.version == version), None)

    def _form_pairs(self, remote: Candidate) -> None:
        version = remote.version
        for base, via in self._bases():
            if base.version == version and (via, remote.addr) not in self._by_key:
                self._add_pair(base, via, remote)

    def _add_pair(self, local: Candidate, via: Via, remote: Candidate) -> _Pair | None:
        prio = pair_priority(remote.priority, local.priority)
        if len(self._pairs) >= MAX_PAIRS:
            idle = [
                p
                for p in self._pairs
                if p.state in (PairState.FROZEN, PairState.WAITING, PairState.FAILED) and not p.remote_nominated
            ]
            victim = min(idle, key=lambda p: p.priority, default=None)
            if victim is None or victim.priority >= prio:
                return None
            self._remove_pairs([victim])
        pair = _Pair(local, via, remote, prio)
        busy = any(
            p.foundation == pair.foundation and p.state in (PairState.WAITING, PairState.IN_PROGRESS)
            for p in self._pairs
        )
        pair.state = PairState.FROZEN if busy else PairState.WAITING
        self._pairs.append(pair)
        self._by_key[(via, remote.addr)] = pair
        return pair

    def _replace_remote(self, old: Candidate, new: Candidate) -> None:
        self._remotes[self._remotes.index(old)] = new
        for pair in self._pairs:
            if pair.remote is old:
                pair.remote = new
                pair.priority = pair_priority(new.priority, pair.local.priority)
        self._form_pairs(new)  # now signalled, it pairs with every base
        self._sort()
        if self._selected is not None and self._selected.remote is new:
            event = replace(self._selected_event, remote_candidate=new) if self._selected_event else None
            if event is not None and event != self._selected_event:
                self._selected_event = event
                self._events.append(event)

    def _remove_pairs(self, pairs: list[_Pair]) -> None:
        if not pairs:
            return
        gone = {id(p) for p in pairs}
        for pair in pairs:
            pair.removed = True
            self._by_key.pop((pair.via, pair.remote.addr), None)
        self._pairs = [p for p in self._pairs if id(p) not in gone]
        for tid in [t for t, tr in self._transactions.items() if id(tr.pair) in gone]:
            del self._transactions[tid]
        if self._selected is not None and id(self._selected) in gone:
            self._reselect(self._now)  # removals come without a time: the last one seen

    def _sort(self) -> None:
        self._pairs.sort(key=lambda p: p.priority, reverse=True)
