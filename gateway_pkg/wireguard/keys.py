"""Curve25519 keys: generation, public-key derivation, Diffie-Hellman, base64 text form.

X25519 goes through PyNaCl (libsodium). `wg genkey` and the portal hand keys around as
base64 text, so the helpers here are the only place that converts between the two forms.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable

from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base

KEY_LEN = 32


class InvalidKey(ValueError):
    """A key is not 32 bytes, not valid base64, or a Diffie-Hellman result is all zero."""


def clamp(private_key: bytes) -> bytes:
    """Clamp a scalar the way X25519 and `wg genkey` do.

    libsodium clamps internally anyway; clamping on generation keeps our keys
    byte-identical to what `wg` would print for the same random bytes.
    """
    if len(private_key) != KEY_LEN:
        raise InvalidKey("a private key is 32 bytes")
    scalar = bytearray(private_key)
    scalar[0] &= 248
    scalar[31] = (scalar[31] & 127) | 64
    return bytes(scalar)


def generate_private_key(rng: Callable[[int], bytes] = os.urandom) -> bytes:
    return clamp(rng(KEY_LEN))


def public_key(private_key: bytes) -> bytes:
    if len(private_key) != KEY_LEN:
        raise InvalidKey("a private key is 32 bytes")
    return bytes(crypto_scalarmult_base(private_key))


def dh(private_key: bytes, peer_public_key: bytes) -> bytes:
    """X25519. Raises InvalidKey for low-order points (an all-zero shared secret).

    The whitepaper lets the handshake fail on such points; libsodium refuses them for us.
    """
    try:
        return bytes(crypto_scalarmult(private_key, peer_public_key))
    except Exception as exc:  # libsodium signals low-order input with a generic error
        raise InvalidKey("Diffie-Hellman produced an invalid shared secret") from exc


def key_from_base64(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidKey("a key must be standard base64") from exc
    if len(raw) != KEY_LEN:
        raise InvalidKey(f"a key is 32 bytes, this one has {len(raw)}")
    return raw


def key_to_base64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")
