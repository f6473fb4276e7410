"""DNS metrics: plain counters on the hot path, rendered for Prometheus at scrape time.

A prometheus_client Counter.inc() or Histogram.observe() takes a lock and costs about
as much as a whole cache hit (~1 µs), so the resolver bumps integer attributes and a
bucket list instead, and a custom collector turns them into metric families when
/metrics is scraped.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

PATHS = ("userspace", "legacy")

# Seconds. A cache hit lands in the first bucket; an upstream round trip in 0.0005-0.005.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00001, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 1.8, 2.5, 5.0, 10.0,
)  # fmt: skip


class PathStats:
    """Counters for one resolution path. Attributes, not a dict: `+= 1` is the cheapest."""

    __slots__ = (
        "cache_hits",
        "cache_misses",
        "coalesced",
        "latency_buckets",
        "latency_count",
        "latency_sum",
        "negative_hits",
        "partial_answers",
        "stale_answers",
        "upstream_errors",
        "upstream_queries",
    )

    def __init__(self) -> None:
        self.cache_hits = 0
        self.cache_misses = 0
        self.stale_answers = 0
        self.negative_hits = 0
        self.upstream_queries = 0
        self.upstream_errors = 0
        self.coalesced = 0
        self.partial_answers = 0
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_count = 0
        self.latency_sum = 0.0

    def observe_latency(self, seconds: float) -> None:
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_count += 1
        self.latency_sum += seconds


class DnsStats:
    """All DNS counters of one process (or of one test)."""

    def __init__(self) -> None:
        self.paths = {path: PathStats() for path in PATHS}

    @property
    def userspace(self) -> PathStats:
        return self.paths["userspace"]

    @property
    def legacy(self) -> PathStats:
        return self.paths["legacy"]


_COUNTERS = (
    ("cache_hits", "Resolutions answered from the cache without asking upstream"),
    ("cache_misses", "Resolutions that needed an upstream answer"),
    ("stale_answers", "Expired answers served because the refresh failed or was slow (RFC 8767)"),
    ("negative_hits", "NXDOMAIN/NODATA answers served from the negative cache"),
    ("upstream_queries", "Queries sent upstream (DNS packets, or getaddrinfo calls on legacy)"),
    ("upstream_errors", "Upstream queries that failed (timeout, refused, SERVFAIL, gai error)"),
    ("coalesced", "Lookups that joined an upstream query already in flight"),
    (
        "partial_answers",
        "Resolutions answered with one address family while the other's query was still out",
    ),
)


class DnsCollector(Collector):
    def __init__(self, stats: DnsStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        for attribute, documentation in _COUNTERS:
            family = CounterMetricFamily(f"firezone_gateway_dns_{attribute}", documentation, labels=["path"])
            for path, stats in self._stats.paths.items():
                family.add_metric([path], getattr(stats, attribute))
            yield family
        latency = HistogramMetricFamily(
            "firezone_gateway_dns_resolution_latency_seconds",
            "Time to answer one resolve() call, cache hits included",
            labels=["path"],
        )
        for path, stats in self._stats.paths.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), stats.latency_buckets, strict=True):
                cumulative += count
                buckets.append((_bucket_label(bound), cumulative))
            latency.add_metric([path], buckets, stats.latency_sum)
        yield latency


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def register(stats: DnsStats, registry: CollectorRegistry = REGISTRY) -> DnsCollector:
    collector = DnsCollector(stats)
    registry.register(collector)
    return collector


# The process-wide counters, exported on the default registry that /metrics serves.
STATS = DnsStats()
register(STATS)
