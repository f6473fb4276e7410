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

_from_bytes = int.from_bytes


def fold(total: int) -> int:
    """Reduce a sum to a ones' complement 16-bit value (0 is represented as 0xFFFF)."""
    s = total % 0xFFFF
    return 0xFFFF if s == 0 and total != 0 else s


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 checksum of `data`, with `initial` (e.g. a pseudo-header sum) added in."""
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    s = fold(_from_bytes(data, "big") + initial)
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
