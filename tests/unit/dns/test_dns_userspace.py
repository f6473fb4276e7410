"""The user-space path against a fake upstream and a fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging

import dns.rdatatype
import pytest

from gateway_pkg.dns.base import ResolveError
from gateway_pkg.dns.userspace import UserspaceResolver
from tests.procs import wait_for_async
from tests.unit.dns.conftest import FakeUpstream

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


@pytest.fixture
def resolver(settings, stats, clock, upstream) -> UserspaceResolver:
    return UserspaceResolver(settings, stats.userspace, clock=clock, send=upstream, client_response_timer=0.05)


def make(settings, stats, clock, upstream, **changes) -> UserspaceResolver:
    return UserspaceResolver(
        dataclasses.replace(settings, **changes),
        stats.userspace,
        clock=clock,
        send=upstream,
        client_response_timer=0.05,
    )


async def test_a_and_aaaa_are_both_returned(resolver, upstream):
    upstream.set("dual.test.", "A", 60, "192.0.2.1")
    upstream.set("dual.test.", "AAAA", 60, "2001:db8::1")
    assert await resolver.resolve("dual.test") == [V4("192.0.2.1"), V6("2001:db8::1")]
    assert upstream.queries == {("dual.test.", "A"): 1, ("dual.test.", "AAAA"): 1}


async def test_a_only_and_aaaa_only_names(resolver, upstream, stats):
    upstream.set("v4.test.", "A", 60, "192.0.2.1", "192.0.2.2")
    upstream.set("v6.test.", "AAAA", 60, "2001:db8::6")
    assert await resolver.resolve("v4.test") == [V4("192.0.2.1"), V4("192.0.2.2")]
    assert await resolver.resolve("v6.test") == [V6("2001:db8::6")]
    # The NODATA halves are cached too (SOA present), so repeats are pure hits.
    before = upstream.total()
    assert await resolver.resolve("v4.test") == [V4("192.0.2.1"), V4("192.0.2.2")]
    assert await resolver.resolve("V6.TEST") == [V6("2001:db8::6")]
    assert upstream.total() == before
    assert stats.userspace.cache_hits == 2


async def test_served_from_cache_within_ttl_and_refreshed_after(resolver, upstream, clock):
    upstream.set("app.test.", "A", 5, "192.0.2.1")
    assert await resolver.resolve("app.test") == [V4("192.0.2.1")]
    upstream.set("app.test.", "A", 5, "192.0.2.99")
    clock.advance(4.9)
    assert await resolver.resolve("app.test") == [V4("192.0.2.1")]
    assert upstream.queries[("app.test.", "A")] == 1
    clock.advance(0.2)
    assert await resolver.resolve("app.test") == [V4("192.0.2.99")]
    assert upstream.queries[("app.test.", "A")] == 2


@pytest.mark.parametrize(
    ("record_ttl", "min_ttl", "max_ttl", "applied"),
    [(1, 10.0, 86400.0, 10.0), (3600, 0.0, 20.0, 20.0), (7, 0.0, 86400.0, 7.0)],
)
async def test_ttl_clamps(settings, stats, clock, upstream, record_ttl, min_ttl, max_ttl, applied):
    resolver = make(settings, stats, clock, upstream, min_ttl=min_ttl, max_ttl=max_ttl)
    upstream.set("clamp.test.", "A", record_ttl, "192.0.2.1")
    await resolver.resolve("clamp.test")
    clock.advance(applied - 0.01)
    await resolver.resolve("clamp.test")
    assert upstream.queries[("clamp.test.", "A")] == 1
    clock.advance(0.02)
    await resolver.resolve("clamp.test")
    assert upstream.queries[("clamp.test.", "A")] == 2


async def test_cname_chain_uses_the_minimum_ttl(resolver, upstream, clock):
    upstream.set("alias.test.", "CNAME", 30, "mid.test.")
    upstream.set("mid.test.", "CNAME", 4, "app.test.")
    upstream.set("app.test.", "A", 60, "192.0.2.7")
    assert await resolver.resolve("alias.test") == [V4("192.0.2.7")]
    clock.advance(3.9)
    await resolver.resolve("alias.test")
    assert upstream.queries[("alias.test.", "A")] == 1
    clock.advance(0.2)
    await resolver.resolve("alias.test")
    assert upstream.queries[("alias.test.", "A")] == 2


async def test_unfinished_cname_chain_is_chased(resolver, upstream, clock):
    upstream.chase_cnames = False  # like unbound's local-data
    upstream.set("alias.test.", "CNAME", 30, "app.test.")
    upstream.set("app.test.", "A", 3, "192.0.2.7")
    assert await resolver.resolve("alias.test") == [V4("192.0.2.7")]
    assert upstream.queries[("app.test.", "A")] == 1
    clock.advance(2.9)
    await resolver.resolve("alias.test")
    assert upstream.queries[("app.test.", "A")] == 1
    clock.advance(0.2)
    await resolver.resolve("alias.test")
    assert upstream.queries[("app.test.", "A")] == 2


async def test_nxdomain_is_cached_for_min_of_soa_ttl_and_minimum(resolver, upstream, clock, stats):
    upstream.soa = (8, 3)  # min(8, 3) = 3 s
    with pytest.raises(ResolveError) as raised:
        await resolver.resolve("missing.test")
    assert raised.value.negative
    asked = upstream.total()
    clock.advance(2.9)
    with pytest.raises(ResolveError):
        await resolver.resolve("missing.test")
    assert upstream.total() == asked
    assert stats.userspace.negative_hits >= 1
    upstream.set("missing.test.", "A", 60, "192.0.2.3")
    clock.advance(0.2)
    assert await resolver.resolve("missing.test") == [V4("192.0.2.3")]


async def test_soa_ttl_smaller_than_minimum_wins(resolver, upstream, clock):
    upstream.soa = (2, 50)
    with pytest.raises(ResolveError):
        await resolver.resolve("missing.test")
    upstream.set("missing.test.", "A", 60, "192.0.2.3")
    clock.advance(2.1)
    assert await resolver.resolve("missing.test") == [V4("192.0.2.3")]


async def test_nodata_is_cached_per_type(resolver, upstream, clock):
    upstream.soa = (60, 4)
    upstream.set("v4.test.", "A", 600, "192.0.2.1")
    await resolver.resolve("v4.test")
    upstream.set("v4.test.", "AAAA", 600, "2001:db8::1")
    clock.advance(3.9)
    assert await resolver.resolve("v4.test") == [V4("192.0.2.1")]
    clock.advance(0.2)
    assert await resolver.resolve("v4.test") == [V4("192.0.2.1"), V6("2001:db8::1")]
    assert upstream.queries[("v4.test.", "A")] == 1
    assert upstream.queries[("v4.test.", "AAAA")] == 2


async def test_negative_answer_without_soa_is_not_cached(resolver, upstream):
    upstream.soa = None
    for _ in range(3):
        with pytest.raises(ResolveError):
            await resolver.resolve("missing.test")
    assert upstream.queries[("missing.test.", "A")] == 3


async def test_concurrent_lookups_share_one_query_per_type(resolver, upstream, stats):
    upstream.set("busy.test.", "A", 60, "192.0.2.1")
    upstream.set("busy.test.", "AAAA", 60, "2001:db8::1")
    upstream.release = asyncio.Event()
    lookups = [asyncio.create_task(resolver.resolve("busy.test")) for _ in range(1000)]
    # While upstream holds its answer, all 1000 are waiting on the same two queries.
    await wait_for_async(lambda: stats.userspace.coalesced == 2 * 999, 10, "every lookup to join the two queries")
    assert upstream.total() == 2
    upstream.release.set()
    results = await asyncio.gather(*lookups)
    assert all(r == [V4("192.0.2.1"), V6("2001:db8::1")] for r in results)
    assert upstream.queries == {("busy.test.", "A"): 1, ("busy.test.", "AAAA"): 1}
    assert stats.userspace.coalesced == 2 * 999
    assert stats.userspace.upstream_queries == 2


async def test_stale_answer_when_refresh_fails_and_recheck_after_30s(resolver, upstream, clock, stats, caplog):
    upstream.set("app.test.", "A", 5, "192.0.2.1")
    upstream.set("app.test.", "AAAA", 5, "2001:db8::1")
    await resolver.resolve("app.test")
    upstream.mode = "fail"
    clock.advance(6)
    with caplog.at_level(logging.DEBUG, logger="gateway_pkg.dns"):
        assert await resolver.resolve("app.test") == [V4("192.0.2.1"), V6("2001:db8::1")]
    # Per query at DEBUG; the one WARNING is for the outage as a whole (test_dns_outage.py).
    assert "serving the answer that expired" in caplog.text
    assert [r.getMessage()[:12] for r in caplog.records if r.levelno >= logging.WARNING] == ["DNS outage: "]
    assert upstream.total() == 4  # one failed refresh per family
    for _ in range(29):
        clock.advance(1)
        assert await resolver.resolve("app.test") == [V4("192.0.2.1"), V6("2001:db8::1")]
    assert upstream.total() == 4, "the failing upstream must not be retried within 30 s"
    clock.advance(1.1)
    await resolver.resolve("app.test")
    assert upstream.total() == 6
    assert stats.userspace.stale_answers == 31


async def test_slow_refresh_serves_stale_after_client_response_timer(resolver, upstream, clock, stats):
    upstream.set("app.test.", "A", 5, "192.0.2.1")
    upstream.set("app.test.", "AAAA", 5, "2001:db8::1")
    await resolver.resolve("app.test")
    upstream.release = asyncio.Event()  # the refresh gets no answer until the test says so
    clock.advance(6)
    # Only the client response timer (0.05 s here, 1.8 s by default) can end this wait: the
    # refresh hangs, and the outer resolution timeout is 10 s. No wall-clock bound needed.
    assert await resolver.resolve("app.test") == [V4("192.0.2.1"), V6("2001:db8::1")]
    assert stats.userspace.stale_answers == 1
    assert upstream.total() == 4  # the refresh of both families was asked and is still out
    # The refresh goes on in the background; when it answers, its answer replaces the stale one.
    upstream.set("app.test.", "A", 5, "192.0.2.2")
    upstream.release.set()

    async def refreshed() -> bool:
        return await resolver.resolve("app.test") == [V4("192.0.2.2"), V6("2001:db8::1")]

    await wait_for_async(refreshed, 10, "the late refresh to land in the cache")
    assert upstream.total() == 4


async def test_nothing_stale_after_max_stale_age(settings, stats, clock, upstream):
    resolver = make(settings, stats, clock, upstream, max_stale_age=100.0)
    upstream.set("app.test.", "A", 5, "192.0.2.1")
    await resolver.resolve("app.test")
    upstream.mode = "fail"
    clock.advance(5 + 99)
    assert await resolver.resolve("app.test") == [V4("192.0.2.1")]
    clock.advance(2)
    with pytest.raises(ResolveError) as raised:
        await resolver.resolve("app.test")
    assert not raised.value.negative


async def test_hosts_file_is_consulted_first(settings, stats, clock, upstream, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("192.0.2.10 pinned.test\n2001:db8::10 pinned.test\n")
    resolver = make(settings, stats, clock, upstream, hosts_file=str(hosts))
    upstream.set("pinned.test.", "A", 60, "192.0.2.99")
    assert await resolver.resolve("pinned.test") == [V4("192.0.2.10"), V6("2001:db8::10")]
    assert upstream.total() == 0


async def test_outer_timeout(settings, stats, clock, upstream):
    resolver = make(settings, stats, clock, upstream, resolution_timeout=0.05)
    upstream.release = asyncio.Event()  # never set: the upstream never answers
    with pytest.raises(ResolveError, match="timed out"):
        await resolver.resolve("slow.test")


async def test_servfail_is_an_error_not_a_negative_answer(resolver, upstream, stats):
    upstream.mode = "servfail"
    with pytest.raises(ResolveError) as raised:
        await resolver.resolve("broken.test")
    assert not raised.value.negative
    assert stats.userspace.upstream_errors == 2


async def test_search_list_and_ndots(settings, stats, clock, upstream, tmp_path):
    resolv = tmp_path / "resolv-search.conf"
    resolv.write_text("nameserver 192.0.2.53\nsearch corp.test\noptions ndots:1\n")
    resolver = make(settings, stats, clock, upstream, resolv_conf=str(resolv))
    upstream.set("app.corp.test.", "A", 60, "192.0.2.5")
    assert await resolver.resolve("app") == [V4("192.0.2.5")]


async def test_invalid_name_is_a_resolve_error(resolver):
    with pytest.raises(ResolveError, match="invalid domain name"):
        await resolver.resolve("a" * 300 + ".test")


async def test_lru_bound(settings, stats, clock, upstream):
    resolver = make(settings, stats, clock, upstream, cache_size=4)
    for i in range(10):
        upstream.set(f"n{i}.test.", "A", 600, f"192.0.2.{i + 1}")
        await resolver.resolve(f"n{i}.test")
    assert len(resolver.cache) == 8  # 4 names, each with an A and an AAAA entry


async def test_debug_line_names_path_and_ttl(resolver, upstream, caplog):
    upstream.set("app.test.", "A", 42, "192.0.2.1")
    with caplog.at_level(logging.DEBUG, logger="gateway_pkg.dns"):
        await resolver.resolve("app.test")
        await resolver.resolve("app.test")
    lines = [r.getMessage() for r in caplog.records if "resolved app.test" in r.getMessage()]
    assert "userspace path from upstream" in lines[0] and "ttl 30.0 s" in lines[0]
    assert "userspace path from the cache, ttl 30.0 s left" in lines[1]


async def test_cache_hits_keep_a_name_recently_used(settings, stats, clock, upstream):
    resolver = make(settings, stats, clock, upstream, cache_size=2)
    for name in ("a", "b", "c"):
        upstream.set(f"{name}.test.", "A", 600, "192.0.2.1")
        upstream.set(f"{name}.test.", "AAAA", 600, "2001:db8::1")
    await resolver.resolve("a.test")
    await resolver.resolve("b.test")
    await resolver.resolve("a.test")  # a hit: a is now the most recently used name
    await resolver.resolve("c.test")  # evicts b, not a
    asked = upstream.total()
    await resolver.resolve("a.test")
    assert upstream.total() == asked
    await resolver.resolve("b.test")
    assert upstream.total() == asked + 2


async def test_a_query_that_just_finished_is_not_joined_by_the_next_lookup(settings, stats, clock):
    """The AAAA answer lands one loop iteration after the A, just before the resolution
    resumes; the next resolution, at once and past the TTL, must ask again rather than take
    that finished query for one still in flight."""

    class AaaaRightAfterA(FakeUpstream):
        async def __call__(self, query, nameserver, seconds):
            if query.question[0].rdtype == dns.rdatatype.A:
                asyncio.get_running_loop().call_soon(self.hold["AAAA"].set)
            return await super().__call__(query, nameserver, seconds)

    upstream = AaaaRightAfterA()
    resolver = make(settings, stats, clock, upstream)
    upstream.set("dual.test.", "A", 5, "192.0.2.1")
    upstream.set("dual.test.", "AAAA", 5, "2001:db8::1")
    upstream.hold["AAAA"] = asyncio.Event()
    assert await resolver.resolve("dual.test") == [V4("192.0.2.1"), V6("2001:db8::1")]
    upstream.set("dual.test.", "AAAA", 5, "2001:db8::2")
    upstream.hold["AAAA"] = asyncio.Event()
    clock.advance(6)
    assert await resolver.resolve("dual.test") == [V4("192.0.2.1"), V6("2001:db8::2")]
    assert upstream.queries == {("dual.test.", "A"): 2, ("dual.test.", "AAAA"): 2}
    assert stats.userspace.coalesced == 0
