"""The record cache of the user-space path: TTL-bounded, LRU-bounded, with stale data.

Sans-I/O: every method takes `now` from the caller's clock, so tests drive time.
Entries are keyed by (name, record type): A and AAAA of one name live and expire
independently, as the RFCs have them. Positive and negative entries alike may be
served stale (RFC 8767) up to the maximum stale age past their expiry: a NODATA for
the AAAA of an A-only name is as much the last known answer as the A itself.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from gateway_pkg.dns.base import IPAddress

CacheKey = tuple[str, int]  # (lower-cased name, rdtype)
NegativeKind = Literal["nxdomain", "nodata"]
# What a lookup does with what the cache holds (see plan()).
Action = Literal["fresh", "stale", "stale_and_refresh", "refresh", "query"]


@dataclass(slots=True)
class CacheEntry:
    addresses: tuple[IPAddress, ...]
    negative: NegativeKind | None
    ttl: float  # as applied: after clamping
    expires: float
    # Served stale until then if refreshing fails (RFC 8767), negative answers included.
    stale_until: float
    # After a failed refresh, upstream is not asked again before this (RFC 8767's
    # failure recheck timer); meanwhile the stale answer is served at once.
    retry_after: float = float("-inf")


class RecordCache:
    def __init__(self, capacity: int, min_ttl: float, max_ttl: float, max_stale_age: float) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.max_stale_age = max_stale_age
        self.evictions = 0
        # Read directly by the resolver's hot path; changed only through the methods below.
        self.entries: OrderedDict[CacheKey, CacheEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def clamp(self, ttl: float) -> float:
        return min(max(ttl, self.min_ttl), self.max_ttl)

    def get(self, key: CacheKey) -> CacheEntry | None:
        """The entry, fresh or not (the caller decides), marked most recently used."""
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def peek(self, key: CacheKey) -> CacheEntry | None:
        return self.entries.get(key)

    def remove(self, key: CacheKey) -> None:
        self.entries.pop(key, None)

    def store_positive(self, key: CacheKey, addresses: tuple[IPAddress, ...], ttl: float, now: float) -> CacheEntry:
        applied = self.clamp(ttl)
        expires = now + applied
        entry = CacheEntry(addresses, None, applied, expires, expires + self.max_stale_age)
        self._put(key, entry)
        return entry

    def store_negative(self, key: CacheKey, kind: NegativeKind, ttl: float | None, now: float) -> CacheEntry:
        """Cache a negative answer for its SOA-derived TTL; without an SOA (ttl None)
        the entry is returned for this answer only and not kept (RFC 2308 §5)."""
        if ttl is None:
            return CacheEntry((), kind, 0.0, now, now)
        applied = self.clamp(ttl)
        expires = now + applied
        entry = CacheEntry((), kind, applied, expires, expires + self.max_stale_age)
        self._put(key, entry)
        return entry

    def clear_rechecks(self) -> None:
        """Lift every failure recheck timer (the servers answer again: refresh at once)."""
        for entry in self.entries.values():
            entry.retry_after = float("-inf")

    def _put(self, key: CacheKey, entry: CacheEntry) -> None:
        self.entries[key] = entry
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
            self.evictions += 1


def plan(entry: CacheEntry | None, now: float, *, upstream_down: bool) -> Action:
    """What to do for one (name, type) at `now`:

    - "fresh": serve the entry, within its TTL;
    - "stale": serve the expired entry without asking (its failure recheck timer runs);
    - "stale_and_refresh": serve the expired entry at once and refresh it in the
      background (the upstream is known to be down: waiting for it would only add the
      client response timer to every answer);
    - "refresh": refresh, serving the expired entry if that fails or is slow;
    - "query": nothing usable (none cached, or past the maximum stale age): ask and wait.
    """
    if entry is None:
        return "query"
    if now < entry.expires:
        return "fresh"
    if now >= entry.stale_until:
        return "query"
    if now < entry.retry_after:
        return "stale"
    return "stale_and_refresh" if upstream_down else "refresh"
