"""Fakes for the DNS unit tests: a clock the test moves and an upstream that answers
from a zone the test writes, counting every query it receives."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from gateway_pkg.dns.metrics import DnsStats
from gateway_pkg.dns.settings import DnsSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeUpstream:
    """A tiny authoritative server for `test.`: records[(name, type)] = (ttl, [values])."""

    records: dict[tuple[str, str], tuple[int, list[str]]] = field(default_factory=dict)
    soa: tuple[int, int] | None = (60, 30)  # (SOA TTL, SOA MINIMUM); None: no SOA
    chase_cnames: bool = True
    # answer | fail (refused at once) | servfail | blackhole (a dead server: no reply; each
    # query fails with dnspython's Timeout when the test calls time_out(), standing in for
    # the per-try timeout, which only the test decides the moment of)
    mode: str = "answer"
    queries: Counter[tuple[str, str]] = field(default_factory=Counter)
    release: asyncio.Event | None = None  # when set: every answer waits for it (never set: a hang)
    hold: dict[str, asyncio.Event] = field(default_factory=dict)  # rdtype -> answered when set
    _timeouts: asyncio.Event = field(default_factory=asyncio.Event)

    def set(self, name: str, rdtype: str, ttl: int, *values: str) -> None:
        self.records[(name, rdtype)] = (ttl, list(values))

    def total(self) -> int:
        return sum(self.queries.values())

    def time_out(self) -> None:
        """Every query now waiting on the black hole fails with a timeout."""
        self._timeouts.set()
        self._timeouts = asyncio.Event()

    async def __call__(
        self, query: dns.message.QueryMessage, nameserver: tuple[str, int], seconds: float
    ) -> dns.message.Message:
        question = query.question[0]
        qname, qtype = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
        self.queries[(qname, qtype)] += 1
        if self.mode == "fail":
            raise ConnectionRefusedError("upstream stopped")
        if self.mode == "blackhole":
            timeouts = self._timeouts
            await timeouts.wait()
            raise dns.exception.Timeout(timeout=seconds)
        if self.release is not None:
            await self.release.wait()
        if qtype in self.hold:
            await self.hold[qtype].wait()
        response = dns.message.make_response(query)
        if self.mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        name, hops = qname, 0
        while hops < 10:
            if (name, qtype) in self.records:
                ttl, values = self.records[(name, qtype)]
                response.answer.append(dns.rrset.from_text_list(name, ttl, "IN", qtype, values))
                return response
            if (name, "CNAME") in self.records:
                ttl, values = self.records[(name, "CNAME")]
                response.answer.append(dns.rrset.from_text_list(name, ttl, "IN", "CNAME", values))
                if not self.chase_cnames:
                    return response
                name, hops = values[0], hops + 1
                continue
            break
        exists = any(n == name for n, _ in self.records)
        if not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        if self.soa is not None:
            ttl, minimum = self.soa
            response.authority.append(
                dns.rrset.from_text("test.", ttl, "IN", "SOA", f"ns.test. admin.test. 1 3600 600 86400 {minimum}")
            )
        return response


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def stats() -> DnsStats:
    return DnsStats()


@pytest.fixture
def settings(tmp_path) -> DnsSettings:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\noptions timeout:1 attempts:1\n")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    return DnsSettings(resolv_conf=str(resolv), hosts_file=str(hosts))
