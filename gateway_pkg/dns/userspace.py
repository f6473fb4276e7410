"""The flag-on path: A and AAAA resolved with dnspython and cached for their TTL.

A resolution asks A and AAAA concurrently and returns both (upstream's first version
asked AAAA only when A was empty; that lost IPv6 on dual-stack names). Each family
goes: /etc/hosts → fresh cache entry → stale entry with a refresh (RFC 8767) →
one shared upstream query per (name, type), however many callers wait for it.
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
from gateway_pkg.dns.cache import CacheEntry, CacheKey, RecordCache
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

Source = Literal["hosts", "cache", "stale", "upstream"]


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
    ) -> None:
        self._stats = stats
        self._clock = clock
        self._timeout = settings.resolution_timeout
        self._client_response_timer = client_response_timer
        self._failure_recheck_timer = failure_recheck_timer
        self.upstream = Upstream(load_resolv_conf(settings.resolv_conf, settings.nameservers), stats, send)
        self.hosts = HostsFile(settings.hosts_file, clock)
        # FIREZONE_DNS_CACHE_SIZE counts names; each name holds an A and an AAAA entry.
        self.cache = RecordCache(2 * settings.cache_size, settings.min_ttl, settings.max_ttl, settings.max_stale_age)
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
        try:
            async with asyncio.timeout(self._timeout):
                results = await asyncio.gather(
                    *(self._lookup(key, rdtype) for rdtype in FAMILIES), return_exceptions=True
                )
        except TimeoutError:
            self._stats.cache_misses += 1
            self._stats.observe_latency(time.perf_counter() - started)
            raise ResolveError(f"resolving {name} timed out after {self._timeout:g} s") from None
        return self._combine(name, results, started)

    def _combine(
        self,
        name: str,
        results: list[tuple[CacheEntry, Source] | BaseException],
        started: float,
    ) -> list[IPAddress]:
        stats = self._stats
        addresses: list[IPAddress] = []
        sources: set[Source] = set()
        negatives: set[str] = set()
        errors: list[str] = []
        now = self._clock()
        remaining = float("inf")
        negative_hit = False  # counted once per resolution, like the other outcomes
        for rdtype, result in zip(FAMILIES, results, strict=True):
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
        if "stale" in sources:
            stats.stale_answers += 1
        elif "upstream" in sources:
            stats.cache_misses += 1
        else:
            stats.cache_hits += 1
        stats.observe_latency(time.perf_counter() - started)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "resolved %s on the userspace path from %s: %d addresses, ttl %s",
                name, "+".join(sorted(sources)), len(addresses),
                "n/a" if remaining == float("inf") else f"{remaining:.1f} s",
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
        if entry is not None:
            if now < entry.expires:
                return entry, "cache"
            if entry.negative is None and now < entry.stale_until:
                return await self._refresh_or_serve_stale(cache_key, entry, now)
            self.cache.remove(cache_key)  # past the maximum stale age, or negative
        return await asyncio.shield(self._start_query(cache_key)), "upstream"

    async def _refresh_or_serve_stale(
        self, cache_key: CacheKey, stale: CacheEntry, now: float
    ) -> tuple[CacheEntry, Source]:
        if now < stale.retry_after:
            return stale, "stale"
        refresh = self._start_query(cache_key)
        try:
            async with asyncio.timeout(self._client_response_timer):
                return await asyncio.shield(refresh), "upstream"
        except TimeoutError:
            # The refresh goes on in the background and replaces this entry if it succeeds.
            # Meanwhile later callers get the stale answer at once instead of each waiting
            # another timer's length on the same slow refresh.
            stale.retry_after = self._clock() + self._failure_recheck_timer
            logger.info(
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
        try:
            meaning = await self.upstream.lookup(name, dns.rdatatype.RdataType(rdtype))
        except UpstreamError as error:
            now = self._clock()
            stale = self.cache.peek(cache_key)
            if stale is not None and stale.negative is None and now < stale.stale_until:
                stale.retry_after = now + self._failure_recheck_timer
                logger.warning(
                    "upstream failed for %s %s (%s); serving the answer that expired %.1f s "
                    "ago and retrying in %g s",
                    name, _type_name(rdtype), error, now - stale.expires,
                    self._failure_recheck_timer,
                )  # fmt: skip
            raise
        now = self._clock()
        if isinstance(meaning, Positive):
            return self.cache.store_positive(cache_key, meaning.addresses, meaning.ttl, now)
        entry = self.cache.store_negative(cache_key, meaning.kind, meaning.ttl, now)
        if meaning.kind == "nxdomain" and meaning.ttl is not None:
            # NXDOMAIN is about the name, so it answers the other family as well.
            other = AAAA if rdtype == A else A
            if (other_entry := self.cache.peek((name, other))) is None or (other_entry.expires <= now):
                self.cache.store_negative((name, other), "nxdomain", meaning.ttl, now)
        return entry


def _type_name(rdtype: int) -> str:
    return "A" if rdtype == A else "AAAA"
