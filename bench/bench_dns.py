"""DNS benchmark: the user-space resolver next to its baselines, against a local unbound.

Run: .venv/bin/python bench/bench_dns.py [--force]   (not a timed test; prints numbers and ratios)

Ours and the baselines are measured in the same run, the cold lookups interleaved name by
name, so load from other processes hits both alike. The 1-minute load average is printed at
the start and at the end. Ratios are withheld when it exceeds 0.5 at the start (exit status
3), unless --force, which prints them marked as taken under load.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.resolver

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration" / "dns"))

from common import LoadGate, loadavg  # noqa: E402
from unbound_server import Unbound  # noqa: E402

from gateway_pkg.dns.flags import FeatureFlags  # noqa: E402
from gateway_pkg.dns.metrics import DnsStats  # noqa: E402
from gateway_pkg.dns.resolver import FlaggedResolver, build_resolver  # noqa: E402
from gateway_pkg.dns.settings import DnsSettings, FlagSettings  # noqa: E402
from gateway_pkg.dns.upstream import EDNS_PAYLOAD  # noqa: E402

EXIT_LOADED = 3
DISTINCT = 10_000
HIT_SAMPLES = 200_000
COLD_SAMPLES = 1000


def pct(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def micro(ns: float) -> str:
    return f"{ns / 1000:8.2f} µs"


class Report:
    def __init__(self, gate: LoadGate) -> None:
        self.gate = gate
        self.summary: list[str] = []

    def ratio(self, ours: float, theirs: float, fmt: str = ".2f") -> str:
        """ours / theirs, or why not."""
        if not self.gate.ratios:
            return "(withheld)"
        return f"{ours / theirs:{fmt}}x{'*' if self.gate.flagged else ''}"


async def raw_pair(server: Unbound, name: str, *, edns: bool = False) -> None:
    """What the resolver does on a miss, with dnspython alone: A and AAAA at once (without
    EDNS, as dnspython's make_query by default; with `edns`, EDNS0 as the resolver asks)."""
    await asyncio.gather(
        *(
            dns.asyncquery.udp(
                dns.message.make_query(name, t, use_edns=0 if edns else None, payload=EDNS_PAYLOAD if edns else None),
                server.address,
                port=server.port,
                timeout=2,
            )
            for t in ("A", "AAAA")
        )
    )


def new_resolver(settings: DnsSettings) -> FlaggedResolver:
    return build_resolver(settings, FeatureFlags(FlagSettings(userspace_dns_override=True)), stats=DnsStats())


async def cache_hits(report: Report, server: Unbound, resolver: FlaggedResolver) -> None:
    perf = time.perf_counter_ns
    await resolver.resolve("hot.test")
    hits = []
    for _ in range(HIT_SAMPLES):
        t0 = perf()
        await resolver.resolve("hot.test")
        hits.append(perf() - t0)
    table = {"hot.test": (float("inf"), ["192.0.2.1"])}
    dict_hits = []
    for _ in range(HIT_SAMPLES):
        t0 = perf()
        entry = table.get("hot.test")
        if entry is not None and time.monotonic() < entry[0]:
            list(entry[1])
        dict_hits.append(perf() - t0)
    dp_resolver = dns.resolver.Resolver(configure=False)
    dp_resolver.nameservers = [server.address]
    dp_resolver.port = server.port
    dp_resolver.cache = dns.resolver.Cache()
    dp_resolver.resolve("hot.test.", "A")
    dp_hits = []
    for _ in range(20_000):
        t0 = perf()
        dp_resolver.resolve("hot.test.", "A")
        dp_hits.append(perf() - t0)

    ours, bare, dnspython = pct(hits, 0.5), pct(dict_hits, 0.5), pct(dp_hits, 0.5)
    print(f"cache hit, resolve() A+AAAA    p50 {micro(ours)}  p99 {micro(pct(hits, 0.99))}  (target p50 <= 2 µs)")
    print(
        f"  bare dict + monotonic check  p50 {micro(bare)}  p99 {micro(pct(dict_hits, 0.99))}  "
        f"ours / bare {report.ratio(ours, bare, '.1f')}"
    )
    print(
        f"  dnspython Resolver+Cache (A) p50 {micro(dnspython)}  p99 {micro(pct(dp_hits, 0.99))}  "
        f"ours / dnspython {report.ratio(ours, dnspython)}"
    )
    report.summary.append(f"cache hit p50        ours {micro(ours)}   bare dict {micro(bare)}   "
                          f"{report.ratio(ours, bare, '.1f')}")  # fmt: skip


async def cold_lookups(report: Report, server: Unbound, resolver: FlaggedResolver) -> None:
    """One name after another (nothing else in flight), ours and the raw queries taking turns."""
    perf = time.perf_counter_ns
    ours: list[int] = []
    pair: list[int] = []
    pair_edns: list[int] = []
    single: list[int] = []
    for i in range(COLD_SAMPLES):
        name = f"m{i}.test"
        t0 = perf()
        await resolver.resolve(name)
        ours.append(perf() - t0)
        t0 = perf()
        await raw_pair(server, name + ".")
        pair.append(perf() - t0)
        t0 = perf()
        await raw_pair(server, name + ".", edns=True)
        pair_edns.append(perf() - t0)
        t0 = perf()
        await dns.asyncquery.udp(dns.message.make_query(name + ".", "A"), server.address, port=server.port, timeout=2)
        single.append(perf() - t0)

    p50 = pct(ours, 0.5)
    print(f"cache miss, resolve() A+AAAA   p50 {micro(p50)}  p99 {micro(pct(ours, 0.99))}  (interleaved with:)")
    rows: list[tuple[str, list[int]]] = [
        ("raw dnspython udp, A+AAAA  ", pair),
        (f"  the same, EDNS0 {EDNS_PAYLOAD}    ", pair_edns),
        ("raw dnspython udp, A only  ", single),
    ]
    for label, samples in rows:
        print(
            f"  {label}  p50 {micro(pct(samples, 0.5))}  p99 {micro(pct(samples, 0.99))}  "
            f"ours / raw {report.ratio(p50, pct(samples, 0.5))}"
        )
    report.summary.append(f"cold A+AAAA p50      ours {micro(p50)}   raw pair  {micro(pct(pair, 0.5))}   "
                          f"{report.ratio(p50, pct(pair, 0.5))}  (goal <= 1.1x)")  # fmt: skip


async def throughput(report: Report, server: Unbound, settings: DnsSettings) -> FlaggedResolver:
    limit = asyncio.Semaphore(100)
    # A fresh resolver: an LRU scan of more names than it holds would miss every time.
    resolver = new_resolver(settings)

    async def ours(name: str) -> None:
        async with limit:
            await resolver.resolve(name)

    async def raw(name: str) -> None:
        async with limit:
            await raw_pair(server, name + ".")

    async def rate(lookup: Callable[[str], Awaitable[None]], names: list[str]) -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(lookup(n) for n in names))
        return len(names) / (time.perf_counter() - t0)

    names = [f"n{i}.test" for i in range(DISTINCT)]
    raw_rate = await rate(raw, names)
    before = server.queries()
    cold_rate = await rate(ours, names)
    cold_queries = server.queries() - before
    t0 = time.perf_counter()
    for n in names:
        await resolver.resolve(n)
    warm_rate = DISTINCT / (time.perf_counter() - t0)
    print(f"10,000 distinct names, raw dnspython A+AAAA (100 in flight): {raw_rate:9.0f} /s")
    print(
        f"10,000 distinct names, cold (100 in flight): {cold_rate:9.0f} resolutions/s "
        f"({cold_queries} upstream queries)  ours / raw {report.ratio(cold_rate, raw_rate)}"
    )
    print(f"10,000 distinct names, warm (all hits):      {warm_rate:9.0f} resolutions/s "
          f"({warm_rate / cold_rate:.0f}x cold)")  # fmt: skip
    report.summary.append(f"cold, 100 in flight  ours {cold_rate:6.0f} /s     raw pair  {raw_rate:6.0f} /s     "
                          f"{report.ratio(cold_rate, raw_rate)}")  # fmt: skip
    return resolver


async def coalescing(server: Unbound, resolver: FlaggedResolver) -> None:
    callers_per_name, names = 100, [f"c{i}.test" for i in range(100)]
    before = server.queries()
    await asyncio.gather(*(resolver.resolve(n) for n in names for _ in range(callers_per_name)))
    asked = server.queries() - before
    without = 2 * callers_per_name * len(names)
    print(
        f"coalescing: {callers_per_name * len(names)} concurrent lookups of "
        f"{len(names)} names -> {asked} upstream queries (unbound's count); "
        f"without coalescing {without}: {without - asked} saved, {without / asked:.0f}x fewer"
    )


async def run(gate: LoadGate) -> None:
    records = ["hot.test. 3600 IN A 192.0.2.1", "hot.test. 3600 IN AAAA 2001:db8::1"]
    records += [f"n{i}.test. 3600 IN A 10.{i // 65536}.{i // 256 % 256}.{i % 256}"
                for i in range(DISTINCT)]  # fmt: skip
    records += [f"m{i}.test. 3600 IN A 192.0.2.{i % 250 + 1}" for i in range(COLD_SAMPLES)]
    records += [f"c{i}.test. 3600 IN A 192.0.2.{i + 1}" for i in range(100)]
    server = Unbound(records, soa_minimum=3600)
    server.start()
    report = Report(gate)
    try:
        settings = DnsSettings(
            resolv_conf=str(server.write_resolv_conf()),
            hosts_file=str(server.write_hosts()),
            nameservers=(server.nameserver,),
        )
        resolver = new_resolver(settings)
        await cache_hits(report, server, resolver)
        await cold_lookups(report, server, resolver)
        resolver = await throughput(report, server, settings)
        await coalescing(server, resolver)
    finally:
        server.stop()
    print("\nours against raw dnspython, this run:")
    for line in report.summary:
        print("  " + line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="print ratios even when the machine is not idle")
    args = parser.parse_args()
    gate = LoadGate.now(args.force)
    print(f"load average at the start: {loadavg()} (1, 5, 15 min)", flush=True)
    if gate.busy:
        print(gate.warning, flush=True)
    asyncio.run(run(gate))
    print(f"load average at the end:   {loadavg()} (1, 5, 15 min); {gate.warning}")
    return EXIT_LOADED if gate.busy and not gate.force else 0


if __name__ == "__main__":
    sys.exit(main())
