"""The resolver the data plane calls: one of two paths, chosen per call by the flag.

Both paths keep their caches while the other is in use, so flipping the flag back
and forth costs no warm-up beyond what each path would need anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

from gateway_pkg.dns.base import DnsResolver, IPAddress, ResolveError
from gateway_pkg.dns.flags import FeatureFlags
from gateway_pkg.dns.legacy import LegacyResolver, SystemLookup, getaddrinfo_lookup
from gateway_pkg.dns.metrics import STATS, DnsStats
from gateway_pkg.dns.settings import DnsSettings
from gateway_pkg.dns.upstream import SendQuery, send_udp_with_tcp_fallback
from gateway_pkg.dns.userspace import UserspaceResolver

__all__ = ["DnsResolver", "FlaggedResolver", "ResolveError", "build_resolver"]


class FlaggedResolver:
    def __init__(self, flags: FeatureFlags, userspace: UserspaceResolver, legacy: LegacyResolver) -> None:
        self.flags = flags
        self.userspace = userspace
        self.legacy = legacy

    def resolve(self, name: str) -> Coroutine[Any, Any, list[IPAddress]]:
        """The chosen path's resolve(name), to be awaited (DnsResolver.resolve).

        A plain method handing back the path's coroutine rather than one more coroutine
        awaiting it: a frame less on every cache hit. The flag is read when called."""
        if self.flags.gateway_userspace_dns_a_aaaa_records():
            return self.userspace.resolve(name)
        return self.legacy.resolve(name)


def build_resolver(
    settings: DnsSettings,
    flags: FeatureFlags,
    *,
    stats: DnsStats = STATS,
    clock: Callable[[], float] = time.monotonic,
    send: SendQuery = send_udp_with_tcp_fallback,
    system_lookup: SystemLookup = getaddrinfo_lookup,
) -> FlaggedResolver:
    """The keyword arguments exist for tests: a fake clock, upstream or system resolver."""
    return FlaggedResolver(
        flags,
        UserspaceResolver(settings, stats.userspace, clock=clock, send=send),
        LegacyResolver(settings, stats.legacy, clock=clock, system_lookup=system_lookup),
    )
