"""STUN message codec (RFC 8489), sans-I/O: bytes in, `Message` out, and back.

`decode` checks structure only; the caller decides which attributes it needs and checks
MESSAGE-INTEGRITY with `verify_integrity` (it needs the raw datagram, since the HMAC covers
the bytes as received, padding included). The TURN ChannelData framing (RFC 8656 §12.4) lives
here too, because the same sockets carry both and the first byte tells them apart.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import stringprep
import struct
import unicodedata
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

Address = tuple[str, int]

MAGIC_COOKIE = 0x2112A442
HEADER_LEN = 20
TRANSACTION_ID_LEN = 12
FINGERPRINT_XOR = 0x5354554E
CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF
CHANNEL_DATA_HEADER_LEN = 4
PROTOCOL_UDP = 17

_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
_SHA1_LEN = 20
_SHA256_LEN = 32


class StunError(ValueError):
    """Bytes that are not a well-formed STUN message (or ChannelData frame)."""


class Class(IntEnum):
    REQUEST = 0
    INDICATION = 1
    SUCCESS = 2
    ERROR = 3


class Method(IntEnum):
    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class Attr(IntEnum):
    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A


KNOWN_ATTRIBUTES = frozenset(int(a) for a in Attr)
# Computed by `encode`; never taken from the attributes of the message being encoded.
_TRAILER_ATTRIBUTES = frozenset({Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT})

BAD_REQUEST = 400
UNAUTHORIZED = 401
FORBIDDEN = 403
UNKNOWN_ATTRIBUTE = 420
ALLOCATION_MISMATCH = 437
STALE_NONCE = 438
WRONG_CREDENTIALS = 441
UNSUPPORTED_TRANSPORT_PROTOCOL = 442
ALLOCATION_QUOTA_REACHED = 486
ROLE_CONFLICT = 487
SERVER_ERROR = 500
INSUFFICIENT_CAPACITY = 508


def _pad(length: int) -> int:
    return (4 - length % 4) % 4


def _message_type(cls: int, method: int) -> int:
    return ((method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2)
            | ((cls & 1) << 4) | ((cls & 2) << 7))


def _split_type(message_type: int) -> tuple[Class, int]:
    cls = ((message_type >> 4) & 1) | ((message_type >> 7) & 2)
    method = (message_type & 0x000F) | ((message_type >> 1) & 0x0070) | ((message_type >> 2) & 0x0F80)
    return Class(cls), method


@dataclass(frozen=True, slots=True)
class Message:
    """One STUN message; `attributes` are raw (type, value) pairs in wire order."""

    cls: Class
    method: int
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...] = ()

    def __post_init__(self) -> None:
        if len(self.transaction_id) != TRANSACTION_ID_LEN:
            raise StunError("a transaction id is 12 bytes")
        if not 0 <= self.method <= 0xFFF:
            raise StunError("a method is 12 bits")

    def get(self, attr: int) -> bytes | None:
        for kind, value in self.attributes:
            if kind == attr:
                return value
        return None

    def has(self, attr: int) -> bool:
        return any(kind == attr for kind, _ in self.attributes)

    def with_attributes(self, *attrs: tuple[int, bytes]) -> Message:
        return Message(self.cls, self.method, self.transaction_id, (*self.attributes, *attrs))

    def _text(self, attr: int) -> str | None:
        value = self.get(attr)
        if value is None:
            return None
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def _uint(self, attr: int, size: int) -> int | None:
        value = self.get(attr)
        if value is None or len(value) != size:
            return None
        return int.from_bytes(value, "big")

    def username(self) -> str | None:
        return self._text(Attr.USERNAME)

    def realm(self) -> str | None:
        return self._text(Attr.REALM)

    def software(self) -> str | None:
        return self._text(Attr.SOFTWARE)

    def nonce(self) -> bytes | None:
        return self.get(Attr.NONCE)

    def data(self) -> bytes | None:
        return self.get(Attr.DATA)

    def xor_address(self, attr: int = Attr.XOR_MAPPED_ADDRESS) -> Address | None:
        value = self.get(attr)
        if value is None:
            return None
        try:
            return decode_xor_address(value, self.transaction_id)
        except StunError:
            return None

    def address(self, attr: int = Attr.MAPPED_ADDRESS) -> Address | None:
        """A plain (not XORed) address attribute: MAPPED-ADDRESS, ALTERNATE-SERVER."""
        value = self.get(attr)
        if value is None:
            return None
        try:
            return decode_address(value)
        except StunError:
            return None

    def error(self) -> tuple[int, str] | None:
        value = self.get(Attr.ERROR_CODE)
        if value is None or len(value) < 4:
            return None
        klass, number = value[2] & 0x07, value[3]
        if not 3 <= klass <= 6 or number > 99:
            return None
        return klass * 100 + number, value[4:].decode("utf-8", errors="replace")

    def unknown_attributes(self) -> list[int]:
        value = self.get(Attr.UNKNOWN_ATTRIBUTES)
        if value is None:
            return []
        return [int.from_bytes(value[i:i + 2], "big") for i in range(0, len(value) - 1, 2)]

    def priority(self) -> int | None:
        return self._uint(Attr.PRIORITY, 4)

    def use_candidate(self) -> bool:
        return self.has(Attr.USE_CANDIDATE)

    def ice_controlling(self) -> int | None:
        return self._uint(Attr.ICE_CONTROLLING, 8)

    def ice_controlled(self) -> int | None:
        return self._uint(Attr.ICE_CONTROLLED, 8)

    def lifetime(self) -> int | None:
        return self._uint(Attr.LIFETIME, 4)

    def channel_number(self) -> int | None:
        value = self.get(Attr.CHANNEL_NUMBER)
        if value is None or len(value) != 4:
            return None
        return int.from_bytes(value[:2], "big")

    def unknown_comprehension_required(self) -> list[int]:
        unknown: list[int] = []
        for kind, _ in self.attributes:
            if kind < 0x8000 and kind not in KNOWN_ATTRIBUTES and kind not in unknown:
                unknown.append(kind)
        return unknown


# --- building messages ------------------------------------------------------------------


def new_transaction_id(random_bytes: Callable[[int], bytes] = os.urandom) -> bytes:
    tid = random_bytes(TRANSACTION_ID_LEN)
    if len(tid) != TRANSACTION_ID_LEN:
        raise ValueError("random_bytes returned the wrong number of bytes")
    return tid


def request(method: int, transaction_id: bytes, *attrs: tuple[int, bytes]) -> Message:
    return Message(Class.REQUEST, method, transaction_id, attrs)


def indication(method: int, transaction_id: bytes, *attrs: tuple[int, bytes]) -> Message:
    return Message(Class.INDICATION, method, transaction_id, attrs)


def success_response(to: Message, *attrs: tuple[int, bytes]) -> Message:
    return Message(Class.SUCCESS, to.method, to.transaction_id, attrs)


def error_response(to: Message, code: int, reason: str, *attrs: tuple[int, bytes]) -> Message:
    return Message(Class.ERROR, to.method, to.transaction_id, ((Attr.ERROR_CODE, encode_error(code, reason)), *attrs))


def _hmac_input(data: bytes, offset: int, end: int) -> bytes:
    """The bytes an integrity/fingerprint attribute at `offset` covers: everything before it,
    with the header's length field counting up to `end` (the end of that attribute)."""
    return data[:2] + struct.pack("!H", end - HEADER_LEN) + data[4:offset]


def _attribute(kind: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise StunError(f"attribute 0x{kind:04x} is longer than 65535 bytes")
    return struct.pack("!HH", kind, len(value)) + value + bytes(_pad(len(value)))


def encode(message: Message, *, key: bytes | None = None, sha256: bool = False, fingerprint: bool = True) -> bytes:
    """The wire form of `message`, with MESSAGE-INTEGRITY(-SHA256) over `key` when given, then
    FINGERPRINT. Integrity and fingerprint attributes already in `message` are dropped: they are
    computed here."""
    body = b"".join(_attribute(kind, value) for kind, value in message.attributes if kind not in _TRAILER_ATTRIBUTES)
    header = struct.pack("!HHI", _message_type(message.cls, message.method), 0, MAGIC_COOKIE) + message.transaction_id
    data = header + body
    if key is not None:
        kind, digest, size = ((Attr.MESSAGE_INTEGRITY_SHA256, hashlib.sha256, _SHA256_LEN) if sha256
                              else (Attr.MESSAGE_INTEGRITY, hashlib.sha1, _SHA1_LEN))
        end = len(data) + 4 + size
        mac = hmac.new(key, _hmac_input(data, len(data), end), digest).digest()
        data += _attribute(kind, mac)
    if fingerprint:
        end = len(data) + 8
        crc = zlib.crc32(_hmac_input(data, len(data), end)) ^ FINGERPRINT_XOR
        data += _attribute(Attr.FINGERPRINT, struct.pack("!I", crc))
    if len(data) - HEADER_LEN > 0xFFFF:
        raise StunError("message longer than 65535 bytes")
    return data[:2] + struct.pack("!H", len(data) - HEADER_LEN) + data[4:]


# --- parsing ----------------------------------------------------------------------------


def _parse(data: bytes) -> tuple[int, list[tuple[int, bytes, int, int]]]:
    """The message type and the attributes (type, value, offset, end) that count: after
    MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, after
    MESSAGE-INTEGRITY-SHA256 only FINGERPRINT, after FINGERPRINT nothing (RFC 8489 §14.5-14.7).
    The whole message must still be well-formed."""
    if len(data) < HEADER_LEN:
        raise StunError("shorter than a STUN header")
    message_type, length = struct.unpack_from("!HH", data)
    if message_type & 0xC000:
        raise StunError("top two bits set: not STUN")
    if data[4:8] != _COOKIE_BYTES:
        raise StunError("no magic cookie")
    if length % 4:
        raise StunError("length not a multiple of 4")
    if HEADER_LEN + length != len(data):
        raise StunError("length field does not match the datagram")
    found: list[tuple[int, bytes, int, int]] = []
    allowed: frozenset[int] | None = None  # None: anything
    offset = HEADER_LEN
    while offset < len(data):
        if offset + 4 > len(data):
            raise StunError("truncated attribute header")
        kind, size = struct.unpack_from("!HH", data, offset)
        end = offset + 4 + size + _pad(size)
        if end > len(data):
            raise StunError(f"attribute 0x{kind:04x} overruns the message")
        if allowed is None or kind in allowed:
            found.append((kind, data[offset + 4:offset + 4 + size], offset, end))
            if kind == Attr.MESSAGE_INTEGRITY:
                allowed = frozenset({Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT})
            elif kind == Attr.MESSAGE_INTEGRITY_SHA256:
                allowed = frozenset({Attr.FINGERPRINT})
            elif kind == Attr.FINGERPRINT:
                allowed = frozenset()
        offset = end
    return message_type, found


def decode(data: bytes) -> Message:
    message_type, found = _parse(data)
    cls, method = _split_type(message_type)
    return Message(cls, method, bytes(data[8:HEADER_LEN]), tuple((kind, value) for kind, value, _, _ in found))


def verify_integrity(data: bytes, key: bytes) -> bool:
    """MESSAGE-INTEGRITY-SHA256 when present, else MESSAGE-INTEGRITY, checked against `key`."""
    try:
        _, found = _parse(data)
    except StunError:
        return False
    by_kind = {kind: (value, offset, end) for kind, value, offset, end in reversed(found)}
    if Attr.MESSAGE_INTEGRITY_SHA256 in by_kind:
        value, offset, end = by_kind[Attr.MESSAGE_INTEGRITY_SHA256]
        if not 16 <= len(value) <= _SHA256_LEN or len(value) % 4:
            return False
        expected = hmac.new(key, _hmac_input(data, offset, end), hashlib.sha256).digest()[:len(value)]
    elif Attr.MESSAGE_INTEGRITY in by_kind:
        value, offset, end = by_kind[Attr.MESSAGE_INTEGRITY]
        if len(value) != _SHA1_LEN:
            return False
        expected = hmac.new(key, _hmac_input(data, offset, end), hashlib.sha1).digest()
    else:
        return False
    return hmac.compare_digest(expected, value)


def verify_fingerprint(data: bytes) -> bool | None:
    """True or False when FINGERPRINT is present (False for a malformed message), None when absent."""
    try:
        _, found = _parse(data)
    except StunError:
        return False
    for kind, value, offset, end in found:
        if kind == Attr.FINGERPRINT:
            if len(value) != 4:
                return False
            crc = zlib.crc32(_hmac_input(data, offset, end)) ^ FINGERPRINT_XOR
            return struct.unpack("!I", value)[0] == crc
    return None


def is_stun(data: bytes) -> bool:
    return len(data) >= HEADER_LEN and not data[0] & 0xC0 and data[4:8] == _COOKIE_BYTES


# --- attribute values -------------------------------------------------------------------


def _family_and_packed(ip: str) -> tuple[int, bytes]:
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError as err:
        raise StunError(f"not an IP address: {ip!r}") from err
    return (1 if parsed.version == 4 else 2), parsed.packed


def encode_address(address: Address) -> bytes:
    family, packed = _family_and_packed(address[0])
    return struct.pack("!BBH", 0, family, address[1]) + packed


def decode_address(value: bytes) -> Address:
    if len(value) < 4:
        raise StunError("short address attribute")
    family, port = value[1], int.from_bytes(value[2:4], "big")
    if family == 1 and len(value) == 8:
        return str(ipaddress.IPv4Address(value[4:])), port
    if family == 2 and len(value) == 20:
        return str(ipaddress.IPv6Address(value[4:])), port
    raise StunError("bad address family or length")


def _xor_mask(family: int, transaction_id: bytes) -> bytes:
    return _COOKIE_BYTES if family == 1 else _COOKIE_BYTES + transaction_id


def encode_xor_address(address: Address, transaction_id: bytes) -> bytes:
    family, packed = _family_and_packed(address[0])
    mask = _xor_mask(family, transaction_id)
    return (struct.pack("!BBH", 0, family, address[1] ^ (MAGIC_COOKIE >> 16))
            + bytes(a ^ b for a, b in zip(packed, mask, strict=True)))


def decode_xor_address(value: bytes, transaction_id: bytes) -> Address:
    if len(value) < 4:
        raise StunError("short address attribute")
    family = value[1]
    expected = {1: 8, 2: 20}.get(family)
    if expected is None or len(value) != expected:
        raise StunError("bad address family or length")
    mask = _xor_mask(family, transaction_id)
    raw = bytes(a ^ b for a, b in zip(value[4:], mask, strict=True))
    port = int.from_bytes(value[2:4], "big") ^ (MAGIC_COOKIE >> 16)
    ip = ipaddress.IPv4Address(raw) if family == 1 else ipaddress.IPv6Address(raw)
    return str(ip), port


def encode_error(code: int, reason: str) -> bytes:
    if not 300 <= code <= 699:
        raise StunError(f"error code {code} out of range")
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")


def encode_unknown_attributes(kinds: list[int]) -> bytes:
    return b"".join(struct.pack("!H", kind) for kind in kinds)


def encode_u32(value: int) -> bytes:
    """PRIORITY, LIFETIME."""
    return struct.pack("!I", value)


def encode_u64(value: int) -> bytes:
    """ICE-CONTROLLING, ICE-CONTROLLED tie-breakers."""
    return struct.pack("!Q", value)


def encode_channel_number(channel: int) -> bytes:
    return struct.pack("!HH", channel, 0)


def encode_requested_transport(protocol: int = PROTOCOL_UDP) -> bytes:
    return struct.pack("!B3x", protocol)


# --- credentials ------------------------------------------------------------------------


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep for a query string (unassigned code points allowed). ASCII without
    control characters, such as the portal's base64 relay passwords, comes out unchanged."""
    mapped = "".join(" " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch))
    normalized = unicodedata.normalize("NFKC", mapped)
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21, stringprep.in_table_c22, stringprep.in_table_c3,
                  stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6, stringprep.in_table_c7,
                  stringprep.in_table_c8, stringprep.in_table_c9)
    for ch in normalized:
        if any(check(ch) for check in prohibited):
            raise StunError("prohibited character in a SASLprep string")
    if any(stringprep.in_table_d1(ch) for ch in normalized):
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            raise StunError("mixed bidirectional text in a SASLprep string")
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            raise StunError("right-to-left text must start and end right-to-left")
    return normalized


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """MD5(username:realm:SASLprep(password)) (RFC 8489 §9.2.2 with MD5, as RFC 5389); a
    password SASLprep refuses is used as given."""
    try:
        prepared = saslprep(password)
    except StunError:
        prepared = password
    return hashlib.md5(f"{username}:{realm}:{prepared}".encode(), usedforsecurity=False).digest()


def short_term_key(password: str) -> bytes:
    """ICE's short-term credential: the password's bytes (RFC 8445 §7.2.2)."""
    return password.encode("utf-8")


# --- TURN ChannelData (RFC 8656 §12.4) --------------------------------------------------


def is_channel_data(data: bytes) -> bool:
    return len(data) >= CHANNEL_DATA_HEADER_LEN and 0x40 <= data[0] <= 0x4F


def encode_channel_data(channel: int, payload: bytes) -> bytes:
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise StunError(f"channel 0x{channel:04x} out of range")
    if len(payload) > 0xFFFF:
        raise StunError("ChannelData payload longer than 65535 bytes")
    return struct.pack("!HH", channel, len(payload)) + payload


def decode_channel_data(data: bytes) -> tuple[int, bytes]:
    if len(data) < CHANNEL_DATA_HEADER_LEN:
        raise StunError("shorter than a ChannelData header")
    channel, length = struct.unpack_from("!HH", data)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise StunError(f"channel 0x{channel:04x} out of range")
    extra = len(data) - CHANNEL_DATA_HEADER_LEN - length
    if not 0 <= extra <= 3:
        raise StunError("ChannelData length does not match the datagram")
    return channel, bytes(data[CHANNEL_DATA_HEADER_LEN:CHANNEL_DATA_HEADER_LEN + length])
