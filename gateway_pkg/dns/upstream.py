"""Asking the configured nameservers for one name and one record type.

No caching here: this walks the search list, the nameservers and attempts the way
resolv.conf describes, follows CNAME chains the server left unfinished, and returns
what the answer means (answer.Positive / answer.Negative) or raises UpstreamError.
Every packet sent is counted in `upstream_queries`, so the server's own counters
and ours can be compared one to one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import dns.asyncquery
import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.OPT
import dns.rrset

from gateway_pkg.dns.answer import MAX_CNAME_HOPS, Chase, Failure, Interpretation, Negative, Positive, interpret
from gateway_pkg.dns.metrics import PathStats
from gateway_pkg.dns.settings import Nameserver
from gateway_pkg.dns.sysconf import ResolvConf

logger = logging.getLogger("gateway_pkg.dns")

EDNS_PAYLOAD = 1232  # DNS flag day 2020: avoids IP fragmentation

# The OPT record of every query: EDNS0, no flags, no options, EDNS_PAYLOAD. Built once (the
# OPT rdata's construction is half of what dns.message.make_query costs); each query gets
# its own copy of the RRset, the immutable rdata shared.
_OPT = dns.rrset.from_rdata(dns.name.root, 0, dns.rdtypes.ANY.OPT.OPT(EDNS_PAYLOAD, dns.rdatatype.OPT, ()))
_HEADER = struct.Struct("!HHHHHH")  # id, flags, QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT
# QTYPE, QCLASS, then the OPT record: root name, TYPE 41, CLASS payload, TTL flags, RDLEN 0
_QUESTION_TAIL_AND_OPT = struct.Struct("!HHBHHIH")


def make_query(qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.QueryMessage:
    """`dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD)`, the same
    message (random id, RD, the question, EDNS0 with that payload) for less than half the cost."""
    query = dns.message.QueryMessage()
    query.flags = dns.flags.Flag.RD
    query.find_rrset(query.question, qname, dns.rdataclass.IN, rdtype, create=True, force_unique=True)
    query.opt = _OPT.copy()
    query.request_payload = EDNS_PAYLOAD
    return query


def query_wire(query: dns.message.Message) -> bytes:
    """`query.to_wire()`. A query as make_query builds it (one absolute question name, EDNS0
    without options, nothing else) is packed directly: dnspython's renderer costs about as
    much as the rest of sending it. Anything else goes through to_wire."""
    opt = query.opt
    if (
        opt is not None
        and len(opt) == 1
        and not opt[0].options
        and query.pad == 0
        and query.tsig is None
        and query.origin is None
        and len(query.question) == 1
        and not query.answer
        and not query.authority
        and not query.additional
    ):
        question = query.question[0]
        name = question.name.to_wire() if question.name.is_absolute() else None
        if name is not None:
            return (
                _HEADER.pack(query.id, query.flags, 1, 0, 0, 1)
                + name
                + _QUESTION_TAIL_AND_OPT.pack(question.rdtype, question.rdclass, 0, opt.rdtype, opt.rdclass, opt.ttl, 0)
            )
    return query.to_wire()


# (query, nameserver, timeout) -> response. The real one is UDP with TCP fallback on
# truncation; unit tests pass a fake upstream.
SendQuery = Callable[[dns.message.QueryMessage, Nameserver, float], Awaitable[dns.message.Message]]


class UpstreamError(Exception):
    """No nameserver gave a usable answer (timeouts, refusals, SERVFAIL).

    `unreachable` is True when no nameserver answered at all (every try timed out or
    failed to connect): the servers look down. False when one answered, only not usably
    (SERVFAIL, REFUSED, a CNAME chain too long): the servers are up, this name is broken.
    """

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


async def send_udp_with_tcp_fallback(
    query: dns.message.QueryMessage, nameserver: Nameserver, seconds_per_try: float
) -> dns.message.Message:
    """dnspython's `asyncquery.udp_with_fallback`, checks and errors included, on a bare
    non-blocking socket: a fresh one per query (a random source port, as dnspython's), sent
    to and read with the loop's sock_sendto/sock_recvfrom under one `asyncio.timeout`.
    dnspython's asyncio backend builds a datagram transport, a protocol, a queue and a
    wait_for task per query, which cost about as much as the rest of the query's Python.

    As there: a reply from another address or port raises UnexpectedSource, one that does
    not answer the question BadResponse, no reply within `seconds_per_try`
    dns.exception.Timeout, and a truncated one is asked again over TCP (dnspython's
    `asyncquery.tcp`, with a fresh `seconds_per_try`)."""
    host, port = nameserver
    family = dns.inet.af_for_address(host)
    destination = dns.inet.low_level_address_tuple((host, port), family)
    wire = query_wire(query)
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        try:
            async with asyncio.timeout(seconds_per_try):
                await loop.sock_sendto(sock, wire, destination)
                reply, source = await loop.sock_recvfrom(sock, 65535)
        except TimeoutError:
            raise dns.exception.Timeout(timeout=seconds_per_try) from None
    finally:
        sock.close()
    if not _same_address(family, source, destination):
        raise dns.query.UnexpectedSource(f"got a response from {source} instead of {destination}")
    try:
        response = parse_reply(reply, query)
    except dns.message.Truncated:
        return await dns.asyncquery.tcp(query, host, seconds_per_try, port)
    if not query.is_response(response):
        raise dns.query.BadResponse
    return response


def parse_reply(reply: bytes, query: dns.message.Message) -> dns.message.Message:
    """`dns.message.from_wire(reply, keyring=query.keyring, request_mac=query.mac,
    raise_on_truncation=True)`, as dnspython's udp() parses, with one shortcut: an OPT record
    that says nothing but the server's payload size (the only additional record, at the root,
    last in the message, no options, extended rcode 0) is cut off before parsing, so the
    message has no `opt`; everything else, rcode() included, is what the whole parse gives.
    dnspython's parse of such a record costs as much as that of the answer itself."""
    stripped = _without_plain_opt(reply)
    return dns.message.from_wire(
        reply if stripped is None else stripped,
        keyring=query.keyring,
        request_mac=query.mac,
        raise_on_truncation=True,
    )


_COUNTS = struct.Struct("!HHHH")  # QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT
_RR_HEADER = struct.Struct("!HHIH")  # TYPE, CLASS, TTL, RDLENGTH
_OPT_RR = 11  # root name (1), TYPE, CLASS, TTL, RDLENGTH (10)


def _without_plain_opt(wire: bytes) -> bytes | None:
    """`wire` without its OPT record and with ARCOUNT 0, when that record is all the
    additional section holds, ends the message and carries no options and no extended
    rcode bits; None otherwise (or when the message is malformed: dnspython then parses it
    whole and raises what it raises)."""
    try:
        qdcount, ancount, nscount, arcount = _COUNTS.unpack_from(wire, 4)
        opt = len(wire) - _OPT_RR
        if arcount != 1 or opt < 12 or wire[opt] != 0:
            return None
        rdtype, _payload, ttl, rdlength = _RR_HEADER.unpack_from(wire, opt + 1)
        if rdtype != dns.rdatatype.OPT or ttl >> 24 or rdlength:
            return None
        # The OPT record must be the one the counts put last, not bytes inside another.
        offset = 12
        for _ in range(qdcount):
            offset = _skip_name(wire, offset) + 4
        for _ in range(ancount + nscount):
            offset = _skip_name(wire, offset) + 10
            offset += int.from_bytes(wire[offset - 2 : offset], "big")
    except (IndexError, struct.error):
        return None
    if offset != opt:
        return None
    return wire[:10] + b"\x00\x00" + wire[12:opt]


def _skip_name(wire: bytes, offset: int) -> int:
    """The offset after the (possibly compressed) name at `offset`; IndexError past the end
    or on a label type other than a length or a pointer."""
    while True:
        length = wire[offset]
        if length == 0:
            return offset + 1
        if length >= 0xC0:
            return offset + 2
        if length > 63:
            raise IndexError("not a label")
        offset += length + 1


def _same_address(family: int, a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """dnspython's test: the same address however written, the same rest of the tuple."""
    try:
        return socket.inet_pton(family, a[0]) == socket.inet_pton(family, b[0]) and a[1:] == b[1:]
    except (OSError, ValueError):
        return False


class Upstream:
    def __init__(
        self,
        conf: ResolvConf,
        stats: PathStats,
        send: SendQuery = send_udp_with_tcp_fallback,
    ) -> None:
        self.conf = conf
        self._stats = stats
        self._send = send

    async def lookup(self, name: str, rdtype: dns.rdatatype.RdataType) -> Positive | Negative:
        nxdomain_ttls: list[float | None] = []
        for candidate in self.conf.candidates(name):
            result = await self._follow(dns.name.from_text(candidate), rdtype)
            if isinstance(result, Negative) and result.kind == "nxdomain":
                nxdomain_ttls.append(result.ttl)
                continue
            return result
        # Every candidate is NXDOMAIN: cacheable only if every one carried an SOA.
        ttl = None if None in nxdomain_ttls else min(t for t in nxdomain_ttls if t is not None)
        return Negative("nxdomain", ttl)

    async def _follow(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Positive | Negative:
        chain_ttl = float("inf")
        for _hop in range(MAX_CNAME_HOPS + 1):
            meaning = await self._ask(qname, rdtype)
            if isinstance(meaning, Chase):
                chain_ttl = min(chain_ttl, meaning.ttl)
                qname = meaning.target
                continue
            assert not isinstance(meaning, Failure)  # _ask only returns usable answers
            if isinstance(meaning, Positive):
                return Positive(meaning.addresses, min(meaning.ttl, chain_ttl))
            ttl = None if meaning.ttl is None else min(meaning.ttl, chain_ttl)
            return Negative(meaning.kind, ttl)
        raise UpstreamError(f"CNAME chain longer than {MAX_CNAME_HOPS} hops at {qname}")

    async def _ask(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Interpretation:
        """What the first usable response means (interpreted once: never a Failure)."""
        query = make_query(qname, rdtype)
        last_problem = "no nameservers"
        answered = False  # did any nameserver reply, if only with SERVFAIL?
        for _attempt in range(self.conf.attempts):
            for nameserver in self.conf.nameservers:
                self._stats.upstream_queries += 1
                try:
                    response = await self._send(query, nameserver, self.conf.timeout)
                except Exception as error:  # timeouts, refusals, malformed replies alike
                    self._stats.upstream_errors += 1
                    last_problem = f"{nameserver[0]}:{nameserver[1]}: {error!r}"
                    continue
                answered = True
                meaning = interpret(response, qname, rdtype)
                if isinstance(meaning, Failure):
                    # SERVFAIL/REFUSED say nothing about the name: try the next server.
                    self._stats.upstream_errors += 1
                    last_problem = f"{nameserver[0]}:{nameserver[1]}: {meaning.rcode}"
                    continue
                return meaning
        raise UpstreamError(
            f"no answer for {qname.to_text()} {dns.rdatatype.to_text(rdtype)} ({last_problem})",
            unreachable=not answered,
        )
