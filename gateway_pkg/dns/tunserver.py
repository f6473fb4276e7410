"""The TUN DNS server: UDP and TCP on `<tun_ipv4>:53535` and `[<tun_ipv6>]:53535`.

Clients send it the queries for DNS-resource names that are not A/AAAA (SRV, TXT: upstream's
`ResolveStrategy::RecurseSite`); it forwards each, over the transport it came on, to the
fastest nameserver of the resolver configuration and relays the answer. It has no cache and
does not look at the feature flag (../shared/reference/firezone-gateway-facts.md §4.4).

The fastest nameserver is found as upstream's `nameserver_set.rs` does: `<probe name> A` is
sent to every nameserver (up to 20) over UDP and over TCP at once, 2 s per query; the first
NOERROR answer wins. That is done when the server is bound, every 60 s after, when a forwarded
query gets no answer, and when a query arrives while no nameserver is known (at most every
5 s). Unlike upstream, the last winner keeps serving while a new round runs, and a query that
arrives during the first round waits for it (at most 2 s) instead of getting SERVFAIL.

The decisions (which server won a round, what to answer a query that cannot be forwarded,
how an answer fits a UDP reply) are sans-I/O functions below; the asyncio servers and the
dnspython query functions are the I/O around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import math
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
from prometheus_client import Counter

from gateway_pkg.dns.settings import DnsSettings, Nameserver
from gateway_pkg.dns.sysconf import load_resolv_conf
from gateway_pkg.errors import ConfigError, RuntimeFailure
from gateway_pkg.netconst import TUN_DNS_PORT

log = logging.getLogger("gateway_pkg.dns.tunserver")

PROBE_TIMEOUT = 2.0  # upstream DNS_TIMEOUT: "every sensible DNS server should respond within 2 s"
MAX_NAMESERVERS = 20  # upstream MAX_DNS_SERVERS
REEVALUATE_INTERVAL = 60.0  # upstream RE_EVALUATE_NAMESERVER_INTERVAL
RECHECK_WHEN_NONE = 5.0  # with no nameserver known, a query starts a new round at most this often
FORWARD_TIMEOUT = 5.0  # upstream DNS_QUERY_TIMEOUT
MAX_IN_FLIGHT = 1000  # upstream: forwarded queries in flight; beyond, SERVFAIL at once
TCP_IDLE_TIMEOUT = 10.0  # an idle TCP connection is closed (RFC 7766 §6.2.3: "a few seconds")
UDP_LIMIT = 512  # RFC 1035 §4.2.1, without EDNS
# A new IPv6 address is tentative for a moment after the link comes up (binding it fails with
# EADDRNOTAVAIL until the kernel's DAD work has run, even on a NOARP TUN device): retry so long.
ADDRESS_WAIT = 2.0

QUERIES = Counter("firezone_gateway_tun_dns_queries",
                  "Queries to the TUN DNS server (port 53535), by transport and what was answered",
                  ["transport", "result"])
PROBES = Counter("firezone_gateway_tun_dns_probe_rounds",
                 "Rounds of probes for the fastest nameserver, by outcome", ["outcome"])

# (query, nameserver, transport "udp"|"tcp", timeout) -> response. dnspython's UDP and TCP
# query functions in the gateway; unit tests pass a fake.
SendQuery = Callable[[dns.message.Message, Nameserver, str, float], Awaitable[dns.message.Message]]


# --- sans-I/O --------------------------------------------------------------------------------


def parse_probe_name(text: str) -> dns.name.Name:
    """FIREZONE_DNS_PROBE_NAME as an absolute name; a malformed one is a configuration mistake."""
    try:
        name = dns.name.from_text(text.strip())
    except dns.exception.DNSException as exc:
        raise ConfigError(f"FIREZONE_DNS_PROBE_NAME is not a DNS name ({text!r}: {exc})") from None
    if name == dns.name.root:
        raise ConfigError("FIREZONE_DNS_PROBE_NAME must not be the root")
    return name


def probe_query(name: dns.name.Name) -> dns.message.QueryMessage:
    """`<name> A` with RD set and no EDNS, as upstream's `query_firezone_dev`."""
    return dns.message.make_query(name, dns.rdatatype.A)


@dataclass(frozen=True, slots=True)
class Probe:
    """One probe's outcome: the rcode of its answer and when it came (seconds after the round
    started); `rcode` None: no answer in time, or an error."""

    nameserver: Nameserver
    transport: str
    rtt: float | None = None
    rcode: int | None = None

    @property
    def usable(self) -> bool:
        return self.rtt is not None and self.rcode == dns.rcode.NOERROR


@dataclass
class ProbeRound:
    """One evaluation: every nameserver over UDP and TCP, started together. The first NOERROR
    answer wins, so the round is over at once then; without one it is over when every probe
    answered otherwise, failed or timed out."""

    nameservers: tuple[Nameserver, ...]
    probes: list[Probe] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nameservers = tuple(dict.fromkeys(self.nameservers))[:MAX_NAMESERVERS]
        self._pending = {(ns, transport) for ns in self.nameservers for transport in ("udp", "tcp")}

    @property
    def expected(self) -> list[tuple[Nameserver, str]]:
        return [(ns, transport) for ns in self.nameservers for transport in ("udp", "tcp")]

    def record(self, probe: Probe) -> None:
        self._pending.discard((probe.nameserver, probe.transport))
        self.probes.append(probe)

    @property
    def winner(self) -> Nameserver | None:
        return fastest(self.probes)

    @property
    def done(self) -> bool:
        return self.winner is not None or not self._pending


def fastest(probes: Iterable[Probe]) -> Nameserver | None:
    """The nameserver of the quickest NOERROR answer, over either transport; None if none."""
    usable = [p for p in probes if p.usable]
    if not usable:
        return None
    return min(usable, key=lambda p: p.rtt if p.rtt is not None else math.inf).nameserver


def header_only(wire: bytes, rcode: int) -> bytes | None:
    """An answer to a message dnspython cannot parse, from its header alone: same ID, opcode
    and RD, QR set, no records. None when there is no header or it is not a query (never
    answer a response: that is how reflection loops start)."""
    if len(wire) < 12 or wire[2] & 0x80:
        return None
    flags = 0x8000 | (wire[2] & 0x79) << 8 | (rcode & 0xF)  # QR, opcode and RD kept
    return wire[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class Forward:
    query: dns.message.Message


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer at once, without asking a nameserver."""

    wire: bytes
    result: str


@dataclass(frozen=True, slots=True)
class Ignore:
    result: str


def classify(wire: bytes) -> Forward | Answer | Ignore:
    """What to do with a message that reached the server."""
    if len(wire) < 12:
        return Ignore("malformed")
    if wire[2] & 0x80:
        return Ignore("not_a_query")
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        formerr = header_only(wire, dns.rcode.FORMERR)
        return Answer(formerr, "malformed") if formerr is not None else Ignore("malformed")
    if query.opcode() != dns.opcode.QUERY:
        return Answer(reply(query, dns.rcode.NOTIMP).to_wire(), "not_implemented")
    if len(query.question) != 1:
        return Answer(reply(query, dns.rcode.FORMERR).to_wire(), "malformed")
    return Forward(query)


def reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    """An empty answer with `rcode`: same ID, question, RD and EDNS as the query."""
    response = dns.message.make_response(query, recursion_available=True)
    response.set_rcode(rcode)
    return response


def udp_limit(query: dns.message.Message) -> int:
    """How large a UDP answer the client takes: its EDNS payload size, else 512."""
    return max(UDP_LIMIT, query.payload) if query.edns >= 0 else UDP_LIMIT


def encode_answer(query: dns.message.Message, response: dns.message.Message, transport: str) -> bytes:
    """The nameserver's answer as sent on: whole over TCP; over UDP, truncated with TC set when
    it exceeds what the client takes (the nameserver will normally have done that already)."""
    if transport == "tcp":
        return response.to_wire(max_size=65535)
    return response.to_wire(max_size=udp_limit(query), prefer_truncation=True)


# --- I/O -------------------------------------------------------------------------------------


async def send_dnspython(query: dns.message.Message, nameserver: Nameserver, transport: str,
                         seconds: float) -> dns.message.Message:
    address, port = nameserver
    if transport == "tcp":
        return await dns.asyncquery.tcp(query, address, timeout=seconds, port=port)
    # A truncated answer is relayed as it is: the client retries over TCP itself.
    return await dns.asyncquery.udp(query, address, timeout=seconds, port=port, ignore_unexpected=True,
                                    raise_on_truncation=False)


def _ns(nameserver: Nameserver) -> str:
    address, port = nameserver
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class NameserverSet:
    """The nameservers of the resolver configuration and which one answers fastest."""

    def __init__(self, settings: DnsSettings, send: SendQuery = send_dnspython,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._probe_name = parse_probe_name(settings.probe_name)
        self._send = send
        self._clock = clock
        self.fastest: Nameserver | None = None
        self._round: asyncio.Task[Nameserver | None] | None = None
        self._last_round_end = -math.inf
        self._rounds = 0

    def configured(self) -> tuple[Nameserver, ...]:
        """The resolver's nameservers: FIREZONE_DNS_NAMESERVERS, else resolv.conf (read each
        round, so an edited file is picked up), with glibc's 127.0.0.1 when it names none."""
        return load_resolv_conf(self._settings.resolv_conf, self._settings.nameservers).nameservers

    def evaluate(self) -> asyncio.Task[Nameserver | None]:
        """Start a round unless one runs; the task ends with the winner (or None)."""
        if self._round is None or self._round.done():
            self._round = asyncio.ensure_future(self._run_round())
        return self._round

    async def current(self) -> Nameserver | None:
        """The nameserver to forward to now. Waits for a running round when none is known yet
        (and starts one, at most every 5 s), so the first queries after `init` are forwarded."""
        if self.fastest is not None:
            return self.fastest
        running = self._round is not None and not self._round.done()
        if running or self._clock() - self._last_round_end >= RECHECK_WHEN_NONE:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.evaluate())
        return self.fastest

    def forward_failed(self, nameserver: Nameserver) -> None:
        """A forwarded query got no answer: find out again which nameserver is alive."""
        if nameserver == self.fastest:
            self.evaluate()

    async def _run_round(self) -> Nameserver | None:
        probing = ProbeRound(self.configured())
        started = self._clock()
        query_name = self._probe_name

        async def probe(nameserver: Nameserver, transport: str) -> Probe:
            try:
                response = await asyncio.wait_for(
                    self._send(probe_query(query_name), nameserver, transport, PROBE_TIMEOUT), PROBE_TIMEOUT)
            except Exception as exc:  # timeouts, refusals, unreachable, garbage alike
                log.debug("TUN DNS probe of %s over %s failed: %r", _ns(nameserver), transport, exc)
                return Probe(nameserver, transport)
            rtt = self._clock() - started
            log.debug("TUN DNS probe of %s over %s: %s in %.1f ms", _ns(nameserver), transport,
                      dns.rcode.to_text(response.rcode()), rtt * 1000)
            return Probe(nameserver, transport, rtt, response.rcode())

        tasks = [asyncio.ensure_future(probe(ns, transport)) for ns, transport in probing.expected]
        try:
            for next_done in asyncio.as_completed(tasks):
                probing.record(await next_done)
                if probing.done:
                    break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._last_round_end = self._clock()
        self._adopt(probing)
        return probing.winner

    def _adopt(self, probing: ProbeRound) -> None:
        winner, previous = probing.winner, self.fastest
        self.fastest = winner
        self._rounds += 1
        PROBES.labels("found" if winner is not None else "none").inc()
        if winner is None:
            tried = ", ".join(_ns(ns) for ns in probing.nameservers) or "none configured"
            if previous is None and self._rounds > 1:
                log.debug("TUN DNS server: still no nameserver answers (%s)", tried)
            else:  # once when it starts without one, and once each time it loses the last one
                log.warning("TUN DNS server: no nameserver answered %s A within %.0f s (%s); "
                            "queries on port %d get SERVFAIL until one does", self._probe_name,
                            PROBE_TIMEOUT, tried, TUN_DNS_PORT)
        elif winner != previous:
            rtt = min(p.rtt for p in probing.probes if p.usable and p.nameserver == winner and p.rtt is not None)
            log.info("TUN DNS server forwards to %s, the fastest nameserver (%.1f ms)", _ns(winner), rtt * 1000)

    async def close(self) -> None:
        if self._round is not None:
            self._round.cancel()
            with contextlib.suppress(BaseException):
                await self._round
            self._round = None


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: TunDnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # not a subclass, but one

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.transport is not None:
            self.server.on_datagram(self.transport, data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("TUN DNS server: UDP error %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


@dataclass
class _Listener:
    address: str
    udp: asyncio.DatagramTransport
    udp_closed: asyncio.Future[None]
    tcp: asyncio.AbstractServer


class TunDnsServer:
    """Bound on each `init` to the TUN addresses (see `bind`); closed when the gateway stops."""

    def __init__(self, settings: DnsSettings | None = None, *, send: SendQuery = send_dnspython,
                 clock: Callable[[], float] = time.monotonic, port: int = TUN_DNS_PORT) -> None:
        self.nameservers = NameserverSet(settings or DnsSettings(), send, clock)
        self._send = send
        self.port = port
        self._listeners: list[_Listener] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._refresh: asyncio.Task[None] | None = None
        self.in_flight = 0

    @property
    def addresses(self) -> list[str]:
        return [listener.address for listener in self._listeners]

    async def bind(self, addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
        """(Re)bind UDP and TCP on each address. An address where either fails is left out with
        a warning; none bound is a RuntimeFailure (fatal, as upstream). Addresses that did not
        change keep their sockets, so a re-sent `init` costs nothing."""
        wanted = [str(address) for address in addresses]
        if wanted == self.addresses:
            return
        await self._close_listeners()
        problems: list[str] = []
        for address in wanted:
            try:
                self._listeners.append(await self._listen_when_usable(address))
            except OSError as exc:
                problems.append(f"{_ns((address, self.port))}: {exc.strerror or exc}")
        if not self._listeners:
            raise RuntimeFailure(f"cannot bind the TUN DNS server (UDP and TCP): {'; '.join(problems)}")
        for problem in problems:
            log.warning("TUN DNS server not listening on %s", problem)
        log.info("TUN DNS server listening on %s (UDP and TCP)",
                 " and ".join(_ns((a, self.port)) for a in self.addresses))
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._refresh_loop())

    async def _listen_when_usable(self, address: str) -> _Listener:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ADDRESS_WAIT
        while True:
            try:
                return await self._listen(address)
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL or loop.time() >= deadline:
                    raise
            await asyncio.sleep(0.02)  # polls the kernel's state; bounded by ADDRESS_WAIT

    async def _listen(self, address: str) -> _Listener:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        udp, protocol = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self),
                                                            local_addr=(address, self.port), family=family)
        try:
            tcp = await asyncio.start_server(self._serve_tcp, host=address, port=self.port, family=family,
                                             reuse_address=True)
        except OSError:
            udp.close()
            raise
        return _Listener(address, udp, protocol.closed, tcp)

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.nameservers.evaluate()
            await asyncio.sleep(REEVALUATE_INTERVAL)

    async def _close_listeners(self) -> None:
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.udp.close()
            listener.tcp.close()  # the listening socket closes at once; open connections go on
        # The UDP socket is closed on the loop's next turn: wait, so its port can be bound again.
        await asyncio.gather(*(listener.udp_closed for listener in listeners))

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(BaseException):
                await self._refresh
            self._refresh = None
        for writer in list(self._writers):
            writer.close()
        await self._close_listeners()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.nameservers.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- queries ---------------------------------------------------------------------------

    async def answer(self, wire: bytes, transport: str) -> bytes | None:
        """The bytes to send back for one message (None: send nothing)."""
        action = classify(wire)
        if isinstance(action, Ignore):
            QUERIES.labels(transport, action.result).inc()
            return None
        if isinstance(action, Answer):
            QUERIES.labels(transport, action.result).inc()
            return action.wire
        query = action.query
        if self.in_flight >= MAX_IN_FLIGHT:
            QUERIES.labels(transport, "busy").inc()
            return reply(query, dns.rcode.SERVFAIL).to_wire()
        self.in_flight += 1
        try:
            nameserver = await self.nameservers.current()
            if nameserver is None:
                QUERIES.labels(transport, "no_nameserver").inc()
                log.debug("TUN DNS query %s: no nameserver, SERVFAIL", query.question[0])
                return reply(query, dns.rcode.SERVFAIL).to_wire()
            try:
                response = await asyncio.wait_for(self._send(query, nameserver, transport, FORWARD_TIMEOUT),
                                                  FORWARD_TIMEOUT)
            except Exception as exc:
                QUERIES.labels(transport, "upstream_failed").inc()
                log.debug("TUN DNS query %s to %s over %s failed: %r; SERVFAIL", query.question[0],
                          _ns(nameserver), transport, exc)
                self.nameservers.forward_failed(nameserver)
                return reply(query, dns.rcode.SERVFAIL).to_wire()
            QUERIES.labels(transport, "forwarded").inc()
            return encode_answer(query, response, transport)
        finally:
            self.in_flight -= 1

    def on_datagram(self, udp: asyncio.DatagramTransport, data: bytes, addr: tuple[str | int, ...]) -> None:
        async def handle() -> None:
            wire = await self.answer(data, "udp")
            if wire is not None and not udp.is_closing():
                udp.sendto(wire, addr)

        self._spawn(handle())

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """RFC 7766: several queries per connection, answered as they complete."""
        self._writers.add(writer)
        pending: set[asyncio.Task[None]] = set()

        async def handle(wire: bytes) -> None:
            answer = await self.answer(wire, "tcp")
            if answer is not None and not writer.is_closing():
                writer.write(struct.pack("!H", len(answer)) + answer)

        try:
            while True:
                try:
                    async with asyncio.timeout(TCP_IDLE_TIMEOUT):
                        (length,) = struct.unpack("!H", await reader.readexactly(2))
                        wire = await reader.readexactly(length)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    break
                task = asyncio.ensure_future(handle(wire))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(pending, timeout=FORWARD_TIMEOUT + PROBE_TIMEOUT + 1)
        finally:
            for task in pending:
                task.cancel()
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


__all__ = ["Probe", "ProbeRound", "TunDnsServer", "classify", "encode_answer", "fastest", "header_only",
           "parse_probe_name", "probe_query", "reply"]
