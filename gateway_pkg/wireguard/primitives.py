"""Cryptographic primitives of Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, named as in the whitepaper.

HASH, MAC, HMAC and KDF are BLAKE2s through hashlib. The per-packet AEAD is `cryptography`'s
ChaCha20Poly1305, chosen by measurement (docs/wireguard.md, bench/bench_wireguard_core.py);
XAEAD for cookies is libsodium's XChaCha20-Poly1305 through PyNaCl.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

AEAD_TAG_LEN = 16
HASH_LEN = 32
MAC_LEN = 16

# The AEAD nonce is 32 zero bits followed by the 64-bit little-endian counter.
_NONCE = struct.Struct("<4xQ")


class AuthenticationFailure(Exception):
    """An AEAD tag did not verify: wrong key, wrong associated data, or tampering."""


def hash_(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def mac(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2s-128, used for mac1, mac2 and cookies."""
    return hashlib.blake2s(data, digest_size=MAC_LEN, key=key).digest()


def hmac(key: bytes, data: bytes) -> bytes:
    return _hmac.digest(key, data, hashlib.blake2s)


def kdf1(key: bytes, data: bytes) -> bytes:
    secret = hmac(key, data)
    return hmac(secret, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    secret = hmac(key, data)
    t1 = hmac(secret, b"\x01")
    return t1, hmac(secret, t1 + b"\x02")


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    secret = hmac(key, data)
    t1 = hmac(secret, b"\x01")
    t2 = hmac(secret, t1 + b"\x02")
    return t1, t2, hmac(secret, t2 + b"\x03")


def nonce(counter: int) -> bytes:
    return _NONCE.pack(counter)


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, associated_data: bytes) -> bytes:
    """AEAD for handshake fields. Transport data keeps one ChaCha20Poly1305 per keypair."""
    return ChaCha20Poly1305(key).encrypt(_NONCE.pack(counter), plaintext, associated_data)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, associated_data: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE.pack(counter), ciphertext, associated_data)
    except InvalidTag as exc:
        raise AuthenticationFailure from exc


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    return bytes(crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, associated_data, nonce24, key))


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    try:
        return bytes(crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, associated_data, nonce24, key))
    except Exception as exc:  # PyNaCl raises CryptoError; keep one failure type for callers
        raise AuthenticationFailure from exc


# Computed once: every handshake starts from these two values.
INITIAL_CHAINING_KEY = hash_(CONSTRUCTION)
INITIAL_HASH = hash_(INITIAL_CHAINING_KEY + IDENTIFIER)
