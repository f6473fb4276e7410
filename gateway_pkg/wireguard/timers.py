"""Protocol timing constants (whitepaper §6) and the per-peer timer deadlines.

Everything is injectable through `TimerConfig` so tests can shrink the clock. Time is a
monotonic float the caller passes in; no code here reads a clock. Each timer is a deadline
(or None when stopped); `WireGuardDevice.tick` fires the ones that have passed.
"""

from __future__ import annotations

from dataclasses import dataclass

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
# The whitepaper says 90 s; upstream Firezone configures boringtun with 15 s.
REKEY_ATTEMPT_TIME = 15.0
REKEY_TIMEOUT = 5.0
KEEPALIVE_TIMEOUT = 10.0
COOKIE_REFRESH_TIME = 120.0
REKEY_TIMEOUT_JITTER_MAX = 0.333
# Minimum spacing of initiations accepted from one peer (flood guard, as wireguard-go).
HANDSHAKE_INITIATION_RATE = 1.0 / 50
MAX_STAGED_PACKETS = 128


@dataclass(frozen=True, slots=True)
class TimerConfig:
    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES
    rekey_after_time: float = REKEY_AFTER_TIME
    reject_after_time: float = REJECT_AFTER_TIME
    rekey_attempt_time: float = REKEY_ATTEMPT_TIME
    rekey_timeout: float = REKEY_TIMEOUT
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    cookie_refresh_time: float = COOKIE_REFRESH_TIME
    rekey_timeout_jitter_max: float = REKEY_TIMEOUT_JITTER_MAX
    handshake_initiation_rate: float = HANDSHAKE_INITIATION_RATE
    max_staged_packets: int = MAX_STAGED_PACKETS

    def __post_init__(self) -> None:
        if self.rekey_after_messages > self.reject_after_messages:
            raise ValueError("rekey_after_messages must not exceed reject_after_messages")
        if self.rekey_after_time > self.reject_after_time:
            raise ValueError("rekey_after_time must not exceed reject_after_time")
        if min(self.rekey_timeout, self.keepalive_timeout, self.rekey_attempt_time) <= 0:
            raise ValueError("timeouts must be positive")


@dataclass(slots=True)
class PeerTimers:
    """Deadlines of one peer's timers, named after the events they react to."""

    retransmit_handshake: float | None = None
    send_keepalive: float | None = None
    new_handshake: float | None = None
    zero_key_material: float | None = None
    persistent_keepalive: float | None = None
    need_another_keepalive: bool = False

    def next_deadline(self) -> float | None:
        deadlines = [
            d
            for d in (
                self.retransmit_handshake,
                self.send_keepalive,
                self.new_handshake,
                self.zero_key_material,
                self.persistent_keepalive,
            )
            if d is not None
        ]
        return min(deadlines) if deadlines else None
