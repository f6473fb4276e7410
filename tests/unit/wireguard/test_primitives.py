"""Known-answer tests for the primitives, each checked against an independent definition."""

from __future__ import annotations

import hashlib

import pytest

from gateway_pkg.wireguard import keys, primitives
from gateway_pkg.wireguard.noise import tai64n


def test_blake2s_hash_matches_rfc7693_abc() -> None:
    assert primitives.hash_(b"abc").hex() == ("508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982")


def test_keyed_blake2s_matches_reference_kat() -> None:
    # From the BLAKE2 reference blake2s-kat.txt: key 00..1f, empty input (256-bit output).
    key = bytes(range(32))
    assert hashlib.blake2s(b"", key=key).hexdigest() == (
        "48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49"
    )
    assert primitives.mac(key, b"x") == hashlib.blake2s(b"x", key=key, digest_size=16).digest()


def _hmac_by_definition(key: bytes, data: bytes) -> bytes:
    block = 64
    key = key.ljust(block, b"\x00")
    inner = hashlib.blake2s(bytes(k ^ 0x36 for k in key) + data).digest()
    return hashlib.blake2s(bytes(k ^ 0x5C for k in key) + inner).digest()


def test_hmac_blake2s_matches_rfc2104_definition() -> None:
    assert primitives.hmac(b"k" * 32, b"message") == _hmac_by_definition(b"k" * 32, b"message")


def test_kdf_is_hkdf_with_hmac_blake2s() -> None:
    key, data = bytes(range(32)), b"input key material"
    secret = _hmac_by_definition(key, data)
    t1 = _hmac_by_definition(secret, b"\x01")
    t2 = _hmac_by_definition(secret, t1 + b"\x02")
    t3 = _hmac_by_definition(secret, t2 + b"\x03")
    assert primitives.kdf1(key, data) == t1
    assert primitives.kdf2(key, data) == (t1, t2)
    assert primitives.kdf3(key, data) == (t1, t2, t3)


def test_initial_chaining_key_and_hash_match_the_protocol_constants() -> None:
    # Hash(CONSTRUCTION) and Hash(Ci || IDENTIFIER): every WireGuard implementation shares them.
    assert primitives.INITIAL_CHAINING_KEY.hex() == ("60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36")
    assert primitives.INITIAL_HASH.hex() == ("2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3")


def test_x25519_matches_rfc7748_vectors() -> None:
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert keys.public_key(alice).hex() == ("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert keys.dh(alice, keys.public_key(bob)).hex() == shared
    assert keys.dh(bob, keys.public_key(alice)).hex() == shared


def test_dh_with_low_order_point_is_refused() -> None:
    with pytest.raises(keys.InvalidKey):
        keys.dh(keys.generate_private_key(), bytes(32))


def test_aead_nonce_is_zero_prefix_then_little_endian_counter() -> None:
    assert primitives.nonce(1) == bytes(4) + (1).to_bytes(8, "little")


def test_aead_roundtrip_and_tamper_detection() -> None:
    key = bytes(range(32))
    sealed = primitives.aead_encrypt(key, 7, b"payload", b"ad")
    assert primitives.aead_decrypt(key, 7, sealed, b"ad") == b"payload"
    with pytest.raises(primitives.AuthenticationFailure):
        primitives.aead_decrypt(key, 8, sealed, b"ad")
    nonce = bytes(24)
    sealed = primitives.xaead_encrypt(key, nonce, b"cookie", b"ad")
    assert primitives.xaead_decrypt(key, nonce, sealed, b"ad") == b"cookie"
    with pytest.raises(primitives.AuthenticationFailure):
        primitives.xaead_decrypt(key, nonce, sealed, b"other")


def test_base64_keys_roundtrip_and_reject_garbage() -> None:
    key = keys.generate_private_key()
    assert keys.key_from_base64(keys.key_to_base64(key)) == key
    for bad in ("not base64!", keys.key_to_base64(b"short")):
        with pytest.raises(keys.InvalidKey):
            keys.key_from_base64(bad)


def test_generated_keys_are_clamped_like_wg_genkey() -> None:
    key = keys.generate_private_key(lambda n: b"\xff" * n)
    assert key[0] & 7 == 0 and key[31] & 0x80 == 0 and key[31] & 0x40


def test_tai64n_is_big_endian_and_ordered() -> None:
    earlier, later = tai64n(1_700_000_000.0), tai64n(1_700_000_001.0)
    assert len(earlier) == 12 and earlier < later
    assert int.from_bytes(earlier[:8], "big") == (1 << 62) + 10 + 1_700_000_000
