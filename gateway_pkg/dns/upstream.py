"""Asking the configured nameservers for one name and one record type.

No caching here: this walks the search list, the nameservers and attempts the way
resolv.conf describes, follows CNAME chains the server left unfinished, and returns
what the answer means (answer.Positive / answer.Negative) or raises UpstreamError.
Every packet sent is counted in `upstream_queries`, so the server's own counters
and ours can be compared one to one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import dns.asyncquery
import dns.message
import dns.name
import dns.rdatatype

from gateway_pkg.dns.answer import MAX_CNAME_HOPS, Chase, Failure, Negative, Positive, interpret
from gateway_pkg.dns.metrics import PathStats
from gateway_pkg.dns.settings import Nameserver
from gateway_pkg.dns.sysconf import ResolvConf

logger = logging.getLogger("gateway_pkg.dns")

EDNS_PAYLOAD = 1232  # DNS flag day 2020: avoids IP fragmentation

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
    # dnspython applies the per-try limit itself; the caller's outer timeout bounds it all.
    response, _used_tcp = await dns.asyncquery.udp_with_fallback(
        query, nameserver[0], timeout=seconds_per_try, port=nameserver[1]
    )
    return response


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
            meaning = interpret(await self._ask(qname, rdtype), qname, rdtype)
            if isinstance(meaning, Chase):
                chain_ttl = min(chain_ttl, meaning.ttl)
                qname = meaning.target
                continue
            assert not isinstance(meaning, Failure)  # _ask only returns usable responses
            if isinstance(meaning, Positive):
                return Positive(meaning.addresses, min(meaning.ttl, chain_ttl))
            ttl = None if meaning.ttl is None else min(meaning.ttl, chain_ttl)
            return Negative(meaning.kind, ttl)
        raise UpstreamError(f"CNAME chain longer than {MAX_CNAME_HOPS} hops at {qname}")

    async def _ask(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        query = dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
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
                return response
        raise UpstreamError(
            f"no answer for {qname.to_text()} {dns.rdatatype.to_text(rdtype)} ({last_problem})",
            unreachable=not answered,
        )
