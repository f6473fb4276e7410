"""STUN codec: the RFC 5769 test vectors, round trips and properties of malformed input."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_pkg.ice import stun
from gateway_pkg.ice.stun import Attr, Class, Method, StunError

ICE_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

# RFC 5769 §2.1: a Binding request with short-term credentials (note the padding is spaces).
SAMPLE_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "80220010" "5354554e" "20746573" "7420636c" "69656e74"
    "00240004" "6e0001ff"
    "80290008" "932ff9b1" "51263b36"
    "00060009" "6576746a" "3a683676" "59202020"
    "00080014" "9aeaa70c" "bfd8cb56" "781ef2b5" "b2d3f249" "c1b571a2"
    "80280004" "e57a3bcf"
)
# RFC 5769 §2.2: the IPv4 response, mapped address 192.0.2.1:32853.
SAMPLE_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b" "74657374" "20766563" "746f7220"
    "00200008" "0001a147" "e112a643"
    "00080014" "2b91f599" "fd9e90c3" "8c7489f9" "2af9ba53" "f06be7d7"
    "80280004" "c07d4c96"
)
# RFC 5769 §2.3: the IPv6 response, mapped address [2001:db8:1234:5678:11:2233:4455:6677]:32853.
SAMPLE_IPV6_RESPONSE = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b" "74657374" "20766563" "746f7220"
    "00200014" "0002a147" "0113a9fa" "a5d3f179" "bc25f4b5" "bed2b9d9"
    "00080014" "a382954e" "4be67bf1" "1784c97c" "8292c275" "bfe3ed41"
    "80280004" "c8fb0b4c"
)
# RFC 5769 §2.4: a request with long-term credentials (no FINGERPRINT).
SAMPLE_LONG_TERM_REQUEST = bytes.fromhex(
    "000100602112a44278ad3433c6ad72c029da412e"
    "00060012" "e3839ee3" "8388e383" "aae38383" "e382afe3" "82b90000"
    "0015001c" "662f2f34" "39396b39" "35346436" "4f4c3334" "6f4c3946" "53547679" "36347341"
    "0014000b" "6578616d" "706c652e" "6f726700"
    "00080014" "f6702465" "6dd64a3e" "02b8e071" "2e85c9a2" "8ca89666"
)
LONG_TERM_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"


# --- RFC 5769 ---------------------------------------------------------------------------


def test_sample_request_decodes_and_verifies() -> None:
    message = stun.decode(SAMPLE_REQUEST)
    assert (message.cls, message.method, message.transaction_id) == (Class.REQUEST, Method.BINDING, TID)
    assert message.get(Attr.SOFTWARE) == b"STUN test client"
    assert message.username() == "evtj:h6vY"
    assert message.priority() == 0x6E0001FF
    assert message.ice_controlled() == 0x932FF9B151263B36
    assert message.ice_controlling() is None and not message.use_candidate()
    assert message.unknown_comprehension_required() == []
    assert stun.verify_integrity(SAMPLE_REQUEST, stun.short_term_key(ICE_PASSWORD))
    assert not stun.verify_integrity(SAMPLE_REQUEST, stun.short_term_key("wrong"))
    assert stun.verify_fingerprint(SAMPLE_REQUEST) is True


def test_sample_request_is_reproduced_byte_for_byte_but_for_the_padding() -> None:
    message = stun.decode(SAMPLE_REQUEST)
    encoded = stun.encode(message, key=stun.short_term_key(ICE_PASSWORD))
    # The vector pads USERNAME with spaces; we pad with zeros, so the MAC differs there.
    assert len(encoded) == len(SAMPLE_REQUEST)
    assert encoded[:-36].replace(b"Y\x00\x00\x00", b"Y   ") == SAMPLE_REQUEST[:-36]
    assert stun.verify_integrity(encoded, stun.short_term_key(ICE_PASSWORD))
    assert stun.verify_fingerprint(encoded) is True


@pytest.mark.parametrize(("vector", "address"), [
    (SAMPLE_IPV4_RESPONSE, ("192.0.2.1", 32853)),
    (SAMPLE_IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
])
def test_sample_responses_decode_verify_and_reencode_exactly(vector: bytes, address: stun.Address) -> None:
    message = stun.decode(vector)
    assert (message.cls, message.method) == (Class.SUCCESS, Method.BINDING)
    assert message.software() == "test vector"
    assert message.xor_address() == address
    assert stun.verify_integrity(vector, stun.short_term_key(ICE_PASSWORD))
    assert stun.verify_fingerprint(vector) is True
    assert stun.encode_xor_address(address, TID) == message.get(Attr.XOR_MAPPED_ADDRESS)
    rebuilt = stun.success_response(
        message, (Attr.SOFTWARE, b"test vector"), (Attr.XOR_MAPPED_ADDRESS, stun.encode_xor_address(address, TID)))
    # SOFTWARE's 11 bytes are padded with a space in the vector, with a zero by us.
    expected = vector[:35] + b"\x00" + vector[36:]
    encoded = stun.encode(rebuilt, key=stun.short_term_key(ICE_PASSWORD))
    assert encoded[:-32] == expected[:-32]
    assert stun.verify_integrity(encoded, stun.short_term_key(ICE_PASSWORD))


def test_long_term_vector_with_saslprep_password() -> None:
    message = stun.decode(SAMPLE_LONG_TERM_REQUEST)
    assert message.username() == LONG_TERM_USERNAME
    assert message.realm() == "example.org"
    assert message.nonce() == b"f//499k954d6OL34oL9FSTvy64sA"
    assert stun.verify_fingerprint(SAMPLE_LONG_TERM_REQUEST) is None
    prepared = stun.long_term_key(LONG_TERM_USERNAME, "example.org", "TheMatrIX")
    unprepared = stun.long_term_key(LONG_TERM_USERNAME, "example.org", "The\u00adM\u00aatr\u2168")
    assert prepared == unprepared
    assert stun.verify_integrity(SAMPLE_LONG_TERM_REQUEST, prepared)
    reencoded = stun.encode(message, key=prepared, fingerprint=False)
    assert reencoded == SAMPLE_LONG_TERM_REQUEST


def test_saslprep_maps_and_refuses_like_rfc_4013() -> None:
    assert stun.saslprep("I\u00adX") == "IX"
    assert stun.saslprep("user") == "user"
    assert stun.saslprep("\u00aa") == "a"
    assert stun.saslprep("\u2168") == "IX"
    assert stun.saslprep("a\u00a0b") == "a b"
    with pytest.raises(StunError):
        stun.saslprep("\u0007")
    with pytest.raises(StunError):
        stun.saslprep("\u0627\u0031")
    # A password SASLprep refuses is still usable, as given.
    assert len(stun.long_term_key("u", "r", "\u0007")) == 16


# --- building and accessors -------------------------------------------------------------


def test_message_type_bits_interleave_class_and_method() -> None:
    tid = bytes(12)
    for cls, expected in [(Class.REQUEST, 0x0003), (Class.INDICATION, 0x0013),
                          (Class.SUCCESS, 0x0103), (Class.ERROR, 0x0113)]:
        data = stun.encode(stun.Message(cls, Method.ALLOCATE, tid), fingerprint=False)
        assert struct.unpack("!H", data[:2])[0] == expected
        assert stun.decode(data).cls == cls and stun.decode(data).method == Method.ALLOCATE
    data = stun.encode(stun.Message(Class.ERROR, 0xFFF, tid), fingerprint=False)
    assert struct.unpack("!H", data[:2])[0] == 0x3FFF


def test_error_response_round_trip_and_unknown_attributes() -> None:
    req = stun.request(Method.BINDING, bytes(range(12)), (0x0777, b"x"), (0x8777, b"y"), (Attr.PRIORITY, b"1234"))
    assert req.unknown_comprehension_required() == [0x0777]
    err = stun.error_response(req, stun.UNKNOWN_ATTRIBUTE, "Unknown Attribute",
                              (Attr.UNKNOWN_ATTRIBUTES, stun.encode_unknown_attributes([0x0777])))
    back = stun.decode(stun.encode(err))
    assert back.cls == Class.ERROR and back.transaction_id == req.transaction_id
    assert back.error() == (420, "Unknown Attribute")
    assert back.unknown_attributes() == [0x0777]
    assert stun.decode(stun.encode(stun.error_response(req, stun.ROLE_CONFLICT, ""))).error() == (487, "")
    with pytest.raises(StunError):
        stun.encode_error(200, "ok")


def test_accessors_return_none_when_absent_or_malformed() -> None:
    empty = stun.request(Method.BINDING, bytes(12))
    for accessor in (empty.username, empty.xor_address, empty.error, empty.priority, empty.ice_controlling,
                     empty.ice_controlled, empty.lifetime, empty.channel_number, empty.data, empty.realm,
                     empty.nonce, empty.address):
        assert accessor() is None
    assert not empty.use_candidate()
    bad = stun.request(Method.BINDING, bytes(12), (Attr.USERNAME, b"\xff"), (Attr.XOR_MAPPED_ADDRESS, b"\x00\x03ab"),
                       (Attr.ERROR_CODE, b"\x00\x00\x02\x00"), (Attr.PRIORITY, b"123"), (Attr.LIFETIME, b""),
                       (Attr.CHANNEL_NUMBER, b"\x40"), (Attr.ICE_CONTROLLING, b"1234567"),
                       (Attr.MAPPED_ADDRESS, b"\x00\x01\x00\x01\x01"))
    assert bad.username() is None and bad.xor_address() is None and bad.error() is None
    assert bad.priority() is None and bad.lifetime() is None and bad.channel_number() is None
    assert bad.ice_controlling() is None and bad.address() is None


def test_typed_attributes_round_trip() -> None:
    tid = stun.new_transaction_id(lambda n: b"\x07" * n)
    assert tid == b"\x07" * 12
    message = stun.request(
        Method.CHANNEL_BIND, tid,
        (Attr.CHANNEL_NUMBER, stun.encode_channel_number(0x4001)),
        (Attr.XOR_PEER_ADDRESS, stun.encode_xor_address(("2001:db8::1", 9), tid)),
        (Attr.LIFETIME, stun.encode_u32(600)),
        (Attr.ICE_CONTROLLING, stun.encode_u64(2**64 - 1)),
        (Attr.USE_CANDIDATE, b""),
        (Attr.MAPPED_ADDRESS, stun.encode_address(("10.1.2.3", 65535))),
        (Attr.REQUESTED_TRANSPORT, stun.encode_requested_transport()),
        (Attr.DATA, b"payload"),
    )
    back = stun.decode(stun.encode(message))
    assert back.channel_number() == 0x4001
    assert back.xor_address(Attr.XOR_PEER_ADDRESS) == ("2001:db8::1", 9)
    assert back.lifetime() == 600 and back.ice_controlling() == 2**64 - 1 and back.use_candidate()
    assert back.address() == ("10.1.2.3", 65535)
    assert back.get(Attr.REQUESTED_TRANSPORT) == b"\x11\x00\x00\x00"
    assert back.data() == b"payload"
    with pytest.raises(ValueError, match="wrong number"):
        stun.new_transaction_id(lambda n: b"")
    with pytest.raises(StunError):
        stun.Message(Class.REQUEST, 1, b"short")
    with pytest.raises(StunError):
        stun.encode_xor_address(("not-an-ip", 1), tid)


def test_sha256_integrity_and_both_together() -> None:
    key = b"secret"
    message = stun.request(Method.BINDING, bytes(12), (Attr.USERNAME, b"a:b"))
    data = stun.encode(message, key=key, sha256=True)
    assert stun.decode(data).get(Attr.MESSAGE_INTEGRITY_SHA256) is not None
    assert stun.verify_integrity(data, key) and not stun.verify_integrity(data, b"other")
    # MESSAGE-INTEGRITY then MESSAGE-INTEGRITY-SHA256: the latter covers the former and wins.
    with_sha1 = stun.encode(message, key=key, fingerprint=False)
    body = with_sha1[:2] + struct.pack("!H", len(with_sha1) - 20 + 36) + with_sha1[4:]
    mac = hmac.new(key, body, hashlib.sha256).digest()
    both = body + struct.pack("!HH", Attr.MESSAGE_INTEGRITY_SHA256, 32) + mac
    assert [k for k, _ in stun.decode(both).attributes][-2:] == [Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256]
    assert stun.verify_integrity(both, key)
    assert not stun.verify_integrity(both[:-1] + bytes([both[-1] ^ 1]), key)


def test_attributes_after_integrity_are_ignored_but_fingerprint_is_kept() -> None:
    message = stun.request(Method.BINDING, bytes(12), (Attr.USERNAME, b"u"))
    data = stun.encode(message, key=b"k", fingerprint=False)
    # Append a PRIORITY after MESSAGE-INTEGRITY (a man in the middle could), then a FINGERPRINT.
    extra = struct.pack("!HH", Attr.PRIORITY, 4) + b"\x00\x00\x00\x01"
    tampered = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:] + extra
    decoded = stun.decode(tampered)
    assert decoded.priority() is None and decoded.username() == "u"
    assert stun.verify_integrity(tampered, b"k")
    with_fp = stun.encode(decoded, key=b"k")
    assert [k for k, _ in stun.decode(with_fp).attributes] == [Attr.USERNAME, Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT]


def test_no_integrity_is_not_verified() -> None:
    data = stun.encode(stun.request(Method.BINDING, bytes(12)))
    assert not stun.verify_integrity(data, b"k")
    assert not stun.verify_integrity(b"junk", b"k")
    assert stun.verify_fingerprint(b"junk") is False
    assert stun.verify_fingerprint(stun.encode(stun.request(Method.BINDING, bytes(12)), fingerprint=False)) is None


# --- malformed input --------------------------------------------------------------------


VALID = stun.encode(stun.request(Method.BINDING, bytes(12), (Attr.USERNAME, b"abcde")))


@pytest.mark.parametrize(("data", "why"), [
    (VALID[:19], "shorter"),
    (b"\x80" + VALID[1:], "top two bits"),
    (VALID[:4] + b"\x21\x12\xa4\x43" + VALID[8:], "cookie"),
    (VALID[:2] + struct.pack("!H", len(VALID) - 20 + 4) + VALID[4:], "does not match"),
    (VALID[:2] + struct.pack("!H", len(VALID) - 20 - 2) + VALID[4:-2], "multiple of 4"),
    (b"\x00\x01\x00\x08\x21\x12\xa4\x42" + bytes(12) + b"\x00\x06\x00\x08abcd", "overruns"),
    (b"\x00\x01\x00\x04\x21\x12\xa4\x42" + bytes(12) + b"\x00\x06\x00\x01", "overruns"),
])
def test_decode_rejects_malformed(data: bytes, why: str) -> None:
    with pytest.raises(StunError, match=why):
        stun.decode(data)


def test_is_stun_is_the_cheap_demultiplexer() -> None:
    assert stun.is_stun(VALID)
    assert not stun.is_stun(VALID[:19])
    assert not stun.is_stun(b"\x40" + VALID[1:])
    assert not stun.is_stun(b"\x01\x00\x00\x00" + bytes(28))  # a WireGuard initiation's start


def test_channel_data_framing() -> None:
    frame = stun.encode_channel_data(0x4000, b"abc")
    assert frame == b"\x40\x00\x00\x03abc" and stun.is_channel_data(frame) and not stun.is_stun(frame)
    assert stun.decode_channel_data(frame) == (0x4000, b"abc")
    assert stun.decode_channel_data(frame + b"\x00") == (0x4000, b"abc")  # padded to 4 (TCP style)
    assert stun.decode_channel_data(stun.encode_channel_data(0x4FFF, b"")) == (0x4FFF, b"")
    for bad in (b"\x40\x00\x00", b"\x40\x00\x00\x05abc", frame + b"\x00" * 4, b"\x50\x00\x00\x00"):
        with pytest.raises(StunError):
            stun.decode_channel_data(bad)
    with pytest.raises(StunError):
        stun.encode_channel_data(0x3FFF, b"")
    with pytest.raises(StunError):
        stun.encode_channel_data(0x4000, bytes(65536))
    assert not stun.is_channel_data(b"\x40\x00\x00")
    assert not stun.is_channel_data(b"\x04\x00\x00\x00")


# --- properties -------------------------------------------------------------------------

_COMPUTED = {Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT}
attribute = st.tuples(st.integers(0, 0xFFFF).filter(lambda k: k not in _COMPUTED), st.binary(max_size=64))
messages = st.builds(
    stun.Message, st.sampled_from(Class), st.integers(0, 0xFFF), st.binary(min_size=12, max_size=12),
    st.lists(attribute, max_size=8).map(tuple))


@given(messages, st.booleans())
def test_encode_then_decode_is_identity(message: stun.Message, fingerprint: bool) -> None:
    data = stun.encode(message, fingerprint=fingerprint)
    assert len(data) % 4 == 0 and stun.is_stun(data)
    decoded = stun.decode(data)
    if fingerprint:
        assert decoded.attributes[-1][0] == Attr.FINGERPRINT and stun.verify_fingerprint(data) is True
        decoded = stun.Message(decoded.cls, decoded.method, decoded.transaction_id, decoded.attributes[:-1])
    assert decoded == message
    assert stun.encode(decoded, fingerprint=fingerprint) == data


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_decode_raises_only_stun_error(data: bytes) -> None:
    try:
        stun.decode(data)
    except StunError:
        pass
    stun.verify_integrity(data, b"k")
    stun.verify_fingerprint(data)
    try:
        stun.decode_channel_data(data)
    except StunError:
        pass


@given(st.lists(attribute, max_size=4).map(tuple), st.binary(min_size=12, max_size=12))
def test_decode_raises_only_stun_error_on_near_stun(attrs: tuple[tuple[int, bytes], ...], tid: bytes) -> None:
    data = stun.encode(stun.Message(Class.REQUEST, 1, tid, attrs))
    for cut in range(20, len(data), 3):
        with pytest.raises(StunError):
            stun.decode(data[:cut] + data[cut + 1:])


@given(messages, st.booleans(), st.data())
def test_integrity_fails_on_any_single_bit_flip(message: stun.Message, sha256: bool, data: st.DataObject) -> None:
    key = b"a long-term key!"
    encoded = stun.encode(message, key=key, sha256=sha256, fingerprint=False)
    assert stun.verify_integrity(encoded, key)
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1))
    flipped = bytearray(encoded)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert not stun.verify_integrity(bytes(flipped), key)
