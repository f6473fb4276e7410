"""The flag-off path: getaddrinfo, a fixed 30 s cache, coalescing."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
import threading

import pytest

from gateway_pkg.dns.base import ResolveError
from gateway_pkg.dns.legacy import LegacyResolver, getaddrinfo_lookup
from tests.procs import wait_for_async

V4, V6 = ipaddress.IPv4Address, ipaddress.IPv6Address


class FakeSystem:
    def __init__(self) -> None:
        self.answers: dict[tuple[str, int], list] = {}
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def __call__(self, name: str, family: int):
        with self.lock:
            self.calls += 1
        self.gate.wait(5)
        try:
            return self.answers[(name, family)]
        except KeyError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None


@pytest.fixture
def system() -> FakeSystem:
    return FakeSystem()


def legacy(settings, stats, clock, system, **changes) -> LegacyResolver:
    return LegacyResolver(dataclasses.replace(settings, **changes), stats.legacy, clock=clock, system_lookup=system)


async def test_fixed_ttl_regardless_of_record_ttl(settings, stats, clock, system):
    resolver = legacy(settings, stats, clock, system)
    system.answers[("app.test", socket.AF_INET)] = [V4("192.0.2.1")]
    system.answers[("app.test", socket.AF_INET6)] = [V6("2001:db8::1")]
    assert await resolver.resolve("app.test") == [V6("2001:db8::1"), V4("192.0.2.1")]
    system.answers[("app.test", socket.AF_INET)] = [V4("192.0.2.2")]
    clock.advance(29.9)
    assert await resolver.resolve("app.test") == [V6("2001:db8::1"), V4("192.0.2.1")]
    assert system.calls == 2
    clock.advance(0.2)
    assert await resolver.resolve("app.test") == [V6("2001:db8::1"), V4("192.0.2.2")]
    assert system.calls == 4


async def test_injectable_ttl(settings, stats, clock, system):
    resolver = legacy(settings, stats, clock, system, legacy_ttl=2.0)
    system.answers[("app.test", socket.AF_INET)] = [V4("192.0.2.1")]
    await resolver.resolve("app.test")
    clock.advance(2.1)
    await resolver.resolve("app.test")
    assert system.calls == 4


async def test_failures_are_not_cached_and_one_family_is_enough(settings, stats, clock, system):
    resolver = legacy(settings, stats, clock, system)
    with pytest.raises(ResolveError) as raised:
        await resolver.resolve("missing.test")
    assert raised.value.negative
    with pytest.raises(ResolveError):
        await resolver.resolve("missing.test")
    assert system.calls == 4
    system.answers[("v6.test", socket.AF_INET6)] = [V6("2001:db8::6")]
    assert await resolver.resolve("v6.test") == [V6("2001:db8::6")]


async def test_concurrent_lookups_coalesce(settings, stats, clock, system):
    resolver = legacy(settings, stats, clock, system)
    system.answers[("busy.test", socket.AF_INET)] = [V4("192.0.2.1")]
    system.gate.clear()
    lookups = [asyncio.create_task(resolver.resolve("busy.test")) for _ in range(1000)]
    # While getaddrinfo blocks, all 1000 are waiting on the same two calls.
    await wait_for_async(lambda: stats.legacy.coalesced == 999 and system.calls == 2, 10,
                         "every lookup to join the two getaddrinfo calls")
    system.gate.set()
    assert all(r == [V4("192.0.2.1")] for r in await asyncio.gather(*lookups))
    assert system.calls == 2
    assert stats.legacy.coalesced == 999


async def test_timeout(settings, stats, clock, system):
    resolver = legacy(settings, stats, clock, system, resolution_timeout=0.05)
    system.gate.clear()
    with pytest.raises(ResolveError, match="timed out"):
        await resolver.resolve("slow.test")
    system.gate.set()


def test_real_getaddrinfo_of_localhost_literal():
    assert getaddrinfo_lookup("127.0.0.1", socket.AF_INET) == [V4("127.0.0.1")]
