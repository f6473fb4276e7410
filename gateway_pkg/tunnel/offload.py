"""The TUN device's kernel offloads, sans I/O: virtio_net_hdr segmentation and GRO coalescing.

When the data plane opens `tun-firezone` with IFF_VNET_HDR (and TUNSETOFFLOAD: checksum, TSO,
USO), every read and every write carries a 10-byte `struct virtio_net_hdr` in front of the
IP packet, and one read or write may carry a "super-packet" of up to 64 KiB that stands for
many MTU-sized TCP or UDP packets. The kernel then does one pass through its stack per super-
packet instead of one per packet. This module is the byte work of both directions; the data
plane (`tunnel/dataplane.py`) does the reads and writes:

- `split_read(buf)`: one read from the TUN -> complete IP packets, each with all of its
  checksums computed (what the policy, NAT and WireGuard expect): a plain packet passes
  through, a NEEDS_CSUM packet gets its checksum completed, a TSO/USO super-packet is cut
  into gso_size-payload segments the way the kernel's own GSO would (`tcp_gso_segment`,
  `__udp_gso_segment`). Anything inconsistent raises `OffloadError` (and nothing else).
- `coalesce(packets)`: a batch of complete IP packets bound for the TUN (decrypted, past
  policy and NAT) -> the writes, each with a virtio_net_hdr: runs of in-order segments of one
  TCP (or, with `udp=True`, UDP) flow become one GRO super-packet, under the rules of the
  kernel's GRO (`tcp_gro_receive`, `inet_gro_receive`, `udp_gro_receive_segment`) as
  wireguard-go's tun/offload_linux.go applies them, so that the kernel's segmentation of the
  super-packet gives back exactly the packets that were merged. Everything else is written
  as it came behind `NO_OFFLOAD`.

The header is in native byte order (little-endian on every platform we run on): u8 flags,
u8 gso_type, u16 hdr_len, u16 gso_size, u16 csum_start, u16 csum_offset. Every sum over
packet bytes is `checksum.ones_sum` (the C function of gateway_pkg._native when built and
selected, else the int.from_bytes formula; looked up as an attribute so the selection at
start holds); sums of a segment's unchanged parts are computed once per super-packet and
the changing fields (length, ID, sequence number, flags) are passed as its `initial`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final

from gateway_pkg.tunnel import checksum
from gateway_pkg.tunnel.checksum import fold

VNET_HDR_LEN: Final = 10  # struct virtio_net_hdr, as TUN uses it by default (TUNSETVNETHDRSZ not called)
NEEDS_CSUM: Final = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM
GSO_NONE: Final = 0
GSO_TCPV4: Final = 1
GSO_UDP_L4: Final = 5
GSO_TCPV6: Final = 4
GSO_ECN: Final = 0x80
NO_OFFLOAD: Final = bytes(VNET_HDR_LEN)  # a complete packet, nothing to do

# What coalesce merges at most: the kernel's GRO and UDP GSO limit (64 segments) and what
# the IPv4 total length / IPv6 payload length fields can say.
MAX_SEGMENTS: Final = 64
MAX_LENGTH: Final = 0xFFFF

_TCP: Final = 6
_UDP: Final = 17
_FIN: Final = 0x01
_PSH: Final = 0x08
_ACK: Final = 0x10
_CWR: Final = 0x80
_ACK_PSH: Final = _ACK | _PSH
# IPv6 headers that may stand between the fixed header and a transport header.
_IPV6_EXTENSIONS: Final = frozenset({0, 43, 44, 51, 60, 135, 139, 140, 253, 254})

_vnet = struct.Struct("<BBHHHH")
_unpack_vnet = _vnet.unpack_from
_pack_vnet = _vnet.pack
_u16 = struct.Struct("!H")
_unpack_u16 = _u16.unpack_from
_pack_u16 = _u16.pack_into
_u32 = struct.Struct("!I")
_unpack_u32 = _u32.unpack_from
_pack_u32 = _u32.pack_into
_pack_u16_u16 = struct.Struct("!HH").pack_into
_unpack_seq_offset_flags = struct.Struct("!I4xBB").unpack_from  # at the TCP header + 4


class OffloadError(ValueError):
    """A read the segmenter cannot handle (malformed virtio_net_hdr or packet)."""


# --- reads: split_read -------------------------------------------------------------------------


def split_read(buf: bytes | bytearray | memoryview) -> list[bytes]:
    """One read() from a TUN fd opened with IFF_VNET_HDR -> complete IP packets whose IP,
    TCP and UDP checksums all verify (see the module docstring). GSO_NONE without NEEDS_CSUM
    is the packet itself (one copy at most); with NEEDS_CSUM the checksum at
    csum_start + csum_offset is completed from the partial sum the field holds; TCPV4/TCPV6
    (with or without GSO_ECN) and UDP_L4 are segmented to gso_size bytes of payload each,
    with every length, IPv4 ID, TCP sequence number, TCP flag and checksum set as the
    kernel's GSO sets them. Raises OffloadError for anything inconsistent, never anything
    else."""
    n = len(buf)
    if n <= VNET_HDR_LEN:
        raise OffloadError("a read shorter than a virtio_net_hdr and a packet")
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = _unpack_vnet(buf)
    if gso_type == GSO_NONE:
        if not flags & NEEDS_CSUM:
            if type(buf) is bytes:
                return [buf[VNET_HDR_LEN:]]
            return [bytes(memoryview(buf)[VNET_HDR_LEN:])]
        return [_complete_checksum(buf, n, csum_start, csum_offset)]
    if type(buf) is not bytes:
        buf = bytes(buf)
    return _segment(buf, n, gso_type, gso_size, csum_start, csum_offset)


def _complete_checksum(buf: bytes | bytearray | memoryview, n: int, start: int, offset: int) -> bytes:
    """CHECKSUM_PARTIAL: the field holds the pseudo-header sum; the sum runs from csum_start
    to the end of the packet (as skb_checksum_help, 0 written as 0xFFFF)."""
    view = memoryview(buf)
    at = VNET_HDR_LEN + start + offset
    if at + 2 > n:
        raise OffloadError("csum_start + csum_offset beyond the packet")
    csum = 0xFFFF - checksum.ones_sum(view[VNET_HDR_LEN + start :])
    return b"".join((view[VNET_HDR_LEN:at], _u16.pack(csum or 0xFFFF), view[at + 2 :]))


def _segment(buf: bytes, n: int, gso_type: int, gso_size: int, csum_start: int, csum_offset: int) -> list[bytes]:
    base = gso_type & ~GSO_ECN
    if base in (GSO_TCPV4, GSO_TCPV6):
        tcp = True
    elif gso_type == GSO_UDP_L4:
        tcp = False
    else:
        raise OffloadError(f"unknown gso_type {gso_type:#x}")
    if gso_size == 0:
        raise OffloadError("gso_size 0 with GSO")
    o = VNET_HDR_LEN  # where the IP packet starts in buf
    ones_sum = checksum.ones_sum
    size = n - o
    first = buf[o]
    version = first >> 4
    if version == 4:
        if base == GSO_TCPV6:
            raise OffloadError("TCPV6 GSO on an IPv4 packet")
        ihl = (first & 0x0F) * 4
        if ihl < 20 or size < ihl:
            raise OffloadError("bad IPv4 header length")
        if _unpack_u16(buf, o + 2)[0] != size:
            raise OffloadError("IPv4 total length is not the read's length")
        if _unpack_u16(buf, o + 6)[0] & 0x3FFF:
            raise OffloadError("a fragment under GSO")
        protocol = buf[o + 9]
        address_sum = ones_sum(buf[o + 12 : o + 20])
    elif version == 6:
        if base == GSO_TCPV4:
            raise OffloadError("TCPV4 GSO on an IPv6 packet")
        ihl = 40
        if size < 40:
            raise OffloadError("shorter than an IPv6 header")
        if _unpack_u16(buf, o + 4)[0] + 40 != size:
            raise OffloadError("IPv6 payload length is not the read's length")
        protocol = buf[o + 6]
        address_sum = ones_sum(buf[o + 8 : o + 40])
    else:
        raise OffloadError("not IPv4 or IPv6")
    if csum_start != ihl:
        raise OffloadError("csum_start is not where the transport header starts")
    l4 = o + ihl
    if tcp:
        if protocol != _TCP or csum_offset != 16:
            raise OffloadError("TCP GSO on a packet that is not TCP (or extension headers)")
        if size < ihl + 20:
            raise OffloadError("TCP header truncated")
        thl = (buf[l4 + 12] >> 4) * 4
        if thl < 20:
            raise OffloadError("bad TCP header length")
    else:
        if protocol != _UDP or csum_offset != 6:
            raise OffloadError("UDP GSO on a packet that is not UDP (or extension headers)")
        thl = 8
    hl = ihl + thl  # hdr_len as it should be: the kernel's may cover the whole first packet
    if size <= hl:
        raise OffloadError("GSO without payload (or a truncated transport header)")

    # A template of the headers with every field that changes zeroed, and its sums.
    header = bytearray(buf[o : o + hl])
    if version == 4:
        header[2:6] = b"\x00\x00\x00\x00"  # total length, ID
        header[10:12] = b"\x00\x00"
        ip_sum = ones_sum(header[:ihl])
        ip_id = _unpack_u16(buf, o + 4)[0]
    else:
        header[4:6] = b"\x00\x00"
        ip_sum = ip_id = 0
    csum_at = ihl + csum_offset
    header[csum_at : csum_at + 2] = b"\x00\x00"
    if tcp:
        seq = _unpack_u32(buf, l4 + 4)[0]
        flags = buf[l4 + 13]
        header[ihl + 4 : ihl + 8] = b"\x00\x00\x00\x00"
        header[ihl + 13] = 0
    else:
        seq = flags = 0
        header[ihl + 4 : ihl + 6] = b"\x00\x00"
    # Pseudo-header without its length, plus the transport header's constant part.
    l4_sum = ones_sum(header[ihl:], address_sum + protocol)

    payload = size - hl
    count = -(-payload // gso_size)
    out: list[bytes] = []
    append = out.append
    start = o + hl
    end_of_packet = n
    first_flags = flags & ~(_FIN | _PSH) if count > 1 else flags
    middle_flags = flags & ~(_FIN | _PSH | _CWR)
    last_flags = flags & ~_CWR
    for i in range(count):
        end = start + gso_size
        if end > end_of_packet:
            end = end_of_packet
        data = buf[start:end]
        length = end - start
        l4_len = thl + length
        if version == 4:
            total_length = hl + length
            ident = (ip_id + i) & 0xFFFF
            _pack_u16_u16(header, 2, total_length, ident)
            _pack_u16(header, 10, 0xFFFF - fold(ip_sum + total_length + ident))
        else:
            _pack_u16(header, 4, l4_len)
        if tcp:
            seg_flags = first_flags if i == 0 else (last_flags if i == count - 1 else middle_flags)
            seg_seq = (seq + i * gso_size) & 0xFFFFFFFF
            _pack_u32(header, ihl + 4, seg_seq)
            header[ihl + 13] = seg_flags
            # The data ends the segment: an odd length is padded with a zero byte.
            csum = 0xFFFF - ones_sum(data, l4_sum + l4_len + seg_seq + seg_flags)
        else:
            _pack_u16(header, ihl + 4, l4_len)
            csum = 0xFFFF - ones_sum(data, l4_sum + l4_len + l4_len) or 0xFFFF  # 0 is "no checksum"
        _pack_u16(header, csum_at, csum)
        append(b"".join((header, data)))
        start = end
    return out


# --- writes: coalesce --------------------------------------------------------------------------
#
# A run: packets of one flow to be written as one; a list (for speed) indexed by:
_POS, _PACKETS, _IHL, _HL, _GSO, _NEXT_SEQ, _LAST_ID, _PAYLOAD, _SIG, _SIG_PSH, _TAIL, _CHECKED, _PSH_SET = range(13)
# _POS its index in the output; _PACKETS the packets, first to last; _IHL, _HL the IP header
# length and the IP + transport header length; _GSO the first packet's payload length;
# _NEXT_SEQ the TCP sequence number the next segment must have; _LAST_ID the last packet's
# IPv4 ID; _PAYLOAD the payload bytes so far; _SIG the TCP header bytes from the ack to the
# window (header length, flags) every further segment must repeat, _SIG_PSH the same with PSH,
# _TAIL the urgent pointer and the options; _CHECKED whether the first packet's checksums were
# verified (when a second one arrives); _PSH_SET the last segment carried PSH.


def _checksums_ok(pkt: bytes, ihl: int, protocol: int) -> bool:
    """The IPv4 header checksum (IPv4) and the TCP/UDP checksum verify: sums that verify fold
    to 0xFFFF. The transport part is summed without slicing it out: the whole packet's sum
    is the header's plus the transport's (the header has an even length), so IPv4's verified
    header adds a multiple of 0xFFFF, and of IPv6's header all but the addresses (the first
    8 bytes, never all zero) is taken back out as its complement."""
    l4_len = len(pkt) - ihl
    ones_sum = checksum.ones_sum
    if ihl == 20:
        if ones_sum(pkt[:20]) != 0xFFFF:
            return False
        return ones_sum(pkt, ones_sum(pkt[12:20]) + protocol + l4_len) == 0xFFFF
    return ones_sum(pkt, 0xFFFF - ones_sum(pkt[:8]) + protocol + l4_len) == 0xFFFF


def _ip_compatible(pkt: bytes, head: bytes, ihl: int, last_id: int) -> bool:
    """IPv4: same TOS, TTL and flags (DF), ID one more than the last, or DF on both with any
    ID; IPv6: same traffic class, flow label and hop limit. Addresses and protocol are the
    flow key's."""
    if ihl == 20:
        if pkt[1] != head[1] or pkt[8] != head[8] or pkt[6] != head[6]:
            return False
        return bool(pkt[6] & 0x40) or _unpack_u16(pkt, 4)[0] == (last_id + 1) & 0xFFFF
    return pkt[:4] == head[:4] and pkt[7] == head[7]


def coalesce(packets: Sequence[bytes], *, tcp: bool = True, udp: bool = False) -> list[bytes]:
    """Complete IP packets bound for the TUN, in arrival order -> the writes for a TUN
    opened with IFF_VNET_HDR, each starting with a 10-byte virtio_net_hdr. With `tcp`, in-order
    segments of one TCP flow in the batch (not necessarily adjacent) become one GRO super-
    packet (NEEDS_CSUM, GSO_TCPV4/TCPV6, gso_size = the first segment's payload, hdr_len =
    IP + TCP header, csum_start = IP header length, csum_offset 16, the checksum field holding
    the pseudo-header sum for the super-packet's length, lengths and the IPv4 header checksum
    rewritten); with `udp` the same for UDP flows (GSO_UDP_L4, csum_offset 6, the UDP length
    rewritten). A super-packet is written where its first packet was; every other packet is
    `NO_OFFLOAD` + the packet as it came.

    Order: a flow (addresses, protocol, ports) has at most one open run; its next packet is
    appended to that run or ends it (and starts a new run, or is written alone), so the
    packets of one flow never change order. A later IPv4 fragment, or an IPv6 packet with
    extension headers, could belong to any flow and ends every open run."""
    out: list[Any] = []
    runs: list[list[Any]] = []
    open_tcp: dict[bytes, list[Any]] = {}
    open_udp: dict[bytes, list[Any]] = {}
    for pkt in packets:
        if type(pkt) is not bytes:
            pkt = bytes(pkt)
        n = len(pkt)
        first = pkt[0] if n else 0
        version = first >> 4
        table: dict[bytes, list[Any]] | None = None
        if version == 4 and n >= 20:
            protocol = pkt[9]
            if protocol == _TCP:
                table = open_tcp if tcp else None
            elif protocol == _UDP:
                table = open_udp if udp else None
            if table is not None:
                ihl = (first & 0x0F) * 4
                frag = _unpack_u16(pkt, 6)[0]
                if frag & 0x1FFF:  # a later fragment: which flow it belongs to is unknown
                    table.clear()
                    table = None
                elif ihl < 20 or n < ihl + 4:
                    table = None
                else:
                    key = pkt[12:24] if ihl == 20 else pkt[12:20] + pkt[ihl : ihl + 4]  # addresses, ports
                    mergeable = ihl == 20 and not frag & 0x2000 and _unpack_u16(pkt, 2)[0] == n
        elif version == 6 and n >= 40:
            protocol = pkt[6]
            if protocol == _TCP:
                table = open_tcp if tcp else None
            elif protocol == _UDP:
                table = open_udp if udp else None
            elif protocol in _IPV6_EXTENSIONS:  # may hide a TCP/UDP packet of an open flow
                open_tcp.clear()
                open_udp.clear()
            if table is not None:
                if n < 44:
                    table = None
                else:
                    ihl = 40
                    key = pkt[8:44]
                    mergeable = _unpack_u16(pkt, 4)[0] + 40 == n
        if table is None:
            out.append(NO_OFFLOAD + pkt)
            continue
        if protocol == _TCP:
            run = _add_tcp(pkt, n, ihl, mergeable, table, key)
        else:
            run = _add_udp(pkt, n, ihl, mergeable, table, key)
        if run is None:
            continue  # merged into an open run
        if run is _ALONE:
            out.append(NO_OFFLOAD + pkt)
            continue
        run[_POS] = len(out)
        runs.append(run)
        out.append(None)  # filled in below

    for run in runs:
        merged = run[_PACKETS]
        out[run[_POS]] = NO_OFFLOAD + merged[0] if len(merged) == 1 else _super_packet(run, merged)
    return out


_ALONE: Final[list[Any]] = []  # _add_tcp/_add_udp: the packet is written as it came


def _append(run: list[Any], pkt: bytes, ihl: int, protocol: int, table: dict[bytes, list[Any]], key: bytes) -> bool:
    """Checksums, once everything else allows `pkt` after `run`: the run's first packet is
    verified when a second one arrives (a lone packet is written as it came, unverified), and
    a packet that fails is never merged. True: `pkt` joined the run. False: it did not and
    the run is closed; `pkt` goes alone if the run was good, else it may start a new one
    (`run[_CHECKED]` tells which)."""
    if not run[_CHECKED]:
        if not _checksums_ok(run[_PACKETS][0], ihl, protocol):
            del table[key]
            return False
        run[_CHECKED] = True
    if not _checksums_ok(pkt, ihl, protocol):
        del table[key]
        return False
    run[_PACKETS].append(pkt)
    if ihl == 20:
        run[_LAST_ID] = _unpack_u16(pkt, 4)[0]
    return True


def _add_tcp(
    pkt: bytes, n: int, ihl: int, mergeable: bool, table: dict[bytes, list[Any]], key: bytes
) -> list[Any] | None:
    """One TCP packet of the flow `key`: None when it joined the flow's open run, else
    `_ALONE` or a new run (already registered as the flow's open one)."""
    if n >= ihl + 20:
        seq, offset, flags = _unpack_seq_offset_flags(pkt, ihl + 4)
        thl = (offset >> 4) * 4
    else:
        seq = thl = flags = 0
    hl = ihl + thl
    payload = n - hl
    run = table.get(key)
    if not mergeable or thl < 20 or payload <= 0 or (flags != _ACK and flags != _ACK_PSH):
        if run is not None:
            del table[key]
        return _ALONE
    if run is not None:
        if (
            hl == run[_HL]
            and pkt[ihl + 8 : ihl + 16] == (run[_SIG] if flags == _ACK else run[_SIG_PSH])
            and pkt[ihl + 18 : hl] == run[_TAIL]
            and seq == run[_NEXT_SEQ]
            and payload <= run[_GSO]
            and len(run[_PACKETS]) < MAX_SEGMENTS
            and run[_PAYLOAD] + payload + hl - (40 if ihl == 40 else 0) <= MAX_LENGTH
            and _ip_compatible(pkt, run[_PACKETS][0], ihl, run[_LAST_ID])
        ):
            if _append(run, pkt, ihl, _TCP, table, key):
                run[_PAYLOAD] += payload
                run[_NEXT_SEQ] = (run[_NEXT_SEQ] + payload) & 0xFFFFFFFF
                if flags == _ACK_PSH or payload < run[_GSO]:
                    run[_PSH_SET] = flags == _ACK_PSH
                    del table[key]  # nothing may follow PSH or a short segment
                return None
            if run[_CHECKED]:
                return _ALONE  # a bad checksum: as it came
        elif flags == _ACK_PSH:
            del table[key]
    if flags == _ACK_PSH:  # it could only ever end a run: alone
        return _ALONE
    sig = pkt[ihl + 8 : ihl + 16]  # ack, header length, flags, window
    sig_psh = bytearray(sig)
    sig_psh[5] |= _PSH
    run = [0, [pkt], ihl, hl, payload, (seq + payload) & 0xFFFFFFFF,
           _unpack_u16(pkt, 4)[0] if ihl == 20 else 0, payload, sig, bytes(sig_psh), pkt[ihl + 18 : hl], False, False]
    table[key] = run
    return run


def _add_udp(
    pkt: bytes, n: int, ihl: int, mergeable: bool, table: dict[bytes, list[Any]], key: bytes
) -> list[Any] | None:
    """One UDP datagram of the flow `key`, as `_add_tcp`."""
    hl = ihl + 8
    payload = n - hl
    run = table.get(key)
    if (
        not mergeable
        or payload <= 0
        or _unpack_u16(pkt, ihl + 4)[0] != n - ihl
        or not (pkt[ihl + 6] or pkt[ihl + 7])  # no checksum: not ours to add one
    ):
        if run is not None:
            del table[key]
        return _ALONE
    if run is not None and (
        payload <= run[_GSO]
        and len(run[_PACKETS]) < MAX_SEGMENTS
        and run[_PAYLOAD] + payload + hl - (40 if ihl == 40 else 0) <= MAX_LENGTH
        and _ip_compatible(pkt, run[_PACKETS][0], ihl, run[_LAST_ID])
    ):
        if _append(run, pkt, ihl, _UDP, table, key):
            run[_PAYLOAD] += payload
            if payload < run[_GSO]:
                del table[key]
            return None
        if run[_CHECKED]:
            return _ALONE
    run = [0, [pkt], ihl, hl, payload, 0, _unpack_u16(pkt, 4)[0] if ihl == 20 else 0, payload, b"", b"", b"", False,
           False]
    table[key] = run
    return run


def _super_packet(item: list[Any], merged: list[bytes]) -> bytes:
    head = merged[0]
    ihl = item[_IHL]
    hl = item[_HL]
    l4_len = hl - ihl + item[_PAYLOAD]
    header = bytearray(head[:hl])
    protocol = _UDP if hl - ihl == 8 else _TCP  # a TCP header is at least 20 bytes
    if ihl == 20:
        total = hl + item[_PAYLOAD]
        _pack_u16(header, 2, total)
        header[10:12] = b"\x00\x00"
        _pack_u16(header, 10, 0xFFFF - checksum.ones_sum(header[:20]))
        partial = checksum.ones_sum(head[12:20], protocol + l4_len)  # the pseudo-header sum, not complemented
    else:
        _pack_u16(header, 4, l4_len)
        partial = checksum.ones_sum(head[8:40], protocol + l4_len)
    if protocol == _TCP:
        if item[_PSH_SET]:
            header[ihl + 13] |= _PSH
        _pack_u16(header, ihl + 16, partial)
        vnet = _pack_vnet(NEEDS_CSUM, GSO_TCPV4 if ihl == 20 else GSO_TCPV6, hl, item[_GSO], ihl, 16)
    else:
        _pack_u16_u16(header, ihl + 4, l4_len, partial)
        vnet = _pack_vnet(NEEDS_CSUM, GSO_UDP_L4, hl, item[_GSO], ihl, 6)
    parts: list[bytes | bytearray | memoryview] = [vnet, header]
    parts.extend(memoryview(p)[hl:] for p in merged)
    return b"".join(parts)
