"""DNS benchmark: the user-space resolver next to its baselines, against a local unbound.

Run: .venv/bin/python bench/bench_dns.py   (not a timed test; prints numbers and ratios)
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.resolver

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration" / "dns"))

from unbound_server import Unbound  # noqa: E402

from gateway_pkg.dns.flags import FeatureFlags  # noqa: E402
from gateway_pkg.dns.metrics import DnsStats  # noqa: E402
from gateway_pkg.dns.resolver import build_resolver  # noqa: E402
from gateway_pkg.dns.settings import DnsSettings, FlagSettings  # noqa: E402

DISTINCT = 10_000
HIT_SAMPLES = 200_000


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def micro(ns: float) -> str:
    return f"{ns / 1000:8.2f} µs"


async def main() -> None:
    records = ["hot.test. 3600 IN A 192.0.2.1", "hot.test. 3600 IN AAAA 2001:db8::1"]
    records += [f"n{i}.test. 3600 IN A 10.{i // 65536}.{i // 256 % 256}.{i % 256}"
                for i in range(DISTINCT)]  # fmt: skip
    records += [f"m{i}.test. 3600 IN A 192.0.2.{i % 250 + 1}" for i in range(1000)]
    records += [f"c{i}.test. 3600 IN A 192.0.2.{i + 1}" for i in range(100)]
    server = Unbound(records, soa_minimum=3600)
    server.start()
    try:
        settings = DnsSettings(
            resolv_conf=str(server.write_resolv_conf()),
            hosts_file=str(server.write_hosts()),
            nameservers=(server.nameserver,),
        )
        stats = DnsStats()
        resolver = build_resolver(settings, FeatureFlags(FlagSettings(userspace_dns_override=True)), stats=stats)
        perf = time.perf_counter_ns

        # -- cache hits ------------------------------------------------------------
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
        dp_cache = dns.resolver.Cache()
        dp_resolver = dns.resolver.Resolver(configure=False)
        dp_resolver.nameservers = [server.address]
        dp_resolver.port = server.port
        dp_resolver.cache = dp_cache
        dp_resolver.resolve("hot.test.", "A")
        dp_hits = []
        for _ in range(20_000):
            t0 = perf()
            dp_resolver.resolve("hot.test.", "A")
            dp_hits.append(perf() - t0)

        print(
            f"cache hit, resolve() A+AAAA    p50 {micro(pct(hits, 0.5))}  "
            f"p99 {micro(pct(hits, 0.99))}  (target p50 <= 2 µs)"
        )
        print(
            f"  bare dict + monotonic check  p50 {micro(pct(dict_hits, 0.5))}  "
            f"p99 {micro(pct(dict_hits, 0.99))}  ratio {pct(hits, 0.5) / pct(dict_hits, 0.5):.1f}x"
        )
        print(f"  dnspython Resolver+Cache (A) p50 {micro(pct(dp_hits, .5))}  "
              f"p99 {micro(pct(dp_hits, .99))}  ours is {pct(dp_hits, .5) / pct(hits, .5):.1f}x "
              "faster")  # fmt: skip

        # -- misses next to a raw dnspython query to the same server ---------------
        misses, raw_single, raw_pair = [], [], []
        for i in range(500):
            t0 = perf()
            await resolver.resolve(f"m{i}.test")
            misses.append(perf() - t0)
        for i in range(500):
            query = dns.message.make_query(f"m{i}.test.", "A")
            t0 = perf()
            await dns.asyncquery.udp(query, server.address, port=server.port, timeout=2)
            raw_single.append(perf() - t0)
        for i in range(500):
            t0 = perf()
            await asyncio.gather(
                *(
                    dns.asyncquery.udp(dns.message.make_query(f"m{i}.test.", t), server.address,
                                       port=server.port, timeout=2)
                    for t in ("A", "AAAA")
                )
            )  # fmt: skip
            raw_pair.append(perf() - t0)
        print(f"cache miss, resolve() A+AAAA   p50 {micro(pct(misses, 0.5))}  p99 {micro(pct(misses, 0.99))}")
        print(
            f"  raw dnspython udp, A only    p50 {micro(pct(raw_single, 0.5))}  "
            f"p99 {micro(pct(raw_single, 0.99))}  ratio {pct(misses, 0.5) / pct(raw_single, 0.5):.2f}x"
        )
        print(
            f"  raw dnspython udp, A+AAAA    p50 {micro(pct(raw_pair, 0.5))}  "
            f"p99 {micro(pct(raw_pair, 0.99))}  ratio {pct(misses, 0.5) / pct(raw_pair, 0.5):.2f}x"
        )

        # -- throughput over 10,000 distinct names --------------------------------
        limit = asyncio.Semaphore(100)

        async def one(name: str) -> None:
            async with limit:
                await resolver.resolve(name)

        names = [f"n{i}.test" for i in range(DISTINCT)]
        # A fresh resolver: an LRU scan of more names than it holds would miss every time.
        resolver = build_resolver(settings, FeatureFlags(FlagSettings(userspace_dns_override=True)), stats=DnsStats())

        async def raw(name: str) -> None:
            async with limit:
                await asyncio.gather(
                    *(
                        dns.asyncquery.udp(dns.message.make_query(name + ".", t), server.address,
                                           port=server.port, timeout=2)
                        for t in ("A", "AAAA")
                    )
                )  # fmt: skip

        t0 = time.perf_counter()
        await asyncio.gather(*(raw(n) for n in names))
        raw_rate = DISTINCT / (time.perf_counter() - t0)
        print(f"10,000 distinct names, raw dnspython A+AAAA (100 in flight): {raw_rate:9.0f} /s")
        before = server.queries()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(n) for n in names))
        cold = time.perf_counter() - t0
        cold_queries = server.queries() - before
        t0 = time.perf_counter()
        for n in names:
            await resolver.resolve(n)
        warm = time.perf_counter() - t0
        print(
            f"10,000 distinct names, cold (100 in flight): {DISTINCT / cold:9.0f} resolutions/s "
            f"({cold_queries} upstream queries)"
        )
        print(f"10,000 distinct names, warm (all hits):      {DISTINCT / warm:9.0f} resolutions/s "
              f"({DISTINCT / cold and warm and cold / warm:.0f}x cold)")  # fmt: skip

        # -- coalescing ------------------------------------------------------------
        callers_per_name, names_c = 100, [f"c{i}.test" for i in range(100)]
        before = server.queries()
        await asyncio.gather(*(resolver.resolve(n) for n in names_c for _ in range(callers_per_name)))
        asked = server.queries() - before
        without = 2 * callers_per_name * len(names_c)
        print(
            f"coalescing: {callers_per_name * len(names_c)} concurrent lookups of "
            f"{len(names_c)} names -> {asked} upstream queries (unbound's count); "
            f"without coalescing {without}: {without - asked} saved, {without / asked:.0f}x fewer"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
