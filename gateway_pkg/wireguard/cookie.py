"""MAC1, MAC2 and cookie replies (whitepaper §5.4.4 and §5.4.7).

MAC1 proves the sender knows our public key and is always checked before any
Diffie-Hellman work. MAC2 is demanded only under load: it proves the sender can receive at
its source address, because it is keyed by a cookie we sent to that address.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from hmac import compare_digest

from .messages import CookieReply
from .primitives import (
    LABEL_COOKIE,
    LABEL_MAC1,
    MAC_LEN,
    AuthenticationFailure,
    hash_,
    mac,
    xaead_decrypt,
    xaead_encrypt,
)

COOKIE_NONCE_LEN = 24


def source_bytes(source: tuple[str, int]) -> bytes:
    """The address a cookie is bound to: packed IP then big-endian port."""
    host = source[0].split("%", 1)[0]  # drop an IPv6 zone id
    try:
        packed = ipaddress.ip_address(host).packed
    except ValueError:  # not numeric (only in tests); still a stable, distinct binding
        packed = host.encode("utf-8", "surrogateescape")
    return packed + (source[1] & 0xFFFF).to_bytes(2, "big")


class CookieChecker:
    """Our side as the receiver of handshake messages: checks MACs, issues cookie replies."""

    def __init__(
        self,
        local_public_key: bytes,
        *,
        cookie_secret_lifetime: float,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._mac1_key = hash_(LABEL_MAC1 + local_public_key)
        self._cookie_key = hash_(LABEL_COOKIE + local_public_key)
        self._secret_lifetime = cookie_secret_lifetime
        self._rng = rng
        self._secret = b""
        self._secret_born = float("-inf")

    def check_mac1(self, message: bytes, mac1_offset: int) -> bool:
        expected = mac(self._mac1_key, message[:mac1_offset])
        return compare_digest(expected, message[mac1_offset : mac1_offset + MAC_LEN])

    def check_mac2(self, message: bytes, mac2_offset: int, source: tuple[str, int], now: float) -> bool:
        cookie = self._cookie_for(source, now)
        expected = mac(cookie, message[:mac2_offset])
        return compare_digest(expected, message[mac2_offset : mac2_offset + MAC_LEN])

    def create_reply(
        self,
        message: bytes,
        *,
        sender_index: int,
        mac1_offset: int,
        source: tuple[str, int],
        now: float,
    ) -> bytes:
        """A cookie reply to `message`; the mac1 it carries is the associated data."""
        cookie = self._cookie_for(source, now)
        nonce = self._rng(COOKIE_NONCE_LEN)
        encrypted = xaead_encrypt(self._cookie_key, nonce, cookie, message[mac1_offset : mac1_offset + MAC_LEN])
        return CookieReply(sender_index, nonce, encrypted).encode()

    def _cookie_for(self, source: tuple[str, int], now: float) -> bytes:
        # The secret rotates so that a cookie stops working after at most two lifetimes.
        if now - self._secret_born >= self._secret_lifetime:
            self._secret = self._rng(32)
            self._secret_born = now
        return mac(self._secret, source_bytes(source))


class CookieGenerator:
    """Our side as the sender of handshake messages to one peer: adds MACs, stores cookies."""

    def __init__(self, remote_public_key: bytes, *, cookie_lifetime: float) -> None:
        self._mac1_key = hash_(LABEL_MAC1 + remote_public_key)
        self._cookie_key = hash_(LABEL_COOKIE + remote_public_key)
        self._cookie_lifetime = cookie_lifetime
        self._cookie: bytes | None = None
        self._cookie_received = float("-inf")
        self._last_mac1: bytes | None = None

    def add_macs(self, message: bytearray, mac1_offset: int, now: float) -> None:
        mac2_offset = mac1_offset + MAC_LEN
        mac1 = mac(self._mac1_key, bytes(message[:mac1_offset]))
        message[mac1_offset:mac2_offset] = mac1
        self._last_mac1 = mac1
        if self._cookie is not None and now - self._cookie_received < self._cookie_lifetime:
            message[mac2_offset : mac2_offset + MAC_LEN] = mac(self._cookie, bytes(message[:mac2_offset]))
        else:
            self._cookie = None
            message[mac2_offset : mac2_offset + MAC_LEN] = bytes(MAC_LEN)

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Store the cookie if the reply answers the last message we sent; False otherwise."""
        if self._last_mac1 is None:
            return False
        try:
            cookie = xaead_decrypt(self._cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1)
        except AuthenticationFailure:
            return False
        self._cookie = cookie
        self._cookie_received = now
        # One cookie reply per message we sent: a replayed reply must not refresh the cookie.
        self._last_mac1 = None
        return True

    @property
    def has_cookie(self) -> bool:
        return self._cookie is not None
