"""What the device reports to its caller: datagrams, decrypted packets and events."""

from __future__ import annotations

from dataclasses import dataclass

Endpoint = tuple[str, int]

# Stable drop reasons, counted by the data plane in /metrics.
DROP_MALFORMED = "malformed"  # not a WireGuard message (type, length)
DROP_MAC1 = "mac1"  # handshake message without a valid mac1 for our key
DROP_COOKIE_REQUIRED = "cookie_required"  # under load and no valid mac2: a cookie reply was sent
DROP_COOKIE = "cookie"  # a cookie reply that does not answer our last message
DROP_UNKNOWN_PEER = "unknown_peer"  # a static key the portal did not authorise
DROP_UNKNOWN_INDEX = "unknown_index"  # receiver index matches no handshake or session
DROP_DECRYPT = "decrypt"  # AEAD failure (wrong key, PSK mismatch, tampering)
DROP_REPLAY = "replay"  # counter or handshake timestamp already seen or too old
DROP_RATE_LIMITED = "rate_limited"  # initiations from one peer faster than allowed
DROP_EXPIRED = "expired"  # session past REJECT_AFTER_TIME or REJECT_AFTER_MESSAGES
DROP_INNER_MALFORMED = "inner_malformed"  # decrypted payload is not an IPv4/IPv6 packet
DROP_NO_ENDPOINT = "no_endpoint"  # nothing to send to: the peer never contacted us
DROP_QUEUE_FULL = "queue_full"  # too many packets waiting for a handshake
DROP_HANDSHAKE_TIMEOUT = "handshake_timeout"  # queued packets discarded: handshake gave up

DROP_REASONS = frozenset(
    {
        DROP_MALFORMED,
        DROP_MAC1,
        DROP_COOKIE_REQUIRED,
        DROP_COOKIE,
        DROP_UNKNOWN_PEER,
        DROP_UNKNOWN_INDEX,
        DROP_DECRYPT,
        DROP_REPLAY,
        DROP_RATE_LIMITED,
        DROP_EXPIRED,
        DROP_INNER_MALFORMED,
        DROP_NO_ENDPOINT,
        DROP_QUEUE_FULL,
        DROP_HANDSHAKE_TIMEOUT,
    }
)


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """A session is usable. As responder this is reported when the initiator confirms it
    with its first transport message, which is when WireGuard lets the responder send."""

    peer: bytes
    initiator: bool


# Why a known peer's handshake failed (HandshakeFailed.reason); the drop reasons replay,
# rate_limited and decrypt are used too.
HANDSHAKE_TIMEOUT = "timeout"  # we initiated and gave up after REKEY_ATTEMPT_TIME
HANDSHAKE_UNCONFIRMED = "unconfirmed"  # we answered; the peer initiated again without using the
# session (our response was lost, or the peer could not read it: a preshared key that differs)


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """A handshake with a known peer failed. `timeout`: queued packets were dropped too."""

    peer: bytes
    reason: str = HANDSHAKE_TIMEOUT


@dataclass(frozen=True, slots=True)
class PeerSessionExpired:
    """The current session passed REJECT_AFTER_TIME without a new handshake."""

    peer: bytes


@dataclass(frozen=True, slots=True)
class Dropped:
    reason: str
    peer: bytes | None = None
    count: int = 1


WireGuardEvent = HandshakeCompleted | HandshakeFailed | PeerSessionExpired | Dropped


@dataclass(slots=True, init=False)
class DeviceOutput:
    """Everything one call produced. Built for every packet, so its __init__ is hand-written:
    dataclass default factories cost about twice as much on the hot path."""

    datagrams: list[tuple[bytes, Endpoint]]  # (datagram, UDP destination)
    packets: list[tuple[bytes, bytes]]  # (peer public key, decrypted IP packet) for the TUN
    events: list[WireGuardEvent]

    def __init__(
        self,
        datagrams: list[tuple[bytes, Endpoint]] | None = None,
        packets: list[tuple[bytes, bytes]] | None = None,
        events: list[WireGuardEvent] | None = None,
    ) -> None:
        self.datagrams = [] if datagrams is None else datagrams
        self.packets = [] if packets is None else packets
        self.events = [] if events is None else events

    def extend(self, other: DeviceOutput) -> None:
        self.datagrams.extend(other.datagrams)
        self.packets.extend(other.packets)
        self.events.extend(other.events)

    def dropped(self) -> list[str]:
        """Drop reasons in order; handy in tests and for metrics."""
        return [e.reason for e in self.events if isinstance(e, Dropped)]
