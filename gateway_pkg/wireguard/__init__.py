"""WireGuard protocol core (Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s), sans-I/O.

Written from the WireGuard whitepaper. Bytes and time in, bytes and events out: see
`WireGuardDevice` and docs/wireguard.md.
"""

from .device import WireGuardDevice
from .events import (
    DROP_REASONS,
    DeviceOutput,
    Dropped,
    HandshakeCompleted,
    HandshakeFailed,
    PeerSessionExpired,
    WireGuardEvent,
)
from .keys import InvalidKey, generate_private_key, key_from_base64, key_to_base64, public_key
from .messages import MalformedMessage
from .timers import TimerConfig

__all__ = [
    "DROP_REASONS",
    "DeviceOutput",
    "Dropped",
    "HandshakeCompleted",
    "HandshakeFailed",
    "InvalidKey",
    "MalformedMessage",
    "PeerSessionExpired",
    "TimerConfig",
    "WireGuardDevice",
    "WireGuardEvent",
    "generate_private_key",
    "key_from_base64",
    "key_to_base64",
    "public_key",
]
