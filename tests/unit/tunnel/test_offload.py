"""tunnel/offload.py: virtio_net_hdr reads split into packets, batches coalesced into GRO writes.

Super-packets are built here the way the kernel hands them to a TUN with IFF_VNET_HDR (one
IP header whose length covers everything, the TCP/UDP checksum field holding the pseudo-
header sum of the whole, NEEDS_CSUM, csum_start at the transport header), independently of
the module; every checksum is checked with the naive word loop of test_checksum.py.

The builders at the top (`tcp`, `udp`, `gso_read`, `segments_of`) also make the seed corpus
of the `tun_offload` fuzz target (fuzz/seed.py).
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_pkg.tunnel.offload import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NEEDS_CSUM,
    NO_OFFLOAD,
    VNET_HDR_LEN,
    OffloadError,
    coalesce,
    split_read,
)
from tests.unit.tunnel.test_checksum import naive_checksum, naive_pseudo, naive_sum

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
SRC = {4: ipaddress.ip_address("100.64.0.2").packed, 6: ipaddress.ip_address("fd00:2021:1111::2").packed}
DST = {4: ipaddress.ip_address("10.1.2.3").packed, 6: ipaddress.ip_address("2001:db8::5").packed}
MSS = {4: 1240, 6: 1220}  # the payload of a full 1280-byte packet without TCP options

# --- builders (independent of the module under test) --------------------------------------------


def ip(version: int, protocol: int, l4: bytes, *, src: bytes | None = None, dst: bytes | None = None,
       ident: int = 0, df: bool = False, tos: int = 0, ttl: int = 64, options: bytes = b"",
       flow: int = 0, length: int | None = None, next_header: int | None = None) -> bytes:
    """An IPv4 (header checksum filled in) or IPv6 header in front of `l4`."""
    src = src or SRC[version]
    dst = dst or DST[version]
    if version == 4:
        ihl = 20 + len(options)
        total = ihl + len(l4) if length is None else length
        header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl // 4, tos, total, ident & 0xFFFF,
                                       0x4000 if df else 0, ttl, protocol, 0, src, dst) + options)
        struct.pack_into("!H", header, 10, naive_checksum(bytes(header)))
        return bytes(header) + l4
    plen = len(l4) if length is None else length
    first = 6 << 28 | tos << 20 | flow
    nh = protocol if next_header is None else next_header
    return struct.pack("!IHBB16s16s", first, plen, nh, ttl, src, dst) + l4


def l4_checksum(version: int, protocol: int, l4: bytes, src: bytes | None = None, dst: bytes | None = None) -> int:
    return naive_checksum(naive_pseudo(src or SRC[version], dst or DST[version], protocol, len(l4)) + l4)


def tcp_header(*, sport: int = 40000, dport: int = 443, seq: int = 1000, ack: int = 77, flags: int = ACK,
               window: int = 502, urgent: int = 0, options: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, (20 + len(options)) // 4 << 4, flags,
                       window, 0, urgent) + options


def tcp(version: int = 4, payload: bytes = b"x" * 100, *, checksum: int | None = None,
        src: bytes | None = None, dst: bytes | None = None, **fields: object) -> bytes:
    """A TCP packet with correct checksums. TCP header fields and IP fields (see `ip`) by name."""
    header_fields = {k: fields.pop(k) for k in list(fields) if k in
                     ("sport", "dport", "seq", "ack", "flags", "window", "urgent", "options")}
    ip_options = fields.pop("ip_options", b"")
    segment = bytearray(tcp_header(**header_fields) + payload)  # type: ignore[arg-type]
    csum = l4_checksum(version, 6, bytes(segment), src, dst) if checksum is None else checksum
    struct.pack_into("!H", segment, 16, csum)
    return ip(version, 6, bytes(segment), src=src, dst=dst, options=ip_options, **fields)  # type: ignore[arg-type]


def udp(version: int = 4, payload: bytes = b"u" * 100, *, sport: int = 5000, dport: int = 4500,
        checksum: int | None = None, src: bytes | None = None, dst: bytes | None = None, **fields: object) -> bytes:
    segment = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)
    if checksum is None:
        checksum = l4_checksum(version, 17, bytes(segment), src, dst) or 0xFFFF
    struct.pack_into("!H", segment, 6, checksum)
    return ip(version, 17, bytes(segment), src=src, dst=dst, **fields)  # type: ignore[arg-type]


def vnet(flags: int, gso_type: int, hdr_len: int, gso_size: int, csum_start: int, csum_offset: int) -> bytes:
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def gso_read(protocol: int, version: int, payload: bytes, gso_size: int, *, ecn: bool = False,
             hdr_len: int | None = None, vnet_flags: int = NEEDS_CSUM, **fields: object) -> bytes:
    """A TSO/USO read as the kernel hands it over: one packet carrying all of `payload`, its
    L4 checksum field holding the (folded, not complemented) pseudo-header sum of the whole."""
    packet = bytearray(tcp(version, payload, **fields) if protocol == 6 else udp(version, payload, **fields))
    ihl = (packet[0] & 0x0F) * 4 if version == 4 else 40
    thl = (packet[ihl + 12] >> 4) * 4 if protocol == 6 else 8
    offset = 16 if protocol == 6 else 6
    src, dst = (bytes(packet[12:16]), bytes(packet[16:20])) if version == 4 else (bytes(packet[8:24]),
                                                                                  bytes(packet[24:40]))
    struct.pack_into("!H", packet, ihl + offset, _fold(naive_sum(naive_pseudo(src, dst, protocol,
                                                                              len(packet) - ihl))))
    gso_type = (GSO_TCPV4 if version == 4 else GSO_TCPV6) if protocol == 6 else GSO_UDP_L4
    if ecn:
        gso_type |= GSO_ECN
    header = vnet(vnet_flags, gso_type, ihl + thl if hdr_len is None else hdr_len, gso_size, ihl, offset)
    return header + bytes(packet)


def segments_of(protocol: int, version: int, payload: bytes, gso_size: int, *, seq: int = 1000,
                flags: int = ACK, ident: int = 0, **fields: object) -> list[bytes]:
    """What the kernel's GSO makes of `gso_read(...)` with the same arguments, built packet by
    packet: IDs +1, sequence numbers advanced, FIN/PSH on the last only, CWR on the first."""
    chunks = [payload[i : i + gso_size] for i in range(0, len(payload), gso_size)]
    out = []
    for i, chunk in enumerate(chunks):
        if protocol == 6:
            f = flags
            if i < len(chunks) - 1:
                f &= ~(FIN | PSH)
            if i > 0:
                f &= ~CWR
            out.append(tcp(version, chunk, seq=seq + i * gso_size, flags=f, ident=ident + i, **fields))
        else:
            out.append(udp(version, chunk, ident=ident + i, **fields))
    return out


def flow(count: int, version: int = 4, size: int | None = None, *, seq: int = 1000, ident: int = 100,
         last: int | None = None, **fields: object) -> list[bytes]:
    """`count` in-order full-size segments of one TCP flow (the last `last` bytes long)."""
    size = size or MSS[version]
    out = []
    for i in range(count):
        length = last if (last is not None and i == count - 1) else size
        out.append(tcp(version, bytes([i % 256]) * length, seq=seq + i * size, ident=ident + i, **fields))
    return out


# --- checks ---------------------------------------------------------------------------------------


def header_of(write: bytes) -> tuple[int, int, int, int, int, int]:
    return struct.unpack_from("<BBHHHH", write)


def checksums_verify(packet: bytes) -> bool:
    """IPv4 header and TCP/UDP checksums, with the naive loop."""
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if naive_sum(packet[:ihl]) != 0xFFFF:
            return False
        protocol, src, dst = packet[9], packet[12:16], packet[16:20]
    else:
        ihl, protocol, src, dst = 40, packet[6], packet[8:24], packet[24:40]
    l4 = packet[ihl:]
    if protocol == 17 and l4[6:8] == b"\x00\x00":
        return False
    return naive_sum(naive_pseudo(src, dst, protocol, len(l4)) + l4) == 0xFFFF


def unwrap(writes: list[bytes]) -> list[bytes]:
    """The packets the kernel gets from these writes: super-packets segmented (by split_read,
    which is checked against the kernel's rules above), the rest as written."""
    out = []
    for write in writes:
        assert len(write) >= VNET_HDR_LEN
        if write[:VNET_HDR_LEN] == NO_OFFLOAD:
            out.append(write[VNET_HDR_LEN:])
        else:
            out.extend(split_read(write))
    return out


def kinds(writes: list[bytes]) -> list[int]:
    """Segments per write: 0 for a plain packet."""
    return [0 if w[:VNET_HDR_LEN] == NO_OFFLOAD else len(split_read(w)) for w in writes]


# --- split_read: reads that are one packet --------------------------------------------------------


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_a_plain_read_is_the_packet(kind):
    packet = tcp(4, b"hello")
    out = split_read(kind(NO_OFFLOAD + packet))
    assert out == [packet] and type(out[0]) is bytes


def test_a_plain_read_is_not_checked():
    """GSO_NONE without NEEDS_CSUM: the kernel vouches for it (or the policy drops it)."""
    assert split_read(NO_OFFLOAD + b"\x45garbage") == [b"\x45garbage"]
    flags_data_valid = vnet(2, GSO_NONE, 0, 0, 0, 0)  # VIRTIO_NET_HDR_F_DATA_VALID: nothing to do
    assert split_read(flags_data_valid + b"\x60abc") == [b"\x60abc"]


def _zero_as_ffff(packet: bytes, at: int) -> bytes:
    """A checksum field of 0 written as 0xFFFF (the same ones' complement number)."""
    return packet[:at] + b"\xff\xff" + packet[at + 2 :] if packet[at : at + 2] == b"\x00\x00" else packet


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("protocol", [6, 17])
@pytest.mark.parametrize("length", [0, 1, 2, 101, 1200])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_needs_csum_completes_the_checksum(version, protocol, length, kind):
    """GSO_NONE + NEEDS_CSUM (the kernel's CHECKSUM_PARTIAL): the field holds the pseudo-
    header sum; the packet comes out as if its sender had computed the checksum in full."""
    payload = bytes((i * 7) % 256 for i in range(length))
    read = gso_read(protocol, version, payload, 1)
    flags, _, _, _, start, offset = header_of(read)
    read = vnet(flags, GSO_NONE, 0, 0, start, offset) + read[VNET_HDR_LEN:]
    [packet] = split_read(kind(read))
    assert checksums_verify(packet)
    expected = tcp(version, payload) if protocol == 6 else udp(version, payload)
    assert packet == _zero_as_ffff(expected, start + offset)


def test_needs_csum_writes_zero_as_ffff():
    """skb_checksum_help: a checksum that comes out 0 is written 0xFFFF (for UDP 0 means none)."""
    payload = bytearray(b"ab" * 20)
    probe = bytearray(udp(4, bytes(payload)))
    csum = struct.unpack_from("!H", probe, 26)[0]
    # Adding the checksum value to one payload word makes the true checksum 0.
    word = struct.unpack_from("!H", payload, 0)[0]
    struct.pack_into("!H", payload, 0, (word + csum) % 0xFFFF)
    read = bytearray(gso_read(17, 4, bytes(payload), 1))
    flags, _, _, _, start, offset = header_of(read)
    read[:VNET_HDR_LEN] = vnet(flags, GSO_NONE, 0, 0, start, offset)
    [packet] = split_read(bytes(read))
    assert packet[26:28] == b"\xff\xff" and checksums_verify(packet)


def test_needs_csum_at_any_offset_sums_to_the_end():
    data = bytes(range(40))
    field_at = 12
    partial = 0x1234
    body = bytearray(data)
    struct.pack_into("!H", body, 10 + field_at, partial)
    read = vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 10, field_at) + bytes(body)
    [packet] = split_read(read)
    # What the field held (the pseudo-header sum, for a real packet) plus the data now verifies.
    assert naive_sum(packet[10:], partial) == 0xFFFF
    assert packet[:10 + field_at] == body[:10 + field_at] and packet[10 + field_at + 2 :] == body[10 + field_at + 2 :]


# --- split_read: super-packets --------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
def test_tso_read_becomes_kernel_segments_field_by_field(version):
    payload = bytes(i % 251 for i in range(10_000))
    read = gso_read(6, version, payload, 1240, seq=0xFFFFF000, flags=ACK | PSH | FIN, ident=0xFFFE, df=False,
                    window=1234, ack=99, options=bytes.fromhex("0101080a0000000100000002"))
    out = split_read(read)
    assert len(out) == 9  # 8 x 1240 + 80
    thl = 32
    ihl = 20 if version == 4 else 40
    for i, segment in enumerate(out):
        chunk = payload[i * 1240 : (i + 1) * 1240]
        assert segment[ihl + thl :] == chunk
        assert checksums_verify(segment)
        if version == 4:
            assert struct.unpack_from("!H", segment, 2)[0] == len(segment)
            assert struct.unpack_from("!H", segment, 4)[0] == (0xFFFE + i) & 0xFFFF
            assert segment[6:10] == read[10 + 6 : 10 + 10]  # flags/fragment, TTL, protocol
            assert segment[12:20] == read[10 + 12 : 10 + 20]
        else:
            assert struct.unpack_from("!H", segment, 4)[0] == len(segment) - 40
            assert segment[:4] == read[10:14] and segment[6:40] == read[16:50]
        sport, dport, seq, ack, offset, flags, window, _csum, urgent = struct.unpack_from("!HHIIBBHHH", segment, ihl)
        assert (sport, dport, ack, offset >> 4, window, urgent) == (40000, 443, 99, 8, 1234, 0)
        assert seq == (0xFFFFF000 + i * 1240) & 0xFFFFFFFF  # wraps
        assert flags == (ACK | PSH | FIN if i == 8 else ACK)
        assert segment[ihl + 20 : ihl + 32] == bytes.fromhex("0101080a0000000100000002")
    assert out == segments_of(6, version, payload, 1240, seq=0xFFFFF000, flags=ACK | PSH | FIN, ident=0xFFFE,
                              window=1234, ack=99, options=bytes.fromhex("0101080a0000000100000002"))


@pytest.mark.parametrize("version", [4, 6])
def test_uso_read_becomes_datagrams_field_by_field(version):
    payload = bytes(i % 253 for i in range(5000))
    out = split_read(gso_read(17, version, payload, 1200, ident=7, df=True))
    assert [len(s) - (28 if version == 4 else 48) for s in out] == [1200, 1200, 1200, 1200, 200]
    ihl = 20 if version == 4 else 40
    for i, datagram in enumerate(out):
        assert checksums_verify(datagram)
        sport, dport, length, _csum = struct.unpack_from("!HHHH", datagram, ihl)
        assert (sport, dport, length) == (5000, 4500, len(datagram) - ihl)
        assert datagram[ihl + 8 :] == payload[i * 1200 : (i + 1) * 1200]
        if version == 4:
            assert struct.unpack_from("!H", datagram, 4)[0] == 7 + i and datagram[6] == 0x40
    assert out == segments_of(17, version, payload, 1200, ident=7, df=True)


def test_uso_writes_a_zero_checksum_as_ffff():
    """In UDP a checksum field of 0 means "none": a segment whose checksum comes out 0 gets 0xFFFF."""
    chunk = bytearray(b"cd" * 50)
    csum = struct.unpack_from("!H", udp(4, bytes(chunk)), 26)[0]
    word = struct.unpack_from("!H", chunk, 0)[0]
    struct.pack_into("!H", chunk, 0, (word + csum) % 0xFFFF)
    payload = bytes(chunk) + b"rest"
    out = split_read(gso_read(17, 4, payload, len(chunk)))
    assert out[0][26:28] == b"\xff\xff" and checksums_verify(out[0])
    assert out == segments_of(17, 4, payload, len(chunk))


def test_cwr_only_on_the_first_segment_and_ecn_gso():
    payload = bytes(3000)
    read = gso_read(6, 4, payload, 1000, flags=ACK | CWR | ECE, ecn=True)
    out = split_read(read)
    assert [s[33] for s in out] == [ACK | CWR | ECE, ACK | ECE, ACK | ECE]
    assert out == segments_of(6, 4, payload, 1000, flags=ACK | CWR | ECE)


def test_hdr_len_is_not_trusted():
    """On the forward path the kernel may set hdr_len to the whole first packet, or leave it 0."""
    payload = bytes(range(200)) * 20
    expected = segments_of(6, 4, payload, 1000)
    for hdr_len in (0, 40, 1040, 4040, 0xFFFF):
        assert split_read(gso_read(6, 4, payload, 1000, hdr_len=hdr_len)) == expected


def test_the_partial_checksum_in_the_field_is_not_needed():
    read = bytearray(gso_read(6, 6, bytes(5000), 1220))
    read[10 + 40 + 16 : 10 + 40 + 18] = b"\xde\xad"
    assert split_read(bytes(read)) == segments_of(6, 6, bytes(5000), 1220)


def test_odd_gso_size_and_one_segment():
    payload = bytes(range(255)) * 4
    assert split_read(gso_read(6, 4, payload, 333)) == segments_of(6, 4, payload, 333)
    assert split_read(gso_read(17, 6, payload, 333)) == segments_of(17, 6, payload, 333)
    [only] = split_read(gso_read(6, 4, payload, 5000, flags=ACK | PSH | FIN | CWR))
    assert only == tcp(4, payload, flags=ACK | PSH | FIN | CWR)


def test_ipv4_options_are_copied_into_every_segment():
    options = bytes.fromhex("94040000")  # router alert
    payload = bytes(3000)
    out = split_read(gso_read(6, 4, payload, 1000, ip_options=options))
    assert out == segments_of(6, 4, payload, 1000, ip_options=options)
    assert all(s[20:24] == options and checksums_verify(s) for s in out)


def _payload_and_gso_size(n: int) -> st.SearchStrategy[tuple[bytes, int]]:
    # At most 150 segments, so that the naive checks stay quick.
    return st.tuples(st.just(bytes((i * 31 + n) % 256 for i in range(n))), st.integers(max(1, -(-n // 150)), 1500))


tso_reads = st.builds(
    dict,
    protocol=st.sampled_from([6, 17]),
    version=st.sampled_from([4, 6]),
    payload_and_gso_size=st.integers(1, 30_000).flatmap(_payload_and_gso_size),
    seq=st.integers(0, 0xFFFFFFFF),
    flags=st.sampled_from([ACK, ACK | PSH, ACK | FIN, ACK | PSH | FIN, ACK | CWR, ACK | ECE | CWR | PSH]),
    ident=st.integers(0, 0xFFFF),
    df=st.booleans(),
    ttl=st.integers(1, 255),
    tos=st.integers(0, 255),
    options=st.sampled_from([b"", bytes.fromhex("0101080a0000000100000002"), bytes.fromhex("020405b4")]),
)
CHECKS = settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)


def _gso_args(case: dict) -> tuple[tuple, dict]:
    case = dict(case)
    protocol, version = case.pop("protocol"), case.pop("version")
    payload, gso_size = case.pop("payload_and_gso_size")
    if protocol == 17:
        for name in ("seq", "flags", "options"):
            case.pop(name)
    if version == 6:
        case.pop("df")
        case.pop("ident")
    return (protocol, version, payload, gso_size), case


@CHECKS
@given(tso_reads)
def test_split_read_is_the_kernels_segmentation(case):
    args, fields = _gso_args(case)
    out = split_read(gso_read(*args, **fields))
    assert out == segments_of(*args, **fields)
    assert all(checksums_verify(s) for s in out)


# --- split_read: refused reads --------------------------------------------------------------------


def _patched(read: bytes, at: int, value: bytes) -> bytes:
    buf = bytearray(read)
    buf[at : at + len(value)] = value
    return bytes(buf)


GOOD4 = gso_read(6, 4, bytes(3000), 1000)
GOOD6 = gso_read(6, 6, bytes(3000), 1000)
UDP4 = gso_read(17, 4, bytes(3000), 1000)


@pytest.mark.parametrize(
    ("read", "why"),
    [
        (b"", "empty"),
        (bytes(9), "short header"),
        (NO_OFFLOAD, "no packet"),
        (_patched(GOOD4, 1, b"\x02"), "unknown gso_type 2"),
        (_patched(GOOD4, 1, b"\x03"), "gso_type 3 (UDP UFO)"),
        (_patched(GOOD4, 1, b"\x80"), "ECN bit alone"),
        (_patched(UDP4, 1, bytes([GSO_UDP_L4 | GSO_ECN])), "ECN with UDP"),
        (_patched(GOOD4, 4, b"\x00\x00"), "gso_size 0"),
        (_patched(GOOD4, 1, bytes([GSO_TCPV6])), "TCPV6 on IPv4"),
        (_patched(GOOD6, 1, bytes([GSO_TCPV4])), "TCPV4 on IPv6"),
        (_patched(GOOD4, 1, bytes([GSO_UDP_L4])), "UDP_L4 on TCP"),
        (_patched(UDP4, 1, bytes([GSO_TCPV4])), "TCPV4 on UDP"),
        (_patched(GOOD4, 6, b"\x00\x00"), "csum_start 0"),
        (_patched(GOOD4, 6, b"\x18\x00"), "csum_start beyond the IP header"),
        (_patched(GOOD4, 6, b"\xff\xff"), "csum_start outside the packet"),
        (_patched(GOOD4, 6, b"\x10\x00"), "csum_start inside the IP header"),
        (_patched(GOOD4, 10, b"\x55"), "version 5"),
        (_patched(GOOD4, 10, b"\x44"), "IHL 4"),
        (_patched(GOOD4, 12, b"\x00\x20"), "IPv4 total length short"),
        (GOOD4 + b"\x00", "trailing byte"),
        (GOOD4[:-1], "truncated"),
        (_patched(GOOD4, 16, b"\x20\x00"), "more fragments"),
        (_patched(GOOD4, 16, b"\x00\x10"), "fragment offset"),
        (_patched(GOOD6, 14, b"\x00\x01"), "IPv6 payload length"),
        (_patched(GOOD6, 16, b"\x00"), "IPv6 hop-by-hop header under GSO"),
        (_patched(GOOD6, 16, b"\x2c"), "IPv6 fragment header under GSO"),
        (_patched(GOOD4, 10 + 20 + 12, b"\x40"), "TCP header length 16"),
        (_patched(GOOD4, 8, b"\x11\x00"), "csum_offset 17"),
        (_patched(GOOD4, 8, b"\xff\xff"), "csum_offset outside the packet"),
        (_patched(UDP4, 8, b"\x10\x00"), "csum_offset 16 for UDP"),
        (gso_read(6, 4, b"", 1000), "no payload"),
        (gso_read(17, 6, b"", 1000), "no UDP payload"),
        (vnet(NEEDS_CSUM, GSO_TCPV4, 40, 1000, 20, 16) + ip(4, 6, bytes(10)), "TCP header truncated"),
        (vnet(NEEDS_CSUM, GSO_TCPV6, 60, 1000, 40, 16) + ip(6, 6, bytes(19)), "TCP header truncated (IPv6)"),
        (vnet(NEEDS_CSUM, GSO_UDP_L4, 28, 1000, 20, 6) + ip(4, 17, bytes(4)), "UDP header truncated"),
        (vnet(NEEDS_CSUM, GSO_TCPV6, 60, 1000, 40, 16) + bytes.fromhex("60000000") + bytes(20), "IPv6 short"),
        (vnet(NEEDS_CSUM, GSO_TCPV4, 40, 1000, 20, 16) + bytes.fromhex("4500"), "IPv4 short"),
        (vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 10, 20) + bytes(31), "NEEDS_CSUM field beyond the end"),
        (vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 0xFFFF, 0xFFFF) + bytes(40), "NEEDS_CSUM far outside"),
    ],
)
def test_inconsistent_reads_raise_offload_error(read, why):
    with pytest.raises(OffloadError):
        split_read(read)


def test_offload_error_is_a_value_error():
    assert issubclass(OffloadError, ValueError)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.sampled_from([GOOD4, GOOD6, UDP4]), st.integers(0, 80))
def test_split_read_raises_only_offload_error(noise, base, at):
    for read in (noise, base[:at] + noise, base[:10] + noise, _patched(base, at, noise[:4])):
        try:
            out = split_read(read)
        except OffloadError:
            continue
        assert all(type(p) is bytes for p in out)


# --- coalesce: what merges ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
def test_44_segments_become_one_super_packet(version):
    packets = flow(44, version)
    [write] = coalesce(packets)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = header_of(write)
    ihl = 20 if version == 4 else 40
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (
        NEEDS_CSUM, GSO_TCPV4 if version == 4 else GSO_TCPV6, ihl + 20, MSS[version], ihl, 16)
    packet = write[VNET_HDR_LEN:]
    assert len(packet) == ihl + 20 + 44 * MSS[version]
    if version == 4:
        assert struct.unpack_from("!H", packet, 2)[0] == len(packet)
        assert naive_sum(packet[:20]) == 0xFFFF
        assert packet[4:6] == packets[0][4:6]  # the first ID
    else:
        assert struct.unpack_from("!H", packet, 4)[0] == len(packet) - 40
    # The checksum field: the pseudo-header sum of the whole, folded, not complemented.
    src, dst = (packet[12:16], packet[16:20]) if version == 4 else (packet[8:24], packet[24:40])
    partial = _fold(naive_sum(naive_pseudo(src, dst, 6, len(packet) - ihl)))
    assert struct.unpack_from("!H", packet, ihl + 16)[0] == partial
    assert packet[ihl + 20 :] == b"".join(p[ihl + 20 :] for p in packets)
    assert unwrap([write]) == packets


@pytest.mark.parametrize("version", [4, 6])
def test_udp_datagrams_merge_only_with_udp_on(version):
    datagrams = [udp(version, bytes([i]) * 1200, ident=i) for i in range(10)] + [udp(version, b"end", ident=10)]
    assert kinds(coalesce(datagrams)) == [0] * 11
    [write] = coalesce(datagrams, udp=True)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = header_of(write)
    ihl = 20 if version == 4 else 40
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (
        NEEDS_CSUM, GSO_UDP_L4, ihl + 8, 1200, ihl, 6)
    packet = write[VNET_HDR_LEN:]
    assert struct.unpack_from("!H", packet, ihl + 4)[0] == len(packet) - ihl
    src, dst = (packet[12:16], packet[16:20]) if version == 4 else (packet[8:24], packet[24:40])
    assert struct.unpack_from("!H", packet, ihl + 6)[0] == _fold(naive_sum(naive_pseudo(src, dst, 17,
                                                                                          len(packet) - ihl)))
    assert unwrap([write]) == datagrams


def test_tcp_off_leaves_tcp_alone():
    packets = flow(5)
    assert coalesce(packets, tcp=False) == [NO_OFFLOAD + p for p in packets]


def test_psh_on_the_last_segment_closes_the_super_packet():
    packets = flow(4)
    packets[2] = tcp(4, bytes([2]) * 1240, seq=1000 + 2 * 1240, ident=102, flags=ACK | PSH)
    writes = coalesce(packets)
    assert kinds(writes) == [3, 0]
    assert writes[0][VNET_HDR_LEN + 33] == ACK | PSH
    assert unwrap(writes) == packets


def test_a_short_segment_closes_the_super_packet_and_smaller_then_larger_stays_apart():
    packets = flow(3, last=500)
    packets.append(tcp(4, bytes(1240), seq=1000 + 2 * 1240 + 500, ident=103))
    packets.append(tcp(4, bytes(1240), seq=1000 + 3 * 1240 + 500, ident=104))
    writes = coalesce(packets)
    assert kinds(writes) == [3, 2]
    assert unwrap(writes) == packets
    larger = [*flow(2, size=500), tcp(4, bytes(600), seq=2000, ident=102)]
    assert kinds(coalesce(larger)) == [2, 0]


def test_segments_of_one_flow_need_not_be_adjacent():
    a = flow(6, sport=1)
    b = flow(6, 6, sport=2)
    c = [udp(4, bytes(100), ident=i) for i in range(3)]
    mixed = [a[0], b[0], c[0], a[1], b[1], a[2], c[1], a[3], b[2], b[3], a[4], c[2], a[5], b[4], b[5]]
    writes = coalesce(mixed)
    assert kinds(writes) == [6, 6, 0, 0, 0]
    assert unwrap(writes) == a + b + c
    assert kinds(coalesce(mixed, udp=True)) == [6, 6, 3]


def test_df_packets_merge_with_any_id():
    """As the kernel's GRO: with DF set the IPv4 ID means nothing (RFC 6864)."""
    packets = [tcp(4, bytes(1000), seq=1000 + i * 1000, ident=(i * 7919) % 65536, df=True) for i in range(5)]
    writes = coalesce(packets)
    assert kinds(writes) == [5]
    out = unwrap(writes)
    assert [struct.unpack_from("!H", p, 4)[0] for p in out] == [0, 1, 2, 3, 4]
    for mine, theirs in zip(out, packets, strict=True):
        assert mine[:4] + mine[6:10] + mine[12:] == theirs[:4] + theirs[6:10] + theirs[12:]


def test_ids_wrap_around():
    packets = flow(4, ident=0xFFFE)
    assert kinds(coalesce(packets)) == [4]
    assert unwrap(coalesce(packets)) == packets


def test_sequence_numbers_wrap_around():
    packets = flow(4, seq=0xFFFFFFFF - 1000)
    assert kinds(coalesce(packets)) == [4]
    assert unwrap(coalesce(packets)) == packets


def test_64_segments_at_most():
    packets = flow(65, size=100)
    writes = coalesce(packets)
    assert kinds(writes) == [64, 0]
    packets = flow(130, size=100)
    assert kinds(coalesce(packets)) == [64, 64, 2]
    assert unwrap(coalesce(packets)) == packets


@pytest.mark.parametrize("version", [4, 6])
def test_65535_bytes_at_most(version):
    ihl = 20 if version == 4 else 40
    # IPv4: the total length counts the IP header; IPv6: the payload length does not.
    room = 65535 - 20 - (20 if version == 4 else 0)
    size = 1300
    full = room // size
    exact = flow(full + 1, version, size=size, last=room - full * size)
    assert kinds(coalesce(exact)) == [full + 1]
    [write] = coalesce(exact)
    assert len(write) - VNET_HDR_LEN - (ihl if version == 6 else 0) == 65535
    over = flow(full + 1, version, size=size, last=room - full * size + 1)
    assert kinds(coalesce(over)) == [full, 0]
    assert unwrap(coalesce(over)) == over


# --- coalesce: what does not merge ----------------------------------------------------------------


def _pair(**second: object) -> list[bytes]:
    """Two segments that merge, the second with some field changed."""
    first = tcp(4, bytes(1000), seq=1000, ident=1)
    fields: dict[str, object] = {"seq": 2000, "ident": 2}
    fields.update(second)
    version = int(fields.pop("version", 4))  # type: ignore[call-overload]
    return [first, tcp(version, bytes(1000), **fields)]


def test_the_pair_itself_merges():
    assert kinds(coalesce(_pair())) == [2]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"sport": 40001}, "another flow (port)"),
        ({"dst": bytes([10, 1, 2, 4])}, "another flow (address)"),
        ({"src": bytes([100, 64, 0, 3])}, "another flow (source)"),
        ({"seq": 2001}, "a gap in seq"),
        ({"seq": 1000}, "a retransmission"),
        ({"ack": 78}, "another ack"),
        ({"window": 503}, "another window"),
        ({"options": bytes.fromhex("01010101")}, "options where the first had none"),
        ({"urgent": 5}, "an urgent pointer"),
        ({"flags": ACK | SYN}, "SYN"),
        ({"flags": ACK | FIN}, "FIN"),
        ({"flags": ACK | RST}, "RST"),
        ({"flags": RST}, "RST alone"),
        ({"flags": ACK | URG}, "URG"),
        ({"flags": ACK | ECE}, "ECE"),
        ({"flags": ACK | CWR}, "CWR"),
        ({"flags": 0}, "no ACK"),
        ({"checksum": 0x1234}, "bad TCP checksum"),
        ({"tos": 4}, "another TOS"),
        ({"ttl": 63}, "another TTL"),
        ({"df": True}, "DF on one only"),
        ({"ident": 3}, "IDs not consecutive without DF"),
        ({"ident": 1}, "the same ID without DF"),
        ({"ip_options": bytes.fromhex("01010101")}, "IPv4 options"),
        ({"version": 6}, "another family"),
    ],
)
def test_what_does_not_merge(change, why):
    packets = _pair(**change)
    writes = coalesce(packets)
    assert writes == [NO_OFFLOAD + p for p in packets], why


def test_different_tcp_options_do_not_merge_identical_ones_do():
    ts1, ts2 = bytes.fromhex("0101080a0000000100000002"), bytes.fromhex("0101080a0000000200000002")
    same = [tcp(4, bytes(1000), seq=1000 + i * 1000, ident=i, options=ts1) for i in range(3)]
    assert kinds(coalesce(same)) == [3]
    assert unwrap(coalesce(same)) == same
    other = [same[0], tcp(4, bytes(1000), seq=2000, ident=1, options=ts2)]
    assert kinds(coalesce(other)) == [0, 0]


def test_ipv6_fields_must_match():
    base = [tcp(6, bytes(1000), seq=1000), tcp(6, bytes(1000), seq=2000)]
    assert kinds(coalesce(base)) == [2]
    for change in ({"flow": 5}, {"tos": 8}, {"ttl": 1}):
        assert kinds(coalesce([base[0], tcp(6, bytes(1000), seq=2000, **change)])) == [0, 0], change


def test_bad_ipv4_header_checksum_is_never_merged():
    packets = flow(3)
    bad = bytearray(packets[1])
    bad[10] ^= 0x01
    writes = coalesce([packets[0], bytes(bad), packets[2]])
    assert writes == [NO_OFFLOAD + packets[0], NO_OFFLOAD + bytes(bad), NO_OFFLOAD + packets[2]]


def test_a_bad_first_packet_goes_alone_and_the_next_starts_the_run():
    packets = flow(4)
    bad = tcp(4, bytes([0]) * 1240, seq=1000, ident=100, checksum=0x4242)
    writes = coalesce([bad, *packets[1:]])
    assert kinds(writes) == [0, 3]
    assert writes[0] == NO_OFFLOAD + bad
    assert unwrap(writes) == [bad, *packets[1:]]


def test_a_bad_packet_ends_the_run_as_it_came():
    packets = flow(5)
    bad = bytearray(packets[2])
    bad[-1] ^= 0xFF
    batch = [packets[0], packets[1], bytes(bad), packets[3], packets[4]]
    writes = coalesce(batch)
    assert kinds(writes) == [2, 0, 2]  # packets[3] cannot follow packets[1] (a gap): a new run
    assert writes[1] == NO_OFFLOAD + bytes(bad)
    assert unwrap(writes) == batch


def test_udp_without_checksum_or_with_a_bad_one_does_not_merge():
    plain = [udp(4, bytes(500), ident=i) for i in range(2)]
    assert kinds(coalesce(plain, udp=True)) == [2]
    no_checksum = [udp(4, bytes(500), ident=i, checksum=0) for i in range(2)]
    assert kinds(coalesce(no_checksum, udp=True)) == [0, 0]
    bad = [plain[0], udp(4, bytes(500), ident=1, checksum=0x1111)]
    assert kinds(coalesce(bad, udp=True)) == [0, 0]
    longer = [udp(4, bytes(500), ident=0), udp(4, bytes(501), ident=1)]
    assert kinds(coalesce(longer, udp=True)) == [0, 0]


def test_pure_acks_syn_and_non_tcp_udp_pass_as_they_are():
    batch = [
        tcp(4, b"", flags=ACK), tcp(4, b"", flags=SYN), tcp(6, b"", flags=ACK | FIN),
        ip(4, 1, b"\x08\x00\x00\x00\x00\x01\x00\x01"), ip(6, 58, b"\x80\x00\x00\x00\x00\x01\x00\x01"),
        b"", b"\x45", b"\x60" + bytes(30), b"\x45" + bytes(25), bytes(60), b"\xff" * 100,
        tcp(4, bytes(100))[:-1],  # truncated: the length field says more
        tcp(4, bytes(100)) + b"\x00",  # padded
    ]
    assert coalesce(batch, udp=True) == [NO_OFFLOAD + p for p in batch]


def test_order_within_a_flow_is_kept():
    """A flow's packet that cannot merge ends its run: nothing after it jumps ahead of it."""
    a = flow(6)
    fin = tcp(4, b"", seq=1000 + 3 * 1240, ident=103, flags=ACK | FIN)
    batch = [a[0], a[1], a[2], fin, a[3], a[4], a[5]]
    writes = coalesce(batch)
    assert kinds(writes) == [3, 0, 3]
    assert unwrap(writes) == batch
    # A pure ACK of the same flow in between ends the run the same way.
    ack = tcp(4, b"", seq=1000 + 2 * 1240, ident=102)
    batch = [a[0], a[1], ack, tcp(4, bytes([2]) * 1240, seq=1000 + 2 * 1240, ident=103),
             tcp(4, bytes([3]) * 1240, seq=1000 + 3 * 1240, ident=104)]
    assert kinds(coalesce(batch)) == [2, 0, 2]
    assert unwrap(coalesce(batch)) == batch


def test_later_fragments_and_ipv6_extension_headers_end_every_run():
    a = flow(4)
    fragment = bytearray(ip(4, 6, bytes(64), ident=9))
    struct.pack_into("!H", fragment, 6, 100)  # offset 800: no TCP header in it
    fragment[10:12] = b"\x00\x00"
    struct.pack_into("!H", fragment, 10, naive_checksum(bytes(fragment[:20])))
    batch = [a[0], a[1], bytes(fragment), a[2], a[3]]
    writes = coalesce(batch)
    assert kinds(writes) == [2, 0, 2]
    assert unwrap(writes) == batch
    b = flow(4, 6)
    hop_by_hop = ip(6, 0, bytes([6, 0, 5, 2, 0, 0, 1, 0]) + tcp_header(seq=1000 + 2 * 1220) + bytes(10))
    batch = [b[0], b[1], hop_by_hop, b[2], b[3]]
    assert kinds(coalesce(batch)) == [2, 0, 2]
    assert unwrap(coalesce(batch)) == batch


def test_a_first_fragment_does_not_merge():
    whole = flow(2)
    first_fragment = bytearray(whole[1])
    first_fragment[6] |= 0x20  # MF
    first_fragment[10:12] = b"\x00\x00"
    struct.pack_into("!H", first_fragment, 10, naive_checksum(bytes(first_fragment[:20])))
    assert kinds(coalesce([whole[0], bytes(first_fragment)])) == [0, 0]


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_coalesce_takes_other_buffers(kind):
    packets = flow(3)
    assert coalesce([kind(p) for p in packets]) == coalesce(packets)


def test_empty_batch():
    assert coalesce([]) == []


# --- round trips ----------------------------------------------------------------------------------


@CHECKS
@given(tso_reads, st.integers(0, 0xFFFF), st.booleans())
def test_coalesce_of_split_read_gives_back_the_read(case, hdr_len, ecn):
    """coalesce(split_read(x)) == [x] for what the kernel hands over, except for what the
    kernel recomputes anyway when it takes the write back: hdr_len (we write the IP + TCP/UDP
    header length; the kernel's may be anything), the GSO_ECN bit (dropped; the kernel's
    segmentation clears CWR after the first segment with or without it) and the virtio
    flags (we write NEEDS_CSUM alone). And: a read that makes one segment comes back as that
    complete packet behind NO_OFFLOAD; one with CWR comes back as its first segment alone
    (CWR is never merged, as in the kernel's GRO) and a super-packet of the rest; one with
    more than 64 segments as several super-packets; FIN (never merged) ends as its last
    segment alone."""
    args, fields = _gso_args(case)
    protocol = args[0]
    read = gso_read(*args, ecn=ecn and protocol == 6, hdr_len=hdr_len, **fields)
    segments = split_read(read)
    writes = coalesce(segments, udp=True)
    assert unwrap(writes) == segments
    flags = fields.get("flags", ACK)
    count = len(segments)
    if count == 1:
        assert writes == [NO_OFFLOAD + segments[0]]
        return
    if protocol == 6 and flags & (FIN | CWR):
        return  # checked by unwrap above; the split of the runs is covered elsewhere
    if count > 64:
        assert kinds(writes)[0] == 64
        return
    expected = gso_read(*args, **fields)
    assert writes == [expected]


def _random_flows(draw: st.DrawFn) -> tuple[list[bytes], list[list[bytes]]]:
    flows = []
    for f in range(draw(st.integers(1, 4))):
        version = draw(st.sampled_from([4, 6]))
        protocol = draw(st.sampled_from([6, 17]))
        size = draw(st.integers(1, 1400))
        count = draw(st.integers(1, 70))
        last = draw(st.integers(1, size))
        df = draw(st.booleans())
        ident = draw(st.integers(0, 0xFFFF))
        packets = []
        for i in range(count):
            length = last if i == count - 1 else size
            payload = bytes([(f * 37 + i) % 256]) * length
            kw: dict[str, object] = {"df": df, "ident": ident + i} if version == 4 else {}
            if protocol == 6:
                packets.append(tcp(version, payload, sport=1000 + f, seq=f * 1_000_000 + i * size, **kw))
            else:
                packets.append(udp(version, payload, sport=1000 + f, **kw))
        flows.append(packets)
    # Interleave the flows, keeping each flow's order.
    batch: list[bytes] = []
    cursors = [0] * len(flows)
    while any(c < len(fl) for c, fl in zip(cursors, flows, strict=True)):
        choices = [i for i, fl in enumerate(flows) if cursors[i] < len(fl)]
        pick = draw(st.sampled_from(choices))
        batch.append(flows[pick][cursors[pick]])
        cursors[pick] += 1
    return batch, flows


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_split_read_of_coalesce_gives_back_the_packets(data):
    """Every write the kernel segments gives back exactly the packets merged into it, byte
    for byte, and each flow's packets in their order."""
    batch, flows = _random_flows(data.draw)
    writes = coalesce(batch, udp=True)
    assert len(writes) <= len(batch)
    out = unwrap(writes)
    assert sorted(out) == sorted(batch)
    for packets in flows:
        positions = [out.index(p) for p in packets]
        assert positions == sorted(positions)
    # Each flow (in order, full segments but the last) makes as many writes as runs fit in
    # 64 segments and 65535 bytes, however the flows are interleaved.
    assert len(writes) == sum(_runs(packets) for packets in flows)


def _runs(packets: list[bytes]) -> int:
    version = packets[0][0] >> 4
    ihl = 20 if version == 4 else 40
    protocol = packets[0][9] if version == 4 else packets[0][6]
    headers = (20 if protocol == 6 else 8) + (20 if version == 4 else 0)  # what the length field counts
    runs, count, length = 0, 0, 0
    for packet in packets:
        payload = len(packet) - ihl - (20 if protocol == 6 else 8)
        if count == 0 or count == 64 or headers + length + payload > 65535:
            runs, count, length = runs + 1, 0, 0
        count += 1
        length += payload
    return runs


@CHECKS
@given(st.lists(st.binary(max_size=80), max_size=20), st.booleans(), st.booleans())
def test_coalesce_never_raises_and_keeps_what_it_cannot_merge(garbage, tcp_on, udp_on):
    packets = garbage + flow(3) + [p[:40] + b"x" for p in flow(2)]
    writes = coalesce(packets, tcp=tcp_on, udp=udp_on)
    assert sorted(unwrap(writes)) == sorted(packets)
