"""The Internet checksum (RFC 1071) and its incremental update (RFC 1624): the one copy.

Every checksum the gateway computes or patches goes through here: the IP builders and the
policy's ICMP errors (`packet`, `icmp`), the DNS-resource NAT's rewrites (`nat`) and the TUN
offloads' segmentation and coalescing (`offload`).

The technique: the ones' complement sum of big-endian 16-bit words equals the big-endian
integer of the data modulo 0xFFFF (2**16 == 1 mod 0xFFFF), which CPython computes in C, far
faster than a Python loop over words. Sums are plain ints until `fold` reduces them, so
pieces (a pseudo-header, a header, a payload) can be summed separately and added; a piece
that starts at an odd offset of the checksummed data must be shifted by 8 bits first.

Public API:
- `fold(total)`: a sum reduced to a 16-bit ones' complement value (0 only for a zero sum,
  else 1..0xFFFF);
- `ones_sum(data, initial=0)`: `fold` of the big-endian integer of `data` (odd length padded
  with a zero byte) plus `initial`: the one entry point of the per-packet sums. It is the
  C function of the optional extension `gateway_pkg._native` when that is built and
  selected, else `py_ones_sum` (the reference; the two are held equal by
  tests/unit/tunnel/test_native.py). Call it as `checksum.ones_sum(...)`, never bind it
  with `from ... import`: `select_native` rebinds it once at start;
- `select_native(mode)`: FIREZONE_NATIVE (auto: the C function if the module imports; off:
  pure Python), called by the wiring root; returns the "Packet path" description;
- `internet_checksum(data, initial=0)`: the checksum field value for `data` (odd length
  padded with a zero byte), with `initial` (e.g. a pseudo-header sum) added in; 0 when the
  data (checksum field included) already verifies;
- `pseudo_header_sum(src, dst, protocol, length)`: the unfolded TCP/UDP/ICMPv6
  pseudo-header sum, IPv4 or IPv6 by the address length;
- `adjust(checksum, old, new)`: RFC 1624 eqn. 3, the checksum after 16-bit-aligned bytes
  `old` became `new`; `adjust_u16(checksum, old, new)` for one 16-bit field;
  `adjust_delta(checksum, delta)` with the change already summed (new - old as integers).
"""

from __future__ import annotations

from types import ModuleType
from typing import Protocol

_from_bytes = int.from_bytes

try:
    from gateway_pkg import _native as _native_module
except ImportError:  # not built (no C compiler at install, or FIREZONE_BUILD_NATIVE=0)
    native: ModuleType | None = None
else:
    native = _native_module


def fold(total: int) -> int:
    """Reduce a sum to a ones' complement 16-bit value (0 is represented as 0xFFFF)."""
    s = total % 0xFFFF
    return 0xFFFF if s == 0 and total != 0 else s


def py_ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """fold(int.from_bytes(data padded to even length, "big") + initial), in Python: the big
    integer is reduced before it is shifted (padding) or added to, which would copy it."""
    whole = _from_bytes(data, "big")
    s = whole % 0xFFFF
    if len(data) & 1:
        s <<= 8  # as if padded with a zero byte
    total = s + initial
    r = total % 0xFFFF
    if r:
        return r
    # A multiple of 0xFFFF: 0 only for a zero total (fold's edge case), exactly.
    if initial >= 0:
        return 0xFFFF if whole or initial else 0
    return 0xFFFF if (whole << 8 if len(data) & 1 else whole) + initial else 0


class OnesSum(Protocol):
    def __call__(self, data: bytes | bytearray | memoryview, initial: int = 0, /) -> int: ...


ones_sum: OnesSum = py_ones_sum
native_active = False  # whether ones_sum is the C function
selected = "pure Python"  # what runs, as the start log's "Packet path" line says it


def select_native(mode: str) -> str:
    """FIREZONE_NATIVE: "auto" uses the C ones_sum when gateway_pkg._native imports, "off"
    the pure-Python one. Once, at start (the wiring root); returns what runs, for the log."""
    global ones_sum, native_active, selected
    if mode != "off" and native is not None:
        ones_sum, native_active = native.ones_sum, True
        selected = "native checksums (gateway_pkg._native)"
    else:
        ones_sum, native_active = py_ones_sum, False
        selected = "pure Python (FIREZONE_NATIVE=off)" if mode == "off" else "pure Python (native module not built)"
    return selected


select_native("auto")  # the default until the wiring root selects


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 checksum of `data` (odd length padded with a zero byte), with `initial` (e.g.
    a pseudo-header sum) added in."""
    s = ones_sum(data, initial)
    return 0xFFFF - s if s else 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """The (unfolded) sum of the TCP/UDP/ICMPv6 pseudo-header for IPv4 or IPv6."""
    return _from_bytes(src, "big") + _from_bytes(dst, "big") + protocol + length


def adjust(checksum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3: the checksum after 16-bit-aligned bytes `old` became `new`."""
    s = fold((0xFFFF - checksum) - _from_bytes(old, "big") + _from_bytes(new, "big"))
    return 0xFFFF - s


def adjust_u16(checksum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3 for one 16-bit field (a port or an ICMP identifier)."""
    s = fold((0xFFFF - checksum) - old + new)
    return 0xFFFF - s


def adjust_delta(checksum: int, delta: int) -> int:
    """RFC 1624 eqn. 3 with the change given as (new - old) summed as integers: one
    difference serves every checksum that covers the changed bytes."""
    s = fold(0xFFFF - checksum + delta)
    return 0xFFFF - s
