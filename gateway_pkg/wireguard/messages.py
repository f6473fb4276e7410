"""Wire formats of the four WireGuard message types.

Every message starts with a little-endian u32 whose low byte is the type and whose three
upper bytes are reserved zeros; reading it as one u32 (as wireguard-go does) means a
non-zero reserved byte makes the type unknown. Decoders are strict: exact lengths for the
handshake messages, and any violation raises `MalformedMessage`, the only error they raise.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MESSAGE_HANDSHAKE_INITIATION = 1
MESSAGE_HANDSHAKE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT_DATA = 4

HANDSHAKE_INITIATION_LEN = 148
HANDSHAKE_RESPONSE_LEN = 92
COOKIE_REPLY_LEN = 64
TRANSPORT_HEADER_LEN = 16
TRANSPORT_MIN_LEN = TRANSPORT_HEADER_LEN + 16  # header + Poly1305 tag of an empty keepalive

# mac1 covers everything before it, mac2 everything before mac2.
INITIATION_MAC1_OFFSET = 116
INITIATION_MAC2_OFFSET = 132
RESPONSE_MAC1_OFFSET = 60
RESPONSE_MAC2_OFFSET = 76

_INITIATION = struct.Struct("<II32s48s28s16s16s")
_RESPONSE = struct.Struct("<III32s16s16s16s")
_COOKIE_REPLY = struct.Struct("<II24s32s")
TRANSPORT_HEADER = struct.Struct("<IIQ")
_TYPE = struct.Struct("<I")


class MalformedMessage(ValueError):
    """A datagram is not a well-formed WireGuard message (unknown type or wrong length)."""


def message_type(data: bytes) -> int:
    """The message type, or MalformedMessage if the datagram cannot be any WireGuard message."""
    if len(data) < 4:
        raise MalformedMessage("shorter than the 4-byte type field")
    value = int(_TYPE.unpack_from(data)[0])
    if value == MESSAGE_HANDSHAKE_INITIATION:
        if len(data) != HANDSHAKE_INITIATION_LEN:
            raise MalformedMessage("handshake initiation must be 148 bytes")
    elif value == MESSAGE_HANDSHAKE_RESPONSE:
        if len(data) != HANDSHAKE_RESPONSE_LEN:
            raise MalformedMessage("handshake response must be 92 bytes")
    elif value == MESSAGE_COOKIE_REPLY:
        if len(data) != COOKIE_REPLY_LEN:
            raise MalformedMessage("cookie reply must be 64 bytes")
    elif value == MESSAGE_TRANSPORT_DATA:
        if len(data) < TRANSPORT_MIN_LEN:
            raise MalformedMessage("transport data shorter than header and tag")
    else:
        raise MalformedMessage(f"unknown message type field {value:#x}")
    return value


@dataclass(frozen=True, slots=True)
class HandshakeInitiation:
    sender_index: int
    unencrypted_ephemeral: bytes  # 32
    encrypted_static: bytes  # 32 + 16
    encrypted_timestamp: bytes  # 12 + 16
    mac1: bytes = bytes(16)
    mac2: bytes = bytes(16)

    def encode(self) -> bytes:
        return _INITIATION.pack(
            MESSAGE_HANDSHAKE_INITIATION,
            self.sender_index,
            self.unencrypted_ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )

    @classmethod
    def decode(cls, data: bytes) -> HandshakeInitiation:
        if len(data) != HANDSHAKE_INITIATION_LEN:
            raise MalformedMessage("handshake initiation must be 148 bytes")
        kind, sender, ephemeral, static, timestamp, mac1, mac2 = _INITIATION.unpack(data)
        if kind != MESSAGE_HANDSHAKE_INITIATION:
            raise MalformedMessage("not a handshake initiation")
        return cls(sender, ephemeral, static, timestamp, mac1, mac2)


@dataclass(frozen=True, slots=True)
class HandshakeResponse:
    sender_index: int
    receiver_index: int
    unencrypted_ephemeral: bytes  # 32
    encrypted_nothing: bytes  # 0 + 16
    mac1: bytes = bytes(16)
    mac2: bytes = bytes(16)

    def encode(self) -> bytes:
        return _RESPONSE.pack(
            MESSAGE_HANDSHAKE_RESPONSE,
            self.sender_index,
            self.receiver_index,
            self.unencrypted_ephemeral,
            self.encrypted_nothing,
            self.mac1,
            self.mac2,
        )

    @classmethod
    def decode(cls, data: bytes) -> HandshakeResponse:
        if len(data) != HANDSHAKE_RESPONSE_LEN:
            raise MalformedMessage("handshake response must be 92 bytes")
        kind, sender, receiver, ephemeral, nothing, mac1, mac2 = _RESPONSE.unpack(data)
        if kind != MESSAGE_HANDSHAKE_RESPONSE:
            raise MalformedMessage("not a handshake response")
        return cls(sender, receiver, ephemeral, nothing, mac1, mac2)


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver_index: int
    nonce: bytes  # 24
    encrypted_cookie: bytes  # 16 + 16

    def encode(self) -> bytes:
        return _COOKIE_REPLY.pack(MESSAGE_COOKIE_REPLY, self.receiver_index, self.nonce, self.encrypted_cookie)

    @classmethod
    def decode(cls, data: bytes) -> CookieReply:
        if len(data) != COOKIE_REPLY_LEN:
            raise MalformedMessage("cookie reply must be 64 bytes")
        kind, receiver, nonce, cookie = _COOKIE_REPLY.unpack(data)
        if kind != MESSAGE_COOKIE_REPLY:
            raise MalformedMessage("not a cookie reply")
        return cls(receiver, nonce, cookie)


@dataclass(frozen=True, slots=True)
class TransportHeader:
    """Header of a transport data message; the hot path unpacks TRANSPORT_HEADER directly."""

    receiver_index: int
    counter: int

    @classmethod
    def decode(cls, data: bytes) -> TransportHeader:
        if len(data) < TRANSPORT_MIN_LEN:
            raise MalformedMessage("transport data shorter than header and tag")
        kind, receiver, counter = TRANSPORT_HEADER.unpack_from(data)
        if kind != MESSAGE_TRANSPORT_DATA:
            raise MalformedMessage("not transport data")
        return cls(receiver, counter)
