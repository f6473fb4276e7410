"""The DNS server dies: stale answers, positive and negative, for both families, without
one family holding the other hostage; a 30 s recheck; one log line each way.

Issue 12 (faults, "the DNS server dies"): an A-only name (TTL 4, SOA minimum 4), the
server killed, a re-resolution 5 s later. The stale A was ready after the client response
timer, but the AAAA (its NODATA expired, and negative answers were never served stale)
went to the dead server and the resolution waited for it until the 10 s limit.

The fake upstream's "blackhole" mode is a dead server as dnspython sees one: nothing comes
back (an ICMP port unreachable is ignored too) until the per-try timeout, whose moment the
test picks with `upstream.time_out()`. The resolution limit stays the real 10 s default,
so "promptly" is asserted relative to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging

import pytest

from gateway_pkg.dns.base import ResolveError
from gateway_pkg.dns.cache import CacheEntry, RecordCache, plan
from gateway_pkg.dns.health import UpstreamHealth
from gateway_pkg.dns.userspace import FAILURE_RECHECK_TIMER, UserspaceResolver, wait_budget
from tests.procs import wait_for_async

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address

LIMIT = 10.0  # the resolution limit (upstream's DNS_RESOLUTION_TIMEOUT), left at its default
PROMPT = 3.0  # "well under the limit": what every answer during the outage must beat
OUTAGE = "DNS outage:"
RECOVERED = "DNS outage over:"


def make(settings, stats, clock, upstream, **changes) -> UserspaceResolver:
    return UserspaceResolver(
        dataclasses.replace(settings, **changes),
        stats.userspace,
        clock=clock,
        send=upstream,
        client_response_timer=0.05,
        family_wait=0.05,
    )


@pytest.fixture
def resolver(settings, stats, clock, upstream) -> UserspaceResolver:
    assert settings.resolution_timeout == LIMIT
    return make(settings, stats, clock, upstream)


async def timed(resolver: UserspaceResolver, name: str) -> tuple[list, float]:
    """The answer and how long it took; a hang fails at PROMPT, not at the 10 s limit."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(PROMPT):
        answer = await resolver.resolve(name)
    return answer, loop.time() - started


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def lines(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# -- the cases -------------------------------------------------------------------


async def test_a_only_name_is_served_stale_promptly_and_aaaa_not_reasked(resolver, upstream, clock, stats, caplog):
    upstream.soa = (60, 4)
    upstream.set("v4.test.", "A", 4, "192.0.2.1")
    assert await resolver.resolve("v4.test") == [V4("192.0.2.1")]
    assert upstream.queries == {("v4.test.", "A"): 1, ("v4.test.", "AAAA"): 1}

    upstream.mode = "blackhole"  # the DNS server is killed
    clock.advance(5)  # the re-authorization, 5 s later: A and the AAAA NODATA both expired
    with caplog.at_level(logging.DEBUG, logger="gateway_pkg.dns"):
        answer, elapsed = await timed(resolver, "v4.test")
        assert answer == [V4("192.0.2.1")]
        assert elapsed < PROMPT < LIMIT
        assert stats.userspace.stale_answers == 1
        assert upstream.queries == {("v4.test.", "A"): 2, ("v4.test.", "AAAA"): 2}  # one refresh each

        upstream.time_out()  # the refreshes' per-try timeouts fire: the outage is known
        await wait_for_async(lambda: lines(caplog, OUTAGE), 5, "the outage line")
        for _ in range(29):  # within the 30 s recheck neither family is asked again
            clock.advance(1)
            answer, _ = await timed(resolver, "v4.test")
            assert answer == [V4("192.0.2.1")]
        assert upstream.queries == {("v4.test.", "A"): 2, ("v4.test.", "AAAA"): 2}

        clock.advance(1.5)  # past the recheck: one more refresh per family, stale meanwhile
        answer, _ = await timed(resolver, "v4.test")
        assert answer == [V4("192.0.2.1")]
        assert upstream.queries == {("v4.test.", "A"): 3, ("v4.test.", "AAAA"): 3}
        upstream.time_out()
        await wait_for_async(lambda: not resolver._inflight, 5, "the rechecks to fail")
    assert len(lines(caplog, OUTAGE)) == 1
    assert warnings(caplog) == lines(caplog, OUTAGE)


async def test_cname_to_an_a_only_name_is_served_stale(settings, stats, clock, upstream):
    upstream.chase_cnames = False  # like unbound's local-data: we follow the chain ourselves
    upstream.soa = (60, 4)
    upstream.set("alias.test.", "CNAME", 4, "target.test.")
    upstream.set("target.test.", "A", 60, "192.0.2.7")
    resolver = make(settings, stats, clock, upstream)
    assert await resolver.resolve("alias.test") == [V4("192.0.2.7")]

    upstream.mode = "blackhole"
    clock.advance(5)  # past the CNAME's 4 s (which bounds both the A and the NODATA)
    answer, elapsed = await timed(resolver, "alias.test")
    assert answer == [V4("192.0.2.7")]
    assert elapsed < PROMPT
    asked = upstream.total()
    upstream.time_out()
    await wait_for_async(lambda: not resolver._inflight, 5, "the refreshes to fail")
    clock.advance(10)
    assert (await timed(resolver, "alias.test"))[0] == [V4("192.0.2.7")]
    assert upstream.total() == asked


async def test_negative_answers_are_served_stale_like_positive_ones(resolver, upstream, clock, stats):
    upstream.soa = (60, 3)
    with pytest.raises(ResolveError) as raised:
        await resolver.resolve("missing.test")
    assert raised.value.negative  # NXDOMAIN, cached for 3 s
    asked = upstream.total()

    upstream.mode = "fail"  # refused at once
    clock.advance(4)
    with pytest.raises(ResolveError) as raised:
        await resolver.resolve("missing.test")
    # Still the authoritative answer last seen, not "cannot resolve".
    assert raised.value.negative and "NXDOMAIN" in str(raised.value)
    assert stats.userspace.stale_answers == 1
    assert upstream.total() == asked + 2  # one refresh per family, then the recheck timer
    for _ in range(5):
        clock.advance(5)
        with pytest.raises(ResolveError) as raised:
            await resolver.resolve("missing.test")
        assert raised.value.negative
    assert upstream.total() == asked + 2

    # The server is back and the name now exists: picked up at the next recheck.
    upstream.mode = "answer"
    upstream.set("missing.test.", "A", 60, "192.0.2.3")
    clock.advance(FAILURE_RECHECK_TIMER)
    assert await resolver.resolve("missing.test") == [V4("192.0.2.3")]


async def test_one_family_is_not_held_hostage_by_the_other(resolver, upstream, clock, stats):
    """The AAAA has nothing cached (NODATA without an SOA is not cacheable) and its query
    hangs: the A that is there is returned after the family wait, not at the limit."""
    upstream.soa = None
    upstream.set("v4.test.", "A", 60, "192.0.2.1")
    assert await resolver.resolve("v4.test") == [V4("192.0.2.1")]
    upstream.mode = "blackhole"
    answer, elapsed = await timed(resolver, "v4.test")  # A fresh, AAAA asked and unanswered
    assert answer == [V4("192.0.2.1")]
    assert elapsed < PROMPT
    assert stats.userspace.partial_answers == 1

    clock.advance(61)  # now the A is stale too
    answer, elapsed = await timed(resolver, "v4.test")
    assert answer == [V4("192.0.2.1")]
    assert elapsed < PROMPT
    upstream.time_out()
    await wait_for_async(lambda: not resolver._inflight, 5, "the queries to fail")


async def test_the_late_family_is_cached_for_the_next_resolution(resolver, upstream, stats):
    upstream.set("dual.test.", "A", 60, "192.0.2.1")
    upstream.set("dual.test.", "AAAA", 60, "2001:db8::1")
    upstream.hold["AAAA"] = late = asyncio.Event()
    answer, elapsed = await timed(resolver, "dual.test")
    assert answer == [V4("192.0.2.1")]  # the AAAA missed the family wait
    assert elapsed < PROMPT
    assert stats.userspace.partial_answers == 1
    late.set()  # its query went on in the background and lands in the cache
    await wait_for_async(lambda: not resolver._inflight, 5, "the AAAA answer")
    assert await resolver.resolve("dual.test") == [V4("192.0.2.1"), V6("2001:db8::1")]
    assert upstream.queries == {("dual.test.", "A"): 1, ("dual.test.", "AAAA"): 1}


async def test_no_address_at_all_still_waits_for_the_limit(settings, stats, clock, upstream):
    resolver = make(settings, stats, clock, upstream, resolution_timeout=0.3)
    upstream.mode = "blackhole"
    with pytest.raises(ResolveError, match="timed out"):
        await resolver.resolve("new.test")  # nothing cached, nothing to return early
    upstream.time_out()
    await wait_for_async(lambda: not resolver._inflight, 5, "the queries to fail")


async def test_servfail_is_a_broken_name_not_an_outage(resolver, upstream, clock, stats, caplog):
    upstream.set("app.test.", "A", 5, "192.0.2.1")
    upstream.set("app.test.", "AAAA", 5, "2001:db8::1")
    await resolver.resolve("app.test")
    upstream.mode = "servfail"  # the server answers, only not usably
    clock.advance(6)
    with caplog.at_level(logging.DEBUG, logger="gateway_pkg.dns"):
        assert await resolver.resolve("app.test") == [V4("192.0.2.1"), V6("2001:db8::1")]
        asked = upstream.total()
        clock.advance(10)
        assert await resolver.resolve("app.test") == [V4("192.0.2.1"), V6("2001:db8::1")]
    assert upstream.total() == asked  # the recheck timer holds for SERVFAIL too
    assert stats.userspace.stale_answers == 2
    assert not warnings(caplog) and not lines(caplog, OUTAGE)
    assert resolver.health.outage is None


async def test_one_warning_for_the_outage_and_one_line_for_the_recovery(resolver, upstream, clock, stats, caplog):
    names = [f"n{i}.test." for i in range(5)]
    for name in names:
        upstream.set(name, "A", 5, "192.0.2.1")
        upstream.set(name, "AAAA", 5, "2001:db8::1")
        await resolver.resolve(name)
    upstream.mode = "fail"
    clock.advance(6)
    with caplog.at_level(logging.DEBUG, logger="gateway_pkg.dns"):
        for _ in range(3):
            for name in names:
                answer, elapsed = await timed(resolver, name)
                assert answer == [V4("192.0.2.1"), V6("2001:db8::1")]
                assert elapsed < PROMPT
            clock.advance(5)
        assert upstream.total() == 2 * len(names) + 2 * len(names)  # one refresh per entry
        [outage] = lines(caplog, OUTAGE)
        assert "192.0.2.53:53" in outage and "30 s" in outage
        assert warnings(caplog) == [outage]  # ten failed refreshes, one line

        # The server is back. A name asked for the first time finds it answering ...
        upstream.mode = "answer"
        upstream.set("new.test.", "A", 5, "192.0.2.9")
        assert await resolver.resolve("new.test") == [V4("192.0.2.9")]
        [recovered] = lines(caplog, RECOVERED)
        assert "192.0.2.53:53" in recovered and "15 stale answers" in recovered
        # ... and the stale names are refreshed at their next resolution, not only when
        # their own 30 s recheck timers run out.
        for name in names:
            upstream.set(name, "A", 5, "192.0.2.2")
        for name in names:
            assert await resolver.resolve(name) == [V4("192.0.2.2"), V6("2001:db8::1")]
    assert len(lines(caplog, OUTAGE)) == 1 and len(lines(caplog, RECOVERED)) == 1


async def test_known_outage_serves_other_names_stale_at_once(settings, stats, clock, upstream, caplog):
    """After the outage is known, another name's stale answer does not wait for the client
    response timer: its refresh goes on in the background."""
    resolver = UserspaceResolver(settings, stats.userspace, clock=clock, send=upstream)  # real 1.8 s timers
    for name in ("a.test", "b.test"):
        upstream.set(name + ".", "A", 5, "192.0.2.1")
        upstream.set(name + ".", "AAAA", 5, "2001:db8::1")
        await resolver.resolve(name)
    upstream.mode = "fail"
    clock.advance(6)
    with caplog.at_level(logging.WARNING, logger="gateway_pkg.dns"):
        await resolver.resolve("a.test")  # the refreshes fail: the outage is known
    assert lines(caplog, OUTAGE)
    upstream.mode = "blackhole"
    asked = upstream.total()
    answer, elapsed = await timed(resolver, "b.test")
    assert answer == [V4("192.0.2.1"), V6("2001:db8::1")]
    assert elapsed < 1.8  # no timer waited for
    await wait_for_async(lambda: upstream.total() == asked + 2, 5, "the refreshes to be sent anyway")
    upstream.time_out()
    await wait_for_async(lambda: not resolver._inflight, 5, "the refreshes to fail")


# -- the sans-I/O decisions ----------------------------------------------------------------


def entry(expires: float, stale_until: float, retry_after: float = float("-inf"), negative=None) -> CacheEntry:
    return CacheEntry((), negative, 5.0, expires, stale_until, retry_after)


@pytest.mark.parametrize(
    ("cached", "now", "down", "action"),
    [
        (None, 0.0, False, "query"),
        (None, 0.0, True, "query"),  # nothing to serve: asking is the only chance
        (entry(10, 100), 5.0, True, "fresh"),
        (entry(10, 100), 20.0, False, "refresh"),
        (entry(10, 100, negative="nodata"), 20.0, False, "refresh"),  # negatives go stale too
        (entry(10, 100), 20.0, True, "stale_and_refresh"),
        (entry(10, 100, retry_after=30), 20.0, False, "stale"),
        (entry(10, 100, retry_after=30), 20.0, True, "stale"),
        (entry(10, 100, retry_after=30), 30.0, False, "refresh"),
        (entry(10, 100), 100.0, False, "query"),  # past the maximum stale age
        (entry(10, 10), 10.0, True, "query"),  # FIREZONE_DNS_MAX_STALE=0: never stale
        (entry(10, 100, negative="nxdomain"), 100.0, True, "query"),
    ],
)
def test_plan(cached, now, down, action):
    assert plan(cached, now, upstream_down=down) == action


def test_negative_entries_keep_the_stale_window():
    cache = RecordCache(10, 0, 100, 50)
    stored = cache.store_negative(("x", 1), "nodata", 4, 10.0)
    assert (stored.expires, stored.stale_until) == (14.0, 64.0)


def test_clear_rechecks():
    cache = RecordCache(10, 0, 100, 50)
    stored = cache.store_positive(("x", 1), (), 4, 10.0)
    stored.retry_after = 99.0
    cache.clear_rechecks()
    assert stored.retry_after == float("-inf")


@pytest.mark.parametrize(
    ("elapsed", "have", "budget"),
    [
        (0.0, False, 10.0),  # nothing yet: up to the limit
        (0.0, True, 1.8),  # an answer already: the other family gets the family wait
        (1.0, True, 0.8),
        (2.5, True, -0.7),  # answered after the family wait: return at once
        (9.0, False, 1.0),
    ],
)
def test_wait_budget(elapsed, have, budget):
    assert wait_budget(elapsed, have, family_wait=1.8, limit=10.0) == pytest.approx(budget)


def test_wait_budget_never_beyond_the_limit():
    assert wait_budget(0.0, True, family_wait=20.0, limit=10.0) == 10.0


def test_health_one_transition_each_way():
    health = UpstreamHealth(recheck=30.0)
    assert not health.is_down(0.0)
    assert health.failed(started=0.0, now=5.0, reason="timeout") is True
    assert health.failed(started=1.0, now=6.0, reason="timeout") is False  # already down
    assert health.is_down(6.0) and health.is_down(35.9)
    assert not health.is_down(36.1)  # no news for a recheck interval: try normally again
    outage = health.answered(now=40.0)
    assert outage is not None and outage.since == 5.0 and outage.duration(40.0) == 35.0
    assert health.answered(now=41.0) is None
    assert not health.is_down(41.0)


def test_health_a_slow_name_is_not_an_outage():
    """A query that timed out while other queries were being answered says the name is
    slow (say, its authoritative servers are), not that the server is down."""
    health = UpstreamHealth(recheck=30.0)
    assert health.answered(now=3.0) is None
    assert health.failed(started=1.0, now=6.0, reason="timeout") is False
    assert not health.is_down(6.0)
    assert health.failed(started=4.0, now=9.0, reason="timeout") is True


async def test_a_slow_refresh_is_served_stale_when_the_family_wait_ends_too(settings, stats, clock, upstream):
    """The A is fresh, the AAAA expired and its refresh hangs; the family wait and the client
    response timer end together (both 1.8 s by default): the stale AAAA is served with the A,
    not dropped as unanswered."""
    resolver = UserspaceResolver(
        settings, stats.userspace, clock=clock, send=upstream, client_response_timer=0.05, family_wait=0.05
    )
    upstream.set("dual.test.", "A", 600, "192.0.2.1")
    upstream.set("dual.test.", "AAAA", 5, "2001:db8::1")
    await resolver.resolve("dual.test")
    clock.advance(6)
    upstream.hold["AAAA"] = asyncio.Event()  # never set: the refresh hangs
    answer, elapsed = await timed(resolver, "dual.test")
    assert answer == [V4("192.0.2.1"), V6("2001:db8::1")]
    assert elapsed < PROMPT
    assert stats.userspace.stale_answers == 1 and stats.userspace.partial_answers == 0
    asked = upstream.total()
    assert await resolver.resolve("dual.test") == [V4("192.0.2.1"), V6("2001:db8::1")]
    assert upstream.total() == asked  # the recheck timer runs: served stale without asking
