"""The flag-on path: A and AAAA resolved with dnspython and cached for their TTL.

A resolution asks A and AAAA concurrently and returns both (upstream's first version
asked AAAA only when A was empty; that lost IPv6 on dual-stack names). Each family
goes: /etc/hosts → fresh cache entry → stale entry, positive or negative, with a refresh
(RFC 8767) → one shared upstream query per (name, type), however many callers wait for it.

Neither family holds the other hostage: once one has addresses, the other is waited for
only until FAMILY_WAIT after the start of the resolution; its query goes on in the
background and lands in the cache for the next resolution. When the upstream servers
stop answering, one line is logged for the outage and one when it ends (dns/health.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections.abc import Callable
from functools import partial
from typing import Literal

import dns.exception
import dns.name
import dns.rdatatype

from gateway_pkg.dns.answer import Positive
from gateway_pkg.dns.base import IPAddress, ResolveError
from gateway_pkg.dns.cache import CacheEntry, CacheKey, RecordCache, plan
from gateway_pkg.dns.health import UpstreamHealth
from gateway_pkg.dns.metrics import LATENCY_BUCKETS, PathStats
from gateway_pkg.dns.settings import DnsSettings
from gateway_pkg.dns.sysconf import HostsFile, load_resolv_conf
from gateway_pkg.dns.upstream import SendQuery, Upstream, UpstreamError, send_udp_with_tcp_fallback

logger = logging.getLogger("gateway_pkg.dns")

A = int(dns.rdatatype.A)
AAAA = int(dns.rdatatype.AAAA)
FAMILIES = (A, AAAA)
_RDATATYPES = {A: dns.rdatatype.A, AAAA: dns.rdatatype.AAAA}
_DEBUG = logging.DEBUG
_perf_counter = time.perf_counter

# RFC 8767 §5 recommendations.
CLIENT_RESPONSE_TIMER = 1.8  # answer with stale data if the refresh takes longer
FAILURE_RECHECK_TIMER = 30.0  # after a failed refresh, serve stale without asking
# Once one family has addresses, how long (from the start of the resolution) the other
# may still keep the answer waiting. The client response timer's 1.8 s: a stale answer
# is ready by then, and a healthy upstream answers both families well within it.
FAMILY_WAIT = CLIENT_RESPONSE_TIMER

Source = Literal["hosts", "cache", "stale", "upstream"]
LookupResult = tuple[CacheEntry, Source] | BaseException


def wait_budget(elapsed: float, have_addresses: bool, *, family_wait: float, limit: float) -> float:
    """How much longer a resolution `elapsed` seconds old may wait for its unanswered
    families (0 or less: return now). With addresses from one family in hand, until
    `family_wait`; with none, until the resolution `limit`."""
    end = min(family_wait, limit) if have_addresses else limit
    return end - elapsed


class UserspaceResolver:
    path = "userspace"

    def __init__(
        self,
        settings: DnsSettings,
        stats: PathStats,
        *,
        clock: Callable[[], float] = time.monotonic,
        send: SendQuery = send_udp_with_tcp_fallback,
        client_response_timer: float = CLIENT_RESPONSE_TIMER,
        failure_recheck_timer: float = FAILURE_RECHECK_TIMER,
        family_wait: float = FAMILY_WAIT,
    ) -> None:
        self._stats = stats
        self._clock = clock
        self._timeout = settings.resolution_timeout
        self._max_stale_age = settings.max_stale_age
        self._client_response_timer = client_response_timer
        self._failure_recheck_timer = failure_recheck_timer
        self._family_wait = family_wait
        self.upstream = Upstream(load_resolv_conf(settings.resolv_conf, settings.nameservers), stats, send)
        self.hosts = HostsFile(settings.hosts_file, clock)
        # FIREZONE_DNS_CACHE_SIZE counts names; each name holds an A and an AAAA entry.
        self.cache = RecordCache(2 * settings.cache_size, settings.min_ttl, settings.max_ttl, settings.max_stale_age)
        self.health = UpstreamHealth(failure_recheck_timer)
        self._entries = self.cache.entries  # read directly on the hot path (resolve)
        self._stale_before_outage = 0
        self._inflight: dict[CacheKey, asyncio.Task[CacheEntry]] = {}

    async def resolve(self, name: str) -> list[IPAddress]:
        started = _perf_counter()
        key = name.lower()
        now = self._clock()
        if now >= self.hosts.next_check:
            self._check_hosts(now)
        # The hot path: both families fresh in the cache. Names in /etc/hosts never have
        # cache entries (_check_hosts drops them), so no hosts lookup is needed here. The
        # cache's dict is read directly (no method calls, no objects but the two keys and
        # the answer list); both entries are marked most recently used, A first, as
        # RecordCache.get would.
        entries = self._entries
        k4 = (key, A)
        v4 = entries.get(k4)
        if v4 is not None and now < v4.expires:
            k6 = (key, AAAA)
            v6 = entries.get(k6)
            if v6 is not None and now < v6.expires and (v4.addresses or v6.addresses):
                entries.move_to_end(k4)
                entries.move_to_end(k6)
                stats = self._stats
                stats.cache_hits += 1
                if v4.negative or v6.negative:
                    stats.negative_hits += 1
                elapsed = _perf_counter() - started  # PathStats.observe_latency, inlined
                stats.latency_buckets[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
                stats.latency_count += 1
                stats.latency_sum += elapsed
                if logger.isEnabledFor(_DEBUG):
                    logger.debug(
                        "resolved %s on the userspace path from the cache, ttl %.1f s left",
                        name, min(v4.expires, v6.expires) - now,
                    )  # fmt: skip
                return [*v4.addresses, *v6.addresses]
        return await self._resolve_slowly(name, key, started)

    def _check_hosts(self, now: float) -> None:
        if not self.hosts.check(now):
            return
        table = self.hosts.table
        for bare in (*table.v4, *table.v6):
            for key in (bare, bare + "."):
                for rdtype in FAMILIES:
                    self.cache.remove((key, rdtype))

    async def _resolve_slowly(self, name: str, key: str, started: float) -> list[IPAddress]:
        try:
            dns.name.from_text(key)
        except dns.exception.DNSException as error:
            raise ResolveError(f"invalid domain name {name!r}: {error}") from None
        loop = asyncio.get_running_loop()
        begun = loop.time()
        # Each family is either answered at once (hosts, cache, stale) or waits on its
        # upstream query, with the stale entry to fall back on when it is a refresh. No
        # task per family: the resolution waits on the query tasks themselves. Those are
        # never cancelled here; a family given up on keeps its query going, and the answer
        # lands in the cache for the next resolution.
        results: dict[int, LookupResult] = {}
        waiting: dict[int, tuple[asyncio.Task[CacheEntry], CacheEntry | None]] = {}
        refreshing = False  # a refresh started in the background, its stale entry served
        for rdtype in FAMILIES:
            outcome = self._lookup(key, rdtype)
            if isinstance(outcome, tuple):
                results[rdtype] = outcome
            elif outcome.serve_now:
                assert outcome.stale is not None
                results[rdtype] = outcome.stale, "stale"
                refreshing = True
            else:
                waiting[rdtype] = (outcome.query, outcome.stale)
        if refreshing and not waiting:
            # Nothing to wait for, but one loop iteration: the background refresh is on its
            # way upstream before the stale answer is returned.
            await asyncio.sleep(0)
        # A refresh is waited for up to the client response timer, then its stale entry
        # is served (RFC 8767); the refresh goes on.
        stale_at = begun + self._client_response_timer
        while waiting:
            clock = loop.time()
            for rdtype, (query, stale) in list(waiting.items()):
                if query.done():
                    results[rdtype] = _settled(query, stale)
                    del waiting[rdtype]
                elif stale is not None and clock >= stale_at:
                    results[rdtype] = self._stale_after_timer(key, rdtype, stale)
                    del waiting[rdtype]
            if not waiting:
                break
            budget = wait_budget(
                clock - begun, _has_addresses(results), family_wait=self._family_wait, limit=self._timeout
            )
            if budget <= 0:
                break
            if any(stale is not None for _, stale in waiting.values()):
                budget = min(budget, stale_at - clock)
            await asyncio.wait(
                [query for query, _ in waiting.values()], timeout=budget, return_when=asyncio.FIRST_COMPLETED
            )
        if waiting and not _has_addresses(results):
            self._stats.cache_misses += 1
            self._stats.observe_latency(_perf_counter() - started)
            raise ResolveError(f"resolving {name} timed out after {self._timeout:g} s")
        return self._combine(name, results, started)

    def _combine(self, name: str, results: dict[int, LookupResult], started: float) -> list[IPAddress]:
        stats = self._stats
        addresses: list[IPAddress] = []
        sources: set[Source] = set()
        negatives: set[str] = set()
        errors: list[str] = []
        unanswered: list[str] = []
        now = self._clock()
        remaining = float("inf")
        negative_hit = False  # counted once per resolution, like the other outcomes
        for rdtype in FAMILIES:
            result = results.get(rdtype)
            if result is None:
                unanswered.append(_type_name(rdtype))
                sources.add("upstream")
                continue
            if isinstance(result, BaseException):
                if not isinstance(result, UpstreamError):
                    raise result
                errors.append(str(result))
                sources.add("upstream")
                logger.debug("%s %s failed: %s", name, _type_name(rdtype), result)
                continue
            entry, source = result
            sources.add(source)
            addresses.extend(entry.addresses)
            if entry.negative is not None:
                negatives.add(entry.negative)
                negative_hit = negative_hit or source == "cache"
            remaining = min(remaining, max(entry.expires - now, 0.0))

        if negative_hit:
            stats.negative_hits += 1
        if unanswered:
            stats.partial_answers += 1
        if "stale" in sources:
            stats.stale_answers += 1
        elif "upstream" in sources:
            stats.cache_misses += 1
        else:
            stats.cache_hits += 1
        stats.observe_latency(time.perf_counter() - started)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "resolved %s on the userspace path from %s: %d addresses, ttl %s%s",
                name, "+".join(sorted(sources)), len(addresses),
                "n/a" if remaining == float("inf") else f"{remaining:.1f} s",
                f"; {'+'.join(unanswered)} not in within {self._family_wait:g} s (cached when it answers)"
                if unanswered else "",
            )  # fmt: skip
        if addresses:
            return addresses
        if "nxdomain" in negatives:
            raise ResolveError(f"{name} does not exist (NXDOMAIN)", negative=True)
        if errors:
            raise ResolveError(f"cannot resolve {name}: {'; '.join(errors)}")
        raise ResolveError(f"{name} has no A or AAAA records", negative=True)

    def _lookup(self, key: str, rdtype: int) -> tuple[CacheEntry, Source] | _Waiting:
        """One family of a resolution: its answer, or the upstream query to wait for."""
        hosts = self.hosts.table
        from_hosts = (hosts.v4 if rdtype == A else hosts.v6).get(key.rstrip("."))
        if from_hosts:
            return CacheEntry(from_hosts, None, 0.0, 0.0, 0.0), "hosts"
        cache_key = (key, rdtype)
        now = self._clock()
        entry = self.cache.get(cache_key)
        action = plan(entry, now, upstream_down=self.health.is_down(now))
        if action == "query":
            if entry is not None:
                self.cache.remove(cache_key)  # past the maximum stale age
            return _Waiting(self._start_query(cache_key), None)
        assert entry is not None  # every other action serves or refreshes the entry
        if action == "fresh":
            return entry, "cache"
        if action == "stale":
            return entry, "stale"
        if action == "stale_and_refresh":
            entry.retry_after = now + self._failure_recheck_timer
            return _Waiting(self._start_query(cache_key), entry, serve_now=True)
        # "refresh": wait for it up to the client response timer, else serve `entry`.
        return _Waiting(self._start_query(cache_key), entry)

    def _stale_after_timer(self, key: str, rdtype: int, stale: CacheEntry) -> tuple[CacheEntry, Source]:
        # The refresh goes on in the background and replaces this entry if it succeeds.
        # Meanwhile later callers get the stale answer at once instead of each waiting
        # another timer's length on the same slow refresh.
        stale.retry_after = self._clock() + self._failure_recheck_timer
        logger.debug(
            "refreshing %s %s takes longer than %g s; serving the stale answer",
            key, _type_name(rdtype), self._client_response_timer,
        )  # fmt: skip
        return stale, "stale"

    def _start_query(self, cache_key: CacheKey) -> asyncio.Task[CacheEntry]:
        task = self._inflight.get(cache_key)
        # A finished query is dropped by _query_done, but that callback may not have run yet
        # when the resolution that waited on it has resumed: then it is no longer in flight.
        if task is not None and not task.done():
            self._stats.coalesced += 1
            return task
        task = asyncio.get_running_loop().create_task(self._query(cache_key))
        self._inflight[cache_key] = task
        task.add_done_callback(partial(self._query_done, cache_key))
        return task

    def _query_done(self, cache_key: CacheKey, task: asyncio.Task[CacheEntry]) -> None:
        if self._inflight.get(cache_key) is task:
            del self._inflight[cache_key]
        # Waiters may all have timed out; fetch the exception so asyncio does not
        # report it as never retrieved.
        if not task.cancelled():
            task.exception()

    async def _query(self, cache_key: CacheKey) -> CacheEntry:
        name, rdtype = cache_key
        started = self._clock()
        try:
            meaning = await self.upstream.lookup(name, _RDATATYPES[rdtype])
        except UpstreamError as error:
            self._query_failed(cache_key, started, error)
            raise
        now = self._clock()
        outage = self.health.answered(now)
        if outage is not None:
            # Entries whose refresh failed during the outage are refreshed at their next
            # resolution, not when their own recheck timers run out.
            self.cache.clear_rechecks()
            logger.info(
                "DNS outage over: %s answers again, %.1f s after the outage was detected; "
                "%d stale answers served meanwhile",
                self._servers(), outage.duration(now), self._stats.stale_answers - self._stale_before_outage,
            )  # fmt: skip
        if isinstance(meaning, Positive):
            return self.cache.store_positive(cache_key, meaning.addresses, meaning.ttl, now)
        entry = self.cache.store_negative(cache_key, meaning.kind, meaning.ttl, now)
        if meaning.kind == "nxdomain" and meaning.ttl is not None:
            # NXDOMAIN is about the name, so it answers the other family as well.
            other = AAAA if rdtype == A else A
            if (other_entry := self.cache.peek((name, other))) is None or (other_entry.expires <= now):
                self.cache.store_negative((name, other), "nxdomain", meaning.ttl, now)
        return entry

    def _query_failed(self, cache_key: CacheKey, started: float, error: UpstreamError) -> None:
        name, rdtype = cache_key
        now = self._clock()
        if error.unreachable and self.health.failed(started=started, now=now, reason=str(error)):
            self._stale_before_outage = self._stats.stale_answers
            logger.warning(
                "DNS outage: no answer from %s; %s, each name asked again at most every %g s (first failure: %s)",
                self._servers(), self._stale_policy(), self._failure_recheck_timer, error,
            )  # fmt: skip
        stale = self.cache.peek(cache_key)
        if stale is not None and stale.expires <= now < stale.stale_until:
            stale.retry_after = now + self._failure_recheck_timer
            logger.debug(
                "refreshing %s %s failed (%s); serving the answer that expired %.1f s ago, retrying in %g s",
                name, _type_name(rdtype), error, now - stale.expires, self._failure_recheck_timer,
            )  # fmt: skip
        else:
            logger.debug("querying %s %s failed: %s", name, _type_name(rdtype), error)

    def _servers(self) -> str:
        return ", ".join(f"{host}:{port}" for host, port in self.upstream.conf.nameservers) or "no nameservers"

    def _stale_policy(self) -> str:
        if self._max_stale_age <= 0:
            return "no stale answers to serve (FIREZONE_DNS_MAX_STALE is 0)"
        return (
            "serving cached answers, positive and negative, "
            f"up to {self._max_stale_age:g} s past their TTL (FIREZONE_DNS_MAX_STALE)"
        )


class _Waiting:
    """A family's upstream query. `stale` is served if a refresh is slow or fails, or at
    once with `serve_now` (the refresh then only goes on in the background)."""

    __slots__ = ("query", "serve_now", "stale")

    def __init__(self, query: asyncio.Task[CacheEntry], stale: CacheEntry | None, *, serve_now: bool = False) -> None:
        self.query = query
        self.stale = stale
        self.serve_now = serve_now


def _settled(query: asyncio.Task[CacheEntry], stale: CacheEntry | None) -> LookupResult:
    """A finished query's outcome for its family: a refresh that failed serves the stale entry.
    A cancelled query raises CancelledError here, out of the resolution."""
    failure = query.exception()
    if failure is None:
        return query.result(), "upstream"
    if stale is not None and isinstance(failure, UpstreamError):
        return stale, "stale"
    return failure


def _has_addresses(results: dict[int, LookupResult]) -> bool:
    return any(not isinstance(result, BaseException) and result[0].addresses for result in results.values())


def _type_name(rdtype: int) -> str:
    return "A" if rdtype == A else "AAAA"
