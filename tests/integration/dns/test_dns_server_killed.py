"""The DNS server dies, against a real unbound (issue 12, faults: "the DNS server dies").

An A-only name and a CNAME to it, TTL 4 and SOA minimum 4, resolved through the flag-on
path; unbound is SIGKILLed; 5 s later the names are resolved again. The resolv.conf has
glibc's (and hickory's) defaults, timeout 5 s and 2 attempts, so one query to a dead server
takes the whole 10 s resolution limit: an answer that waited for the AAAA would come at the
limit, not before.

While unbound is dead a silent UDP socket takes its address and port and records what
reaches it. It answers nothing, as a killed server does: dnspython ignores the ICMP port
unreachable a dead port would send, so the resolver sees the same thing either way, and
the socket lets the test count the queries on the server side.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
from collections import Counter
from collections.abc import Iterator

import dns.message
import dns.rdatatype
import pytest
from unbound_server import Unbound, available

from gateway_pkg.dns.flags import FeatureFlags
from gateway_pkg.dns.metrics import DnsStats
from gateway_pkg.dns.resolver import build_resolver
from gateway_pkg.dns.settings import DnsSettings, FlagSettings
from gateway_pkg.dns.userspace import FAILURE_RECHECK_TIMER
from tests.procs import wait_for_async

pytestmark = pytest.mark.integration

V4 = ipaddress.IPv4Address
LIMIT = 10.0  # the resolution limit, left at its default
PROMPT = 3.0  # "well under the limit"
OUTAGE, RECOVERED = "DNS outage:", "DNS outage over:"

RECORDS = [
    "v4only.test. 4 IN A 192.0.2.44",
    "alias4.test. 4 IN CNAME v4only.test.",
]


@pytest.fixture
def server() -> Iterator[Unbound]:
    if not available():
        pytest.skip("unbound is not installed")
    unbound = Unbound(RECORDS, soa_minimum=4)
    try:
        unbound.start()
        yield unbound
    finally:
        unbound.stop()


class SilentServer:
    """Bound where the dead server was: counts each query (name, type), answers none."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.queries: Counter[tuple[str, str]] = Counter()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(address)
        self._sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._read)

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                data, _ = self._sock.recvfrom(4096)
                question = dns.message.from_wire(data).question[0]
                self.queries[(question.name.to_text(), dns.rdatatype.to_text(question.rdtype))] += 1

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()


def kill(unbound: Unbound) -> None:
    assert unbound.process is not None
    os.kill(unbound.process.pid, signal.SIGKILL)
    unbound.process.wait(timeout=10)


def messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.mark.slow
async def test_dns_server_killed_stale_a_promptly_no_aaaa_storm_and_recovery(server, clock, caplog):
    settings = DnsSettings(
        resolv_conf=str(server.write_resolv_conf(timeout=5, attempts=2)),
        hosts_file=str(server.write_hosts()),
        nameservers=(server.nameserver,),
    )
    assert settings.resolution_timeout == LIMIT
    stats = DnsStats()
    resolver = build_resolver(
        settings, FeatureFlags(FlagSettings(userspace_dns_override=True)), stats=stats, clock=clock
    )
    loop = asyncio.get_running_loop()
    names = ("v4only.test", "alias4.test")

    async def resolve_all() -> tuple[list[list[ipaddress.IPv4Address | ipaddress.IPv6Address]], float]:
        started = loop.time()
        async with asyncio.timeout(LIMIT + 5):  # a hang fails the test, not the run
            answers = await asyncio.gather(*(resolver.resolve(n) for n in names))
        return list(answers), loop.time() - started

    assert (await resolve_all())[0] == [[V4("192.0.2.44")], [V4("192.0.2.44")]]
    # v4only A + AAAA (NODATA); alias4 → v4only (unbound does not chase) for A and AAAA.
    assert server.queries() == 6

    kill(server)
    silent = SilentServer(server.nameserver)
    try:
        clock.advance(5)  # the re-authorization 5 s later: every entry, NODATA too, expired
        with caplog.at_level(logging.INFO, logger="gateway_pkg.dns"):
            answers, elapsed = await resolve_all()
            assert answers == [[V4("192.0.2.44")], [V4("192.0.2.44")]]
            # The stale answers, after the 1.8 s client response timer, well before the limit.
            assert elapsed < PROMPT < LIMIT, elapsed
            # One refresh query per (name, type) reached the dead server, no more.
            await wait_for_async(lambda: silent.queries.total() == 4, 5, "the refreshes to be sent")
            assert silent.queries == {
                ("v4only.test.", "A"): 1, ("v4only.test.", "AAAA"): 1,
                ("alias4.test.", "A"): 1, ("alias4.test.", "AAAA"): 1,
            }  # fmt: skip

            # Each refresh retries once after 5 s and gives up after 10 s: the outage line.
            await wait_for_async(lambda: messages(caplog, OUTAGE), 2 * LIMIT, "the outage line")
            assert silent.queries.total() == 8  # 2 attempts each, as resolv.conf says
            sent = stats.userspace.upstream_queries

            # Within the 30 s recheck interval nothing is asked, and answers come at once.
            for _ in range(int(FAILURE_RECHECK_TIMER) - 2):
                clock.advance(1)
                answers, elapsed = await resolve_all()
                assert answers == [[V4("192.0.2.44")], [V4("192.0.2.44")]]
                assert elapsed < PROMPT
            await asyncio.sleep(0.2)  # anything sent would have arrived by now
            assert silent.queries.total() == 8
            assert stats.userspace.upstream_queries == sent
        [outage] = messages(caplog, OUTAGE)
        assert f"{server.address}:{server.port}" in outage
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and OUTAGE not in r.getMessage()]
    finally:
        silent.close()

    # The server comes back, with a changed record.
    server.start()
    server.replace("v4only.test.", "v4only.test. 4 IN A 192.0.2.45")
    with caplog.at_level(logging.INFO, logger="gateway_pkg.dns"):
        clock.advance(3)  # past the recheck
        answers, elapsed = await resolve_all()
        assert answers == [[V4("192.0.2.45")], [V4("192.0.2.45")]]
        assert elapsed < PROMPT
    assert len(messages(caplog, RECOVERED)) == 1
    assert len(messages(caplog, OUTAGE)) == 1
    assert server.queries() == 6  # the same six queries as the first resolution
