"""gateway_pkg._native: the C ones_sum equals the pure-Python formula, and every checksum
function gives the same result on either path.

The reference is written out here, independent of both: fold() of the big-endian integer of
the data padded to an even length, plus `initial`. The native-specific tests skip when the
extension is not built, unless FIREZONE_REQUIRE_NATIVE is set (CI: .ci/run), which turns a
missing module into a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_pkg.tunnel import checksum, icmp, offload, packet
from gateway_pkg.tunnel.checksum import fold, py_ones_sum
from gateway_pkg.tunnel.offload import GSO_NONE, NEEDS_CSUM
from tests.unit.tunnel.test_checksum import naive_sum
from tests.unit.tunnel.test_offload import ACK, CWR, FIN, PSH, flow, gso_read, tcp, udp, vnet

REQUIRE = os.environ.get("FIREZONE_REQUIRE_NATIVE", "").strip() not in ("", "0")


def reference(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    raw = bytes(data)
    if len(raw) % 2:
        raw += b"\x00"
    return fold(int.from_bytes(raw, "big") + initial)


@pytest.fixture
def native_sum():
    """The C function; skips (fails with FIREZONE_REQUIRE_NATIVE) when the module is not built."""
    if checksum.native is None:
        if REQUIRE:
            pytest.fail("FIREZONE_REQUIRE_NATIVE is set but gateway_pkg._native is not built "
                        "(a C compiler and the Python headers at install: docs/dataplane.md#the-native-checksum)")
        pytest.skip("gateway_pkg._native is not built")
    return checksum.native.ones_sum


@pytest.fixture
def restore_selection() -> Iterator[None]:
    before = checksum.native_active
    yield
    checksum.select_native("auto" if before else "off")


# native_sum is a plain function-scoped fixture with nothing to reset between examples.
SUMS = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
initials = st.one_of(
    st.just(0),
    st.integers(0, 0x3FFFF),
    st.integers(0, 2**63 - 1),  # the C fast path's range
    st.integers(2**63 - 0x20000, 2**64 + 0x20000),  # either side of its edge
    st.integers(-(2**70), 2**300),  # negative and huge: the exact slow route
    st.integers(-0x3FFFF, 0).map(lambda i: i * 0xFFFF),  # multiples of 0xFFFF: the 0 vs 0xFFFF edge
)


# --- the pure-Python formula (always) -------------------------------------------------------------


@SUMS
@given(st.binary(max_size=3000), initials)
def test_python_ones_sum_is_the_reference(data, initial):
    assert py_ones_sum(data, initial) == reference(data, initial)
    if initial >= 0:
        assert fold(naive_sum(data, initial)) == reference(data, initial) or reference(data, initial) == 0


# --- the C function -------------------------------------------------------------------------------


@SUMS
@given(st.binary(max_size=3000), initials, st.integers(0, 40), st.integers(0, 40))
def test_native_is_the_reference_at_every_alignment(native_sum, data, initial, start, trim):
    assert native_sum(data, initial) == reference(data, initial)
    assert native_sum(data) == reference(data)
    buf = bytearray(data)
    view = memoryview(buf)[start : max(start, len(buf) - trim)]
    assert native_sum(view, initial) == reference(view, initial)
    assert native_sum(bytes(view), initial=initial) == reference(view, initial)


def test_native_is_the_reference_on_every_slice(native_sum):
    """Every (start, end) of 200 bytes: each start and end alignment, each odd and even length."""
    data = bytes((i * 151 + 7) % 256 for i in range(200))
    view = memoryview(data)
    for start in range(len(data) + 1):
        for end in range(start, len(data) + 1):
            assert native_sum(view[start:end]) == reference(view[start:end]), (start, end)


@pytest.mark.parametrize("length", [*range(0, 70), 1279, 1280, 1500, 3000, 65535, 65536])
def test_native_edge_cases(native_sum, length):
    zeros, ones = bytes(length), b"\xff" * length
    assert native_sum(zeros) == reference(zeros) == 0
    assert native_sum(zeros, 0xFFFF) == 0xFFFF
    assert native_sum(ones) == reference(ones)
    if length:
        assert native_sum(ones) == (0xFFFF if length % 2 == 0 else 0xFF00)
    for initial in (1, 0xFFFE, 0xFFFF, 0x10000, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1, -0xFFFF, -(2**64)):
        assert native_sum(zeros, initial) == reference(zeros, initial), initial
        assert native_sum(ones, initial) == reference(ones, initial), initial


def test_native_exact_zero_with_negative_initial(native_sum):
    # The total is exactly 0 (-> 0) or only a multiple of 0xFFFF (-> 0xFFFF).
    assert native_sum(b"\xff\xff", -0xFFFF) == reference(b"\xff\xff", -0xFFFF) == 0
    assert native_sum(b"\x01", -0x100) == reference(b"\x01", -0x100) == 0
    assert native_sum(b"\x01", -0x100 + 0xFFFF) == 0xFFFF
    assert native_sum(b"\x00\x01", -1) == 0
    assert native_sum(b"\x00\x01" * 0xFFFF, -0xFFFF) == reference(b"\x00\x01" * 0xFFFF, -0xFFFF) == 0xFFFF
    assert native_sum(b"\x00\x01" * 0xFFFF, 0) == 0xFFFF
    assert native_sum(b"", 0) == 0 and native_sum(b"", 0xFFFF * 5) == 0xFFFF and native_sum(b"", -0xFFFF) == 0xFFFF


def test_native_takes_what_int_from_bytes_takes(native_sum):
    data = bytes(range(256)) * 3
    for value in (data, bytearray(data), memoryview(data), memoryview(data)[1:], memoryview(data)[::3],
                  list(data[:9]), memoryview(bytearray(data)).cast("H")):
        assert native_sum(value) == reference(value), type(value)
    with pytest.raises(TypeError):
        native_sum("text")
    with pytest.raises(TypeError):
        native_sum(b"", 1.0)
    with pytest.raises(TypeError):
        native_sum()
    with pytest.raises(TypeError):
        native_sum(b"", 0, 0)
    with pytest.raises(TypeError):
        native_sum(b"", bogus=1)
    with pytest.raises(TypeError):
        native_sum(b"", 0, initial=1)
    assert native_sum(data=b"\x01") == 0x100


def test_selection(native_sum, restore_selection):
    assert checksum.select_native("off") == "pure Python (FIREZONE_NATIVE=off)"
    assert checksum.ones_sum is py_ones_sum and not checksum.native_active
    assert checksum.select_native("auto") == "native checksums (gateway_pkg._native)"
    assert checksum.ones_sum is native_sum and checksum.native_active
    assert checksum.selected == "native checksums (gateway_pkg._native)"


def test_selection_without_the_module(monkeypatch, restore_selection):
    monkeypatch.setattr(checksum, "native", None)
    assert checksum.select_native("auto") == "pure Python (native module not built)"
    assert checksum.ones_sum is py_ones_sum


# --- every checksum function, native on and off ----------------------------------------------------


def both(function, *args, **kwargs):
    """`function(...)` with the pure-Python sums, then with the native ones (when built)."""
    before = checksum.native_active
    try:
        checksum.select_native("off")
        pure = function(*args, **kwargs)
        if checksum.native is None:
            return pure, pure
        checksum.select_native("auto")
        return pure, function(*args, **kwargs)
    finally:
        checksum.select_native("auto" if before else "off")


BUILDS = settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)


@BUILDS
@given(st.binary(max_size=2000), st.integers(0, 2**130))
def test_internet_checksum_same_on_both_paths(data, initial):
    pure, fast = both(checksum.internet_checksum, data, initial)
    assert pure == fast


@BUILDS
@given(st.sampled_from([6, 17]), st.sampled_from([4, 6]), st.integers(1, 12_000), st.integers(1, 1400),
       st.sampled_from([ACK, ACK | PSH, ACK | FIN | PSH, ACK | CWR]))
def test_split_read_same_on_both_paths(protocol, version, length, gso_size, flags):
    payload = bytes((i * 37 + length) % 256 for i in range(length))
    fields = {"flags": flags} if protocol == 6 else {}
    read = gso_read(protocol, version, payload, max(gso_size, -(-length // 200)), **fields)
    pure, fast = both(offload.split_read, read)
    assert pure == fast and len(pure) >= 1


@BUILDS
@given(st.sampled_from([4, 6]), st.integers(0, 1400), st.integers(0, 1500))
def test_needs_csum_completion_same_on_both_paths(version, length, start):
    pkt = udp(version, bytes((i * 13) % 256 for i in range(length)))
    start = min(start, len(pkt) - 2)  # csum_start anywhere, odd or even, csum_offset 0
    read = vnet(NEEDS_CSUM, GSO_NONE, 0, 0, start, 0) + pkt
    pure, fast = both(offload.split_read, read)
    assert pure == fast


@BUILDS
@given(st.sampled_from([4, 6]), st.integers(1, 44), st.integers(1, 1220), st.booleans(), st.booleans())
def test_coalesce_same_on_both_paths(version, count, last, corrupt, with_udp):
    packets = flow(count, version, last=last)
    if with_udp:
        packets += [udp(version, bytes([i]) * 700, ident=i) for i in range(5)] + [udp(version, b"odd")]
    if corrupt and count > 2:
        bad = bytearray(packets[count // 2])
        bad[-1] ^= 0x40
        packets[count // 2] = bytes(bad)
    pure, fast = both(offload.coalesce, packets, udp=True)
    assert pure == fast


def test_ip_builders_and_icmp_errors_same_on_both_paths():
    """The other checksum users (IP headers, ICMP errors; the NAT's full recomputations) call
    internet_checksum: the same bytes on either path."""
    for version in (4, 6):
        for size in (0, 1, 333, 1200):
            original = tcp(version, b"y" * size, flags=ACK | PSH)
            pure, fast = both(icmp.unreachable, original)
            assert pure == fast and pure is not None
    for size in (0, 1, 101, 1400):
        pure, fast = both(packet.build_ipv4, b"\x64\x40\x00\x02", b"\x0a\x00\x00\x01", 17, b"q" * size)
        assert pure == fast
