"""tunnel/checksum.py against an independent, naive implementation (a loop over 16-bit words)."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_pkg.tunnel.checksum import (
    adjust,
    adjust_delta,
    adjust_u16,
    fold,
    internet_checksum,
    pseudo_header_sum,
)


def naive_sum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 end-around-carry sum of big-endian 16-bit words, odd length padded with zero."""
    data = bytes(data)
    if len(data) % 2:
        data += b"\x00"
    total = initial
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def naive_checksum(data: bytes, initial: int = 0) -> int:
    return ~naive_sum(data, initial) & 0xFFFF


def naive_pseudo(src: bytes, dst: bytes, protocol: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, protocol, length)
    return src + dst + struct.pack("!IxxxB", length, protocol)


def same(a: int, b: int) -> bool:
    """Equal as ones' complement numbers: 0x0000 and 0xFFFF are both zero."""
    return a == b or {a, b} == {0, 0xFFFF}


def verifies(data: bytes, initial: int = 0) -> bool:
    return naive_sum(data, initial) == 0xFFFF


@given(st.binary(max_size=600))
def test_internet_checksum_matches_the_naive_loop(data):
    assert same(internet_checksum(data), naive_checksum(data))


@given(st.binary(max_size=300), st.integers(0, 2**40))
def test_initial_is_added_in(data, initial):
    assert same(internet_checksum(data, initial), naive_checksum(data, initial))


@given(st.binary(min_size=1, max_size=300))
def test_memoryview_and_bytearray_give_the_same_checksum(data):
    assert internet_checksum(memoryview(data)) == internet_checksum(bytearray(data)) == internet_checksum(data)


@given(st.binary(min_size=2, max_size=300).filter(lambda d: any(d)))
def test_writing_the_checksum_makes_the_data_verify(data):
    buf = bytearray(data + b"\x00\x00" if len(data) % 2 == 0 else data + b"\x00\x00\x00")
    at = len(buf) - 2
    struct.pack_into("!H", buf, at, internet_checksum(buf))
    assert verifies(bytes(buf))
    assert internet_checksum(buf) == 0


def test_known_values():
    # RFC 1071 section 3 example: 0001 f203 f4f5 f6f7 sums to ddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert naive_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0xFFFF - 0xDDF2
    # A real IPv4 header (checksum 0xb861).
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(b"\xff\xff") == 0


@given(st.integers(0, 2**64))
def test_fold_is_the_end_around_carry(total):
    naive = total
    while naive >> 16:
        naive = (naive & 0xFFFF) + (naive >> 16)
    assert fold(total) == naive  # both 1..0xFFFF for a non-zero sum, 0 only for zero


@given(st.sampled_from([4, 16]).flatmap(lambda n: st.tuples(st.binary(min_size=n, max_size=n),
                                                            st.binary(min_size=n, max_size=n))),
       st.sampled_from([6, 17, 58]), st.integers(0, 0xFFFF), st.binary(max_size=200))
def test_pseudo_header_sum_equals_summing_the_pseudo_header(addresses, protocol, length, segment):
    src, dst = addresses
    pseudo = naive_pseudo(src, dst, protocol, length)
    assert fold(pseudo_header_sum(src, dst, protocol, length)) == naive_sum(pseudo)
    assert same(internet_checksum(segment, pseudo_header_sum(src, dst, protocol, length)),
                naive_checksum(pseudo + segment))


def _valid_header(header: bytearray) -> bytearray:
    header[10:12] = b"\x00\x00"
    struct.pack_into("!H", header, 10, naive_checksum(bytes(header)))
    return header


@given(st.binary(min_size=20, max_size=20).map(bytearray), st.sampled_from([0, 4, 12, 16]),
       st.binary(min_size=4, max_size=4))
def test_adjust_equals_recompute(header, at, new):
    """RFC 1624: the incremental update gives the checksum a full recomputation gives."""
    header = _valid_header(header)
    old = bytes(header[at : at + 4])
    (csum,) = struct.unpack_from("!H", header, 10)
    header[at : at + 4] = new
    adjusted = adjust(csum, old, new)
    assert same(adjusted, naive_checksum(bytes(header[:10] + b"\x00\x00" + header[12:])))
    header[10:12] = struct.pack("!H", adjusted)
    assert verifies(bytes(header))


@given(st.binary(min_size=20, max_size=20).map(bytearray), st.sampled_from([0, 2, 4, 6, 8, 12, 14, 16, 18]),
       st.integers(0, 0xFFFF))
def test_adjust_u16_equals_recompute(header, at, new):
    header = _valid_header(header)
    (old,) = struct.unpack_from("!H", header, at)
    (csum,) = struct.unpack_from("!H", header, 10)
    struct.pack_into("!H", header, at, new)
    adjusted = adjust_u16(csum, old, new)
    assert same(adjusted, naive_checksum(bytes(header[:10] + b"\x00\x00" + header[12:])))


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_adjust_u16_matches_the_bytes_form(csum, old, new):
    assert adjust_u16(csum, old, new) == adjust(csum, old.to_bytes(2, "big"), new.to_bytes(2, "big"))


@given(st.integers(0, 0xFFFF), st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_adjust_delta_is_adjust_with_the_difference(csum, old, new):
    delta = int.from_bytes(new, "big") - int.from_bytes(old, "big")
    assert adjust_delta(csum, delta) == adjust(csum, old, new)


@given(st.binary(min_size=40, max_size=40).map(bytearray), st.binary(min_size=16, max_size=16))
def test_adjust_delta_keeps_a_pseudo_header_checksum_valid(segment, new_src):
    """The NAT's use: an address in the pseudo-header changes, the L4 checksum follows."""
    src, dst = bytes(16), bytes(range(16))
    segment[16:18] = b"\x00\x00"
    struct.pack_into("!H", segment, 16, naive_checksum(naive_pseudo(src, dst, 6, 40) + bytes(segment)))
    (csum,) = struct.unpack_from("!H", segment, 16)
    delta = int.from_bytes(new_src, "big") - int.from_bytes(src, "big")
    struct.pack_into("!H", segment, 16, adjust_delta(csum, delta))
    assert verifies(naive_pseudo(new_src, dst, 6, 40) + bytes(segment))


@pytest.mark.parametrize("csum", [0x0000, 0xFFFF, 0x1234])
def test_adjust_without_change_keeps_the_value(csum):
    assert same(adjust(csum, b"\x12\x34", b"\x12\x34"), csum)
    assert same(adjust_u16(csum, 7, 7), csum)
    assert same(adjust_delta(csum, 0), csum)
