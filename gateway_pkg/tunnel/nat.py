"""Stateful L3/L4 NAT between a client's DNS-resource proxy IPs and the real addresses.

A client reaches a DNS resource through proxy IPs it picked itself (100.96.0.0/11,
fd00:2021:1111:8000::/107) and told us about (AssignedIps on 1.4, the portal message on
1.3). `setup` pairs those proxy IPs with the addresses the gateway resolved for the
name; `translate_outbound` rewrites client -> proxy into client -> real, and the inbound
functions map the answers (and ICMP errors about them) back. One table per client, as
upstream (`peer/nat_table.rs`).

Sessions are keyed like upstream: inside (protocol, client port or ICMP echo id, proxy IP)
<-> outside (protocol, port or id, real IP). The outside port is the client's own port
unless another session already uses that (protocol, port, real IP), which happens when
two proxy IPs map to one real address; then a free port is picked, so replies can still
be told apart. Idle timeouts: TCP 2 h, UDP 2 min, ICMP 2 min; a TCP RST ends a session.
Expired sessions are forgotten lazily on lookup and in bulk by `purge(now)`.

Mapping rules (upstream after PR #10623):
- per family, proxy IPs are paired round-robin with the resolved addresses of the same
  family; with none in that family a proxy IP maps to None (the policy answers with
  host/address unreachable), never to the other family;
- open sessions keep the real IP they started with (each session stores it); new
  sessions use the newest resolution, so a changed record takes effect for new
  connections as soon as the gateway re-resolves (the TTL cache decides when);
- proxy IPs re-assigned to a different (resource, domain) reset the whole table.

Checksums are updated incrementally (RFC 1624) for the IP header, TCP, UDP and ICMPv6
(pseudo-header) and the ICMP echo identifier; ICMP errors mapped back get their quoted
header rewritten and their ICMP checksum recomputed.

Public API: `DnsResourceNat` with `setup`, `remove_resource`, `real_ip`, `has_proxy`,
`translate_outbound`, `lookup_inbound`, `rewrite_inbound`, `translate_icmp_error`,
`purge`, `session_count`; results that are `str` are drop reasons (see `REASON_*`).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from typing import Final

from gateway_pkg.resources import IPAddress
from gateway_pkg.tunnel.checksum import adjust_delta, adjust_u16, internet_checksum, pseudo_header_sum
from gateway_pkg.tunnel.packet import (
    DST_OFFSET,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    SRC_OFFSET,
    TCP_RST,
    IpPacket,
    destination,
    fixed_header,
)

TCP_TTL: Final = 2 * 60 * 60.0
UDP_TTL: Final = 2 * 60.0
ICMP_TTL: Final = 2 * 60.0
_TTL: Final = {PROTO_TCP: TCP_TTL, PROTO_UDP: UDP_TTL, PROTO_ICMP: ICMP_TTL, PROTO_ICMPV6: ICMP_TTL}

REASON_UNMAPPED: Final = "nat_unmapped"  # proxy IP without a real address in its family
REASON_UNSUPPORTED: Final = "nat_unsupported"  # not TCP/UDP/ICMP echo, or a later fragment
REASON_NO_SESSION: Final = "nat_no_session"  # an answer for an expired session
REASON_EXHAUSTED: Final = "nat_ports_exhausted"

PROXY_NET_V4: Final = ipaddress.IPv4Network("100.96.0.0/11")
PROXY_NET_V6: Final = ipaddress.IPv6Network("fd00:2021:1111:8000::/107")
_PROXY_V6_PREFIX: Final = PROXY_NET_V6.network_address.packed[:13]


def is_proxy_ip(address: bytes) -> bool:
    """True for an address inside the DNS-resource proxy ranges (packed bytes)."""
    if len(address) == 4:
        return address[0] == 100 and (address[1] & 0xE0) == 96
    return address[:13] == _PROXY_V6_PREFIX and address[13] & 0xE0 == 0


# (protocol, port or ICMP id, IP)
SessionKey = tuple[int, int, bytes]


class _Session:
    __slots__ = ("expires_at", "inside", "outside", "ttl")

    def __init__(self, inside: SessionKey, outside: SessionKey, ttl: float, now: float) -> None:
        self.inside = inside
        self.outside = outside
        self.ttl = ttl
        self.expires_at = now + ttl


_unpack_u16 = struct.Struct("!H").unpack_from
_pack_u16 = struct.Struct("!H").pack_into


def _l4_checksum_offset(protocol: int, version: int) -> int | None:
    if protocol == PROTO_TCP:
        return 16
    if protocol == PROTO_UDP:
        return 6
    if (protocol == PROTO_ICMP and version == 4) or (protocol == PROTO_ICMPV6 and version == 6):
        return 2
    return None


def _rewrite_address(
    buf: bytearray,
    version: int,
    ip_offset: int,
    address_offset: int,
    new: bytes,
    protocol: int,
    l4_offset: int,
    l4_len: int,
) -> None:
    """Replace an IP address and fix the IPv4 header and L4 pseudo-header checksums.

    Offsets are absolute in `buf`; `ip_offset` is where this IP header starts (non-zero
    for a header quoted inside an ICMP error), `l4_len` how many L4 bytes are present.
    """
    n = len(new)
    old = buf[address_offset : address_offset + n]
    buf[address_offset : address_offset + n] = new
    # One difference serves both checksums (RFC 1624: HC' = ~(~HC + ~m + m')).
    delta = int.from_bytes(new, "big") - int.from_bytes(old, "big")
    if version == 4:
        at = ip_offset + 10
        (csum,) = _unpack_u16(buf, at)
        _pack_u16(buf, at, adjust_delta(csum, delta))
    # ICMPv4 has no pseudo-header; TCP, UDP and ICMPv6 do.
    if protocol == PROTO_ICMP:
        return
    rel = _l4_checksum_offset(protocol, version)
    if rel is None or rel + 2 > l4_len:
        return
    at = l4_offset + rel
    (csum,) = _unpack_u16(buf, at)
    if protocol == PROTO_UDP and version == 4 and csum == 0:
        return  # IPv4 UDP without a checksum stays without
    csum = adjust_delta(csum, delta)
    if protocol == PROTO_UDP and csum == 0:
        csum = 0xFFFF  # 0 would mean "no checksum"
    _pack_u16(buf, at, csum)


def _rewrite_u16(
    buf: bytearray, field_offset: int, new: int, protocol: int, version: int, l4_offset: int, l4_len: int
) -> None:
    """Replace a port or ICMP identifier and fix the L4 checksum."""
    (old,) = struct.unpack_from("!H", buf, field_offset)
    if old == new:
        return
    struct.pack_into("!H", buf, field_offset, new)
    rel = _l4_checksum_offset(protocol, version)
    if rel is None or rel + 2 > l4_len:
        return
    at = l4_offset + rel
    (csum,) = struct.unpack_from("!H", buf, at)
    if protocol == PROTO_UDP and version == 4 and csum == 0:
        return
    csum = adjust_u16(csum, old, new)
    if protocol == PROTO_UDP and csum == 0:
        csum = 0xFFFF
    struct.pack_into("!H", buf, at, csum)


def _flow_port(p: IpPacket, outbound: bool) -> int | None:
    """The client-side port (or echo id) of a NAT-able packet, None if not NAT-able."""
    if p.src_port is not None:
        return p.src_port if outbound else p.dst_port
    return p.icmp_id


def _port_offset(p: IpPacket, outbound: bool) -> int:
    if p.src_port is not None:
        return p.header_len + (0 if outbound else 2)
    return p.header_len + 4  # ICMP echo identifier


class DnsResourceNat:
    """The DNS-resource NAT table of one client."""

    __slots__ = ("_by_inside", "_by_outside", "_owner", "_proxy", "_sessions_per_proxy")

    def __init__(self) -> None:
        # proxy IP -> real IP (None: that family did not resolve)
        self._proxy: dict[bytes, bytes | None] = {}
        # proxy IP -> (resource id, domain) it was assigned for
        self._owner: dict[bytes, tuple[str, str]] = {}
        self._by_inside: dict[SessionKey, _Session] = {}
        self._by_outside: dict[SessionKey, _Session] = {}
        self._sessions_per_proxy: dict[bytes, int] = {}

    # --- mappings ----------------------------------------------------------------------

    def setup(
        self,
        resource_id: str,
        domain: str,
        proxy_ips: Iterable[IPAddress],
        resolved_ips: Iterable[IPAddress],
        now: float,
    ) -> None:
        """Map `proxy_ips` (assigned by the client for `domain`) to `resolved_ips`."""
        owner = (resource_id, domain.lower().rstrip("."))
        proxies = [ip.packed for ip in proxy_ips]
        if any(self._owner.get(ip, owner) != owner for ip in proxies):
            self.reset()
        self.purge(now)
        # Proxy IPs this (resource, domain) had before but no longer lists are released
        # unless sessions still use them (those expire on their own).
        for ip in [ip for ip, o in self._owner.items() if o == owner and ip not in proxies]:
            del self._owner[ip]
            if not self._sessions_per_proxy.get(ip):
                self._proxy.pop(ip, None)
        resolved = [ip.packed for ip in resolved_ips]
        real_v4 = [ip for ip in resolved if len(ip) == 4]
        real_v6 = [ip for ip in resolved if len(ip) == 16]
        i4 = i6 = 0
        for proxy in proxies:
            self._owner[proxy] = owner
            if len(proxy) == 4:
                real = real_v4[i4 % len(real_v4)] if real_v4 else None
                i4 += 1
            else:
                real = real_v6[i6 % len(real_v6)] if real_v6 else None
                i6 += 1
            # Open sessions keep their real IP (stored per session); new ones take this one.
            self._proxy[proxy] = real

    def remove_resource(self, resource_id: str) -> None:
        """Forget the mappings and sessions of a resource (its authorization ended)."""
        gone = {ip for ip, (rid, _domain) in self._owner.items() if rid == resource_id}
        if not gone:
            return
        for ip in gone:
            del self._owner[ip]
            self._proxy.pop(ip, None)
        for session in [s for s in self._by_inside.values() if s.inside[2] in gone]:
            self._forget(session)

    def reset(self) -> None:
        self._proxy.clear()
        self._owner.clear()
        self._by_inside.clear()
        self._by_outside.clear()
        self._sessions_per_proxy.clear()

    def has_proxy(self, proxy: bytes) -> bool:
        return proxy in self._proxy

    def real_ip(self, proxy: bytes) -> bytes | None:
        """The real IP a new session to `proxy` would use (None: unmapped)."""
        return self._proxy.get(proxy)

    def proxies_of(self, resource_id: str) -> set[bytes]:
        return {ip for ip, (rid, _d) in self._owner.items() if rid == resource_id}

    # --- sessions ----------------------------------------------------------------------

    def session_count(self) -> int:
        return len(self._by_inside)

    def _forget(self, session: _Session) -> None:
        if self._by_inside.get(session.inside) is session:
            del self._by_inside[session.inside]
        if self._by_outside.get(session.outside) is session:
            del self._by_outside[session.outside]
        proxy = session.inside[2]
        left = self._sessions_per_proxy.get(proxy, 0) - 1
        if left > 0:
            self._sessions_per_proxy[proxy] = left
        else:
            self._sessions_per_proxy.pop(proxy, None)

    def purge(self, now: float) -> int:
        """Forget expired sessions; returns how many."""
        expired = [s for s in self._by_inside.values() if s.expires_at <= now]
        for session in expired:
            self._forget(session)
        if len(self._proxy) != len(self._owner):
            # Released proxy IPs were kept only for their sessions.
            for ip in [ip for ip in self._proxy if ip not in self._owner]:
                if not self._sessions_per_proxy.get(ip):
                    del self._proxy[ip]
        return len(expired)

    def _outside_port(self, protocol: int, port: int, real: bytes, now: float) -> int | None:
        """The client's port when free towards `real`, otherwise the next free one."""
        for candidate in range(port, port + 65536):
            candidate &= 0xFFFF
            existing = self._by_outside.get((protocol, candidate, real))
            if existing is None:
                return candidate
            if existing.expires_at <= now:
                self._forget(existing)
                return candidate
        return None

    def translate_outbound(self, p: IpPacket, now: float) -> bytearray | str:
        """client -> proxy becomes client -> real; a `str` result is a drop reason."""
        port = _flow_port(p, True)
        if port is None or p.is_fragment:
            return REASON_UNSUPPORTED
        protocol = p.protocol
        proxy = p.dst
        inside = (protocol, port, proxy)
        session = self._by_inside.get(inside)
        if session is not None and session.expires_at <= now:
            self._forget(session)
            session = None
        if session is None:
            real = self._proxy.get(proxy)
            if real is None:
                return REASON_UNMAPPED
            outside_port = self._outside_port(protocol, port, real, now)
            if outside_port is None:
                return REASON_EXHAUSTED
            session = _Session(inside, (protocol, outside_port, real), _TTL[protocol], now)
            self._by_inside[inside] = session
            self._by_outside[session.outside] = session
            self._sessions_per_proxy[proxy] = self._sessions_per_proxy.get(proxy, 0) + 1
        else:
            session.expires_at = now + session.ttl

        buf = bytearray(p.buf)
        version = p.version
        l4 = p.header_len
        l4_len = p.total_len - l4
        _, outside_port, real = session.outside
        _rewrite_address(buf, version, 0, DST_OFFSET[version], real, protocol, l4, l4_len)
        if outside_port != port:
            _rewrite_u16(buf, _port_offset(p, True), outside_port, protocol, version, l4, l4_len)
        if p.tcp_flags & TCP_RST:
            self._forget(session)
        return buf

    def lookup_inbound(self, p: IpPacket, now: float) -> _Session | str | None:
        """The session an answer from a real IP belongs to.

        None: not a NAT flow (the caller checks it as ordinary traffic);
        `REASON_NO_SESSION`: it belonged to a session that has expired.
        """
        port = _flow_port(p, False)
        if port is None:
            return None
        session = self._by_outside.get((p.protocol, port, p.src))
        if session is None:
            return None
        if session.expires_at <= now:
            self._forget(session)
            return REASON_NO_SESSION
        return session

    @staticmethod
    def proxy_of(session: _Session) -> bytes:
        return session.inside[2]

    def rewrite_inbound(self, p: IpPacket, session: _Session, now: float) -> bytearray:
        """real -> client becomes proxy -> client, on the session `lookup_inbound` found."""
        session.expires_at = now + session.ttl
        buf = bytearray(p.buf)
        version = p.version
        protocol = p.protocol
        l4 = p.header_len
        l4_len = p.total_len - l4
        proxy = session.inside[2]
        _rewrite_address(buf, version, 0, SRC_OFFSET[version], proxy, protocol, l4, l4_len)
        inside_port = session.inside[1]
        if inside_port != session.outside[1]:
            _rewrite_u16(buf, _port_offset(p, False), inside_port, protocol, version, l4, l4_len)
        if p.tcp_flags & TCP_RST:
            self._forget(session)
        return buf

    def translate_icmp_error(self, p: IpPacket, now: float) -> bytearray | None:
        """Map an ICMP error about a NAT-ed flow back to the proxy IP.

        The quoted packet (client -> real) becomes client -> proxy with the client's
        port; the error's own source becomes the proxy IP, since the client only knows
        that address. None when the error is not about a live session.
        """
        inner = p.header_len + 8
        end = p.total_len
        buf = p.buf
        quote = buf[inner:end]
        header = fixed_header(quote)
        real = destination(quote)
        if header is None or real is None:
            return None
        version, ihl, protocol = header  # extension headers in quotes are not followed
        if version != p.version:
            return None
        dst_offset = inner + DST_OFFSET[version]
        addr_len = len(real)
        l4 = inner + ihl
        l4_len = end - l4
        if protocol in (PROTO_TCP, PROTO_UDP):
            if l4_len < 4:
                return None
            port_offset = l4
        elif protocol == (PROTO_ICMP if version == 4 else PROTO_ICMPV6):
            if l4_len < 8:
                return None
            port_offset = l4 + 4
        else:
            return None
        (port,) = struct.unpack_from("!H", buf, port_offset)
        session = self._by_outside.get((protocol, port, real))
        if session is None or session.expires_at <= now:
            return None
        proxy = session.inside[2]
        out = bytearray(buf[:end])
        _rewrite_address(out, version, inner, dst_offset, proxy, protocol, l4, l4_len)
        if session.inside[1] != port:
            _rewrite_u16(out, port_offset, session.inside[1], protocol, version, l4, l4_len)
        # The outer source becomes the proxy IP.
        outer_src = SRC_OFFSET[version]
        out[outer_src : outer_src + addr_len] = proxy
        if version == 4:
            out[10:12] = b"\x00\x00"
            struct.pack_into("!H", out, 10, internet_checksum(out[: p.header_len]))
        icmp = p.header_len
        out[icmp + 2 : icmp + 4] = b"\x00\x00"
        message = out[icmp:end]
        if version == 4:
            csum = internet_checksum(message)
        else:
            csum = internet_checksum(message, pseudo_header_sum(proxy, p.dst, PROTO_ICMPV6, len(message)))
        struct.pack_into("!H", out, icmp + 2, csum)
        return out
