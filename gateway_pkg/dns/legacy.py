"""The flag-off path (the default): the system resolver with a fixed 30 s cache.

Upstream's behaviour before the change: getaddrinfo for AF_INET and AF_INET6 (here
concurrently, on worker threads), IPv6 addresses first, an error only if both fail;
successes are cached for a fixed time because getaddrinfo exposes no TTL; concurrent
lookups of one name share one pair of calls. Upstream's cache had no size bound; this
one is bounded by the same FIREZONE_DNS_CACHE_SIZE so wildcard resources cannot grow it
without limit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable

from gateway_pkg.dns.base import IPAddress, ResolveError
from gateway_pkg.dns.metrics import PathStats
from gateway_pkg.dns.settings import DnsSettings

logger = logging.getLogger("gateway_pkg.dns")

# (name, family) -> addresses, blocking. Raises OSError (socket.gaierror) on failure.
SystemLookup = Callable[[str, int], list[IPAddress]]


def getaddrinfo_lookup(name: str, family: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(name, None, family, socket.SOCK_STREAM)
    # The scope id (`%eth0`) of a link-local result is dropped: it names a local interface.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos))


class LegacyResolver:
    path = "legacy"

    def __init__(
        self,
        settings: DnsSettings,
        stats: PathStats,
        *,
        clock: Callable[[], float] = time.monotonic,
        system_lookup: SystemLookup = getaddrinfo_lookup,
    ) -> None:
        self._stats = stats
        self._clock = clock
        self._ttl = settings.legacy_ttl
        self._capacity = settings.cache_size
        self._timeout = settings.resolution_timeout
        self._system_lookup = system_lookup
        self._cache: OrderedDict[str, tuple[float, tuple[IPAddress, ...]]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[tuple[IPAddress, ...]]] = {}

    async def resolve(self, name: str) -> list[IPAddress]:
        started = time.perf_counter()
        key = name.lower()
        cached = self._cache.get(key)
        if cached is not None:
            now = self._clock()
            if now < cached[0]:
                self._cache.move_to_end(key)
                self._stats.cache_hits += 1
                self._stats.observe_latency(time.perf_counter() - started)
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "resolved %s on the legacy path from the cache, fixed ttl %g s, "
                        "%.1f s left", name, self._ttl, cached[0] - now,
                    )  # fmt: skip
                return list(cached[1])
            del self._cache[key]

        self._stats.cache_misses += 1
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup(name, key))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._lookup_done(key, done))
        else:
            self._stats.coalesced += 1
        try:
            async with asyncio.timeout(self._timeout):
                addresses = await asyncio.shield(task)
        except TimeoutError:
            raise ResolveError(f"resolving {name} timed out after {self._timeout:g} s") from None
        finally:
            self._stats.observe_latency(time.perf_counter() - started)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "resolved %s on the legacy path with getaddrinfo: %d addresses, fixed ttl %g s",
                name, len(addresses), self._ttl,
            )  # fmt: skip
        return list(addresses)

    def _lookup_done(self, key: str, task: asyncio.Task[tuple[IPAddress, ...]]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here so an abandoned failure is not reported

    async def _lookup(self, name: str, key: str) -> tuple[IPAddress, ...]:
        self._stats.upstream_queries += 2
        v4, v6 = await asyncio.gather(
            asyncio.to_thread(self._system_lookup, name, socket.AF_INET),
            asyncio.to_thread(self._system_lookup, name, socket.AF_INET6),
            return_exceptions=True,
        )
        failures = [result for result in (v4, v6) if isinstance(result, BaseException)]
        self._stats.upstream_errors += len(failures)
        if isinstance(v4, BaseException) and isinstance(v6, BaseException):
            for failure in failures:
                if not isinstance(failure, OSError | UnicodeError | ValueError):
                    raise failure
            raise ResolveError(f"cannot resolve {name}: {v4}; {v6}", negative=_is_negative(v4))
        addresses = (
            *([] if isinstance(v6, BaseException) else v6),
            *([] if isinstance(v4, BaseException) else v4),
        )
        if not addresses:
            raise ResolveError(f"{name} has no IPv4 or IPv6 addresses", negative=True)
        # Only successes are cached, as upstream's moka try_get_with.
        self._cache[key] = (self._clock() + self._ttl, addresses)
        self._cache.move_to_end(key)
        while len(self._cache) > self._capacity:
            evicted, _ = self._cache.popitem(last=False)
            logger.debug("evicted %s from the legacy DNS cache", evicted)
        return addresses


def _is_negative(error: BaseException) -> bool:
    return isinstance(error, socket.gaierror) and error.errno in (
        socket.EAI_NONAME,
        getattr(socket, "EAI_NODATA", socket.EAI_NONAME),
    )
