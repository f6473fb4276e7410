"""The Noise_IKpsk2 handshake of WireGuard (whitepaper §5.4), as initiator and as responder.

Pure functions over explicit state: the caller supplies indices, ephemeral keys and the
timestamp, so a handshake is reproducible byte for byte in tests. MACs are added and checked
by `cookie.py`; peers, indices and timers live in `device.py`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from . import keys
from .messages import HandshakeInitiation, HandshakeResponse
from .primitives import (
    INITIAL_CHAINING_KEY,
    INITIAL_HASH,
    AuthenticationFailure,
    aead_decrypt,
    aead_encrypt,
    hash_,
    kdf1,
    kdf2,
    kdf3,
)

TIMESTAMP_LEN = 12
# TAI64 labels start at 2^62; the extra 10 s is TAI's offset from UTC in 1972, as in tai64n.
_TAI64_BASE = (1 << 62) + 10
# Rounding the nanoseconds down to ~16.8 ms keeps the responder from learning our clock
# precisely while still ordering initiations sent further apart than that.
_NANOSECOND_WHITENING_MASK = ~((1 << 24) - 1)
_TAI64N = struct.Struct(">QI")


class HandshakeError(Exception):
    """A handshake message was rejected; `reason` is the stable drop reason for metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


def tai64n(wall_time: float) -> bytes:
    seconds = int(wall_time)
    nanoseconds = int((wall_time - seconds) * 1e9) & _NANOSECOND_WHITENING_MASK
    return _TAI64N.pack(_TAI64_BASE + seconds, nanoseconds)


def initial_hash_for(responder_public_key: bytes) -> bytes:
    """H after mixing the responder's static key: constant per responder, so cached."""
    return hash_(INITIAL_HASH + responder_public_key)


@dataclass(frozen=True, slots=True)
class TransportKeys:
    sending_key: bytes
    receiving_key: bytes


@dataclass(slots=True)
class InitiatorHandshake:
    """State kept by the initiator between sending the initiation and getting the response."""

    local_index: int
    ephemeral_private: bytes
    chaining_key: bytes
    hash: bytes


def create_initiation(
    *,
    local_public_key: bytes,
    remote_public_key: bytes,
    static_static: bytes,
    local_index: int,
    ephemeral_private: bytes,
    timestamp: bytes,
    responder_hash: bytes | None = None,
) -> tuple[InitiatorHandshake, HandshakeInitiation]:
    """Build a handshake initiation (without MACs) and the state to finish the handshake.

    `static_static` is DH(S_priv_i, S_pub_r), precomputed per peer because it never changes.
    """
    h = responder_hash if responder_hash is not None else initial_hash_for(remote_public_key)
    ephemeral_public = keys.public_key(ephemeral_private)
    ck = kdf1(INITIAL_CHAINING_KEY, ephemeral_public)
    h = hash_(h + ephemeral_public)
    ck, key = kdf2(ck, keys.dh(ephemeral_private, remote_public_key))
    encrypted_static = aead_encrypt(key, 0, local_public_key, h)
    h = hash_(h + encrypted_static)
    ck, key = kdf2(ck, static_static)
    encrypted_timestamp = aead_encrypt(key, 0, timestamp, h)
    h = hash_(h + encrypted_timestamp)
    message = HandshakeInitiation(local_index, ephemeral_public, encrypted_static, encrypted_timestamp)
    return InitiatorHandshake(local_index, ephemeral_private, ck, h), message


@dataclass(frozen=True, slots=True)
class ConsumedInitiation:
    """What the responder learned from a valid initiation, and the state to answer it."""

    initiator_public_key: bytes
    initiator_index: int
    initiator_ephemeral: bytes
    timestamp: bytes
    chaining_key: bytes
    hash: bytes


def consume_initiation(
    message: HandshakeInitiation,
    *,
    local_private_key: bytes,
    local_hash: bytes,
    static_static_for: Callable[[bytes], bytes | None],
) -> ConsumedInitiation:
    """Decrypt an initiation addressed to us.

    `local_hash` is initial_hash_for(our public key). `static_static_for(peer_key)` returns the
    precomputed DH with that peer, or None when the peer is not authorised ("unknown_peer").
    """
    ephemeral = message.unencrypted_ephemeral
    ck = kdf1(INITIAL_CHAINING_KEY, ephemeral)
    h = hash_(local_hash + ephemeral)
    try:
        ck, key = kdf2(ck, keys.dh(local_private_key, ephemeral))
        peer_public_key = aead_decrypt(key, 0, message.encrypted_static, h)
    except (keys.InvalidKey, AuthenticationFailure) as exc:
        raise HandshakeError("decrypt", "initiation static key does not decrypt") from exc
    h = hash_(h + message.encrypted_static)
    static_static = static_static_for(peer_public_key)
    if static_static is None:
        raise HandshakeError("unknown_peer")
    ck, key = kdf2(ck, static_static)
    try:
        timestamp = aead_decrypt(key, 0, message.encrypted_timestamp, h)
    except AuthenticationFailure as exc:
        raise HandshakeError("decrypt", "initiation timestamp does not decrypt") from exc
    h = hash_(h + message.encrypted_timestamp)
    return ConsumedInitiation(peer_public_key, message.sender_index, ephemeral, timestamp, ck, h)


def create_response(
    consumed: ConsumedInitiation,
    *,
    local_index: int,
    ephemeral_private: bytes,
    preshared_key: bytes,
) -> tuple[HandshakeResponse, TransportKeys]:
    """Answer an initiation (without MACs) and derive the responder's transport keys."""
    ephemeral_public = keys.public_key(ephemeral_private)
    ck = kdf1(consumed.chaining_key, ephemeral_public)
    h = hash_(consumed.hash + ephemeral_public)
    try:
        ck = kdf1(ck, keys.dh(ephemeral_private, consumed.initiator_ephemeral))
        ck = kdf1(ck, keys.dh(ephemeral_private, consumed.initiator_public_key))
    except keys.InvalidKey as exc:
        raise HandshakeError("decrypt", "initiator sent a low-order key") from exc
    ck, tau, key = kdf3(ck, preshared_key)
    h = hash_(h + tau)
    encrypted_nothing = aead_encrypt(key, 0, b"", h)
    message = HandshakeResponse(local_index, consumed.initiator_index, ephemeral_public, encrypted_nothing)
    receiving, sending = kdf2(ck, b"")
    return message, TransportKeys(sending_key=sending, receiving_key=receiving)


def consume_response(
    handshake: InitiatorHandshake,
    message: HandshakeResponse,
    *,
    local_private_key: bytes,
    preshared_key: bytes,
) -> TransportKeys:
    """Finish the handshake as initiator. A PSK mismatch surfaces here as "decrypt"."""
    ephemeral = message.unencrypted_ephemeral
    ck = kdf1(handshake.chaining_key, ephemeral)
    h = hash_(handshake.hash + ephemeral)
    try:
        ck = kdf1(ck, keys.dh(handshake.ephemeral_private, ephemeral))
        ck = kdf1(ck, keys.dh(local_private_key, ephemeral))
    except keys.InvalidKey as exc:
        raise HandshakeError("decrypt", "responder sent a low-order key") from exc
    ck, tau, key = kdf3(ck, preshared_key)
    h = hash_(h + tau)
    try:
        aead_decrypt(key, 0, message.encrypted_nothing, h)
    except AuthenticationFailure as exc:
        raise HandshakeError("decrypt", "response does not authenticate (PSK?)") from exc
    sending, receiving = kdf2(ck, b"")
    return TransportKeys(sending_key=sending, receiving_key=receiving)
