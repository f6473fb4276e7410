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
from collections.abc import Callable
from typing import Literal

import dns.exception
import dns.name
import dns.rdatatype

from gateway_pkg.dns.answer import Positive
from gateway_pkg.dns.base import IPAddress, ResolveError
from gateway_pkg.dns.cache import CacheEntry, CacheKey, RecordCache, plan
from gateway_pkg.dns.health import UpstreamHealth
from gateway_pkg.dns.metrics import PathStats
from gateway_pkg.dns.settings import DnsSettings
from gateway_pkg.dns.sysconf import HostsFile, load_resolv_conf
from gateway_pkg.dns.upstream import SendQuery, Upstream, UpstreamError, send_udp_with_tcp_fallback

logger = logging.getLogger("gateway_pkg.dns")

A = int(dns.rdatatype.A)
AAAA = int(dns.rdatatype.AAAA)
FAMILIES = (A, AAAA)

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
        self._stale_before_outage = 0
        self._inflight: dict[CacheKey, asyncio.Task[CacheEntry]] = {}

    async def resolve(self, name: str) -> list[IPAddress]:
        started = time.perf_counter()
        key = name.lower()
        now = self._clock()
        if now >= self.hosts.next_check:
            self._check_hosts(now)
        # The hot path: both families fresh in the cache. Names in /etc/hosts never have
        # cache entries (_check_hosts drops them), so no hosts lookup is needed here.
        v4 = self.cache.get((key, A))
        v6 = self.cache.get((key, AAAA))
        if (
            v4 is not None
            and v6 is not None
            and now < v4.expires
            and now < v6.expires
            and (v4.addresses or v6.addresses)
        ):
            stats = self._stats
            stats.cache_hits += 1
            if v4.negative or v6.negative:
                stats.negative_hits += 1
            stats.observe_latency(time.perf_counter() - started)
            if logger.isEnabledFor(logging.DEBUG):
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
        tasks = {rdtype: loop.create_task(self._lookup(key, rdtype)) for rdtype in FAMILIES}
        results: dict[int, LookupResult] = {}
        try:
            while len(results) < len(tasks):
                budget = wait_budget(
                    loop.time() - begun, _has_addresses(results), family_wait=self._family_wait, limit=self._timeout
                )
                if budget <= 0:
                    break
                pending = [task for rdtype, task in tasks.items() if rdtype not in results]
                done, _ = await asyncio.wait(pending, timeout=budget, return_when=asyncio.FIRST_COMPLETED)
                for rdtype, task in tasks.items():
                    if task in done:
                        failure = task.exception()
                        results[rdtype] = task.result() if failure is None else failure
        finally:
            # A family still unanswered is given up on here, not its upstream query: that
            # is shielded, goes on, and lands in the cache for the next resolution.
            for task in tasks.values():
                task.cancel()
        if len(results) < len(tasks) and not _has_addresses(results):
            self._stats.cache_misses += 1
            self._stats.observe_latency(time.perf_counter() - started)
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

    async def _lookup(self, key: str, rdtype: int) -> tuple[CacheEntry, Source]:
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
            return await asyncio.shield(self._start_query(cache_key)), "upstream"
        assert entry is not None  # every other action serves or refreshes the entry
        if action == "fresh":
            return entry, "cache"
        if action == "stale":
            return entry, "stale"
        if action == "stale_and_refresh":
            self._start_query(cache_key)
            entry.retry_after = now + self._failure_recheck_timer
            return entry, "stale"
        return await self._refresh_or_serve_stale(cache_key, entry)

    async def _refresh_or_serve_stale(self, cache_key: CacheKey, stale: CacheEntry) -> tuple[CacheEntry, Source]:
        refresh = self._start_query(cache_key)
        try:
            async with asyncio.timeout(self._client_response_timer):
                return await asyncio.shield(refresh), "upstream"
        except TimeoutError:
            # The refresh goes on in the background and replaces this entry if it succeeds.
            # Meanwhile later callers get the stale answer at once instead of each waiting
            # another timer's length on the same slow refresh.
            stale.retry_after = self._clock() + self._failure_recheck_timer
            logger.debug(
                "refreshing %s %s takes longer than %g s; serving the stale answer",
                cache_key[0], _type_name(cache_key[1]), self._client_response_timer,
            )  # fmt: skip
            return stale, "stale"
        except UpstreamError:
            return stale, "stale"

    def _start_query(self, cache_key: CacheKey) -> asyncio.Task[CacheEntry]:
        task = self._inflight.get(cache_key)
        if task is not None:
            self._stats.coalesced += 1
            return task
        task = asyncio.get_running_loop().create_task(self._query(cache_key))
        self._inflight[cache_key] = task
        task.add_done_callback(self._query_done)
        return task

    def _query_done(self, task: asyncio.Task[CacheEntry]) -> None:
        for cache_key, inflight in list(self._inflight.items()):
            if inflight is task:
                del self._inflight[cache_key]
        # Waiters may all have timed out; fetch the exception so asyncio does not
        # report it as never retrieved.
        if not task.cancelled():
            task.exception()

    async def _query(self, cache_key: CacheKey) -> CacheEntry:
        name, rdtype = cache_key
        started = self._clock()
        try:
            meaning = await self.upstream.lookup(name, dns.rdatatype.RdataType(rdtype))
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


def _has_addresses(results: dict[int, LookupResult]) -> bool:
    return any(not isinstance(result, BaseException) and result[0].addresses for result in results.values())


def _type_name(rdtype: int) -> str:
    return "A" if rdtype == A else "AAAA"
