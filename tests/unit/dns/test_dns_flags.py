"""Feature flags: defaults, env override, fetching from /decide, and the per-call switch."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from gateway_pkg.config import external_id_for
from gateway_pkg.dns.flags import USERSPACE_DNS_FLAG, FeatureFlags
from gateway_pkg.dns.metrics import register
from gateway_pkg.dns.resolver import build_resolver
from gateway_pkg.dns.settings import FlagSettings
from tests.procs import wait_for_async


class Decide:
    """A /decide endpoint the test can flip or break."""

    def __init__(self) -> None:
        self.flags: dict[str, object] = {}
        self.status = 200
        self.requests: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response({"featureFlags": self.flags, "featureFlagPayloads": {}})


@pytest.fixture
async def decide():
    endpoint = Decide()
    app = web.Application()
    app.router.add_post("/decide", endpoint.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    endpoint.url = f"http://127.0.0.1:{port}/decide"
    yield endpoint
    await runner.cleanup()


def test_false_until_fetched():
    assert FeatureFlags(FlagSettings()).gateway_userspace_dns_a_aaaa_records() is False


async def test_fetched_value_and_errors_turn_it_off(decide):
    flags = FeatureFlags(FlagSettings(url=decide.url), "gw-1")
    decide.flags = {USERSPACE_DNS_FLAG: True}
    await flags.refresh()
    assert flags.gateway_userspace_dns_a_aaaa_records() is True
    assert decide.requests[-1] == {"api_key": "firezone-gateway-py", "distinct_id": "gw-1"}
    decide.status = 500
    await flags.refresh()
    assert flags.gateway_userspace_dns_a_aaaa_records() is False
    decide.status, decide.flags = 200, {USERSPACE_DNS_FLAG: "variant-a"}
    await flags.refresh()
    assert flags.gateway_userspace_dns_a_aaaa_records() is False


async def test_unreachable_endpoint_means_off(decide):
    flags = FeatureFlags(FlagSettings(url=decide.url))
    decide.flags = {USERSPACE_DNS_FLAG: True}
    await flags.refresh()
    assert flags.gateway_userspace_dns_a_aaaa_records() is True
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    unreachable = FeatureFlags(FlagSettings(url=f"http://127.0.0.1:{port}/decide"))
    await unreachable.refresh()
    assert unreachable.gateway_userspace_dns_a_aaaa_records() is False


async def test_env_override_wins_over_fetched(decide):
    decide.flags = {USERSPACE_DNS_FLAG: True}
    flags = FeatureFlags(FlagSettings(url=decide.url, userspace_dns_override=False))
    await flags.refresh()
    assert flags.gateway_userspace_dns_a_aaaa_records() is False
    assert FeatureFlags(FlagSettings(userspace_dns_override=True)).gateway_userspace_dns_a_aaaa_records()


async def test_run_re_evaluates_every_interval(decide):
    flags = FeatureFlags(FlagSettings(url=decide.url, interval=0.02))
    task = asyncio.create_task(flags.run())
    try:
        await wait_for_async(lambda: bool(decide.requests), 10, "the first /decide request")
        assert not flags.gateway_userspace_dns_a_aaaa_records()
        decide.flags = {USERSPACE_DNS_FLAG: True}
        await wait_for_async(flags.gateway_userspace_dns_a_aaaa_records, 10, "the flag to turn on")
    finally:
        task.cancel()


async def test_run_does_nothing_without_telemetry_or_url(decide):
    await FeatureFlags(FlagSettings(url=decide.url, no_telemetry=True)).run()
    await FeatureFlags(FlagSettings()).run()
    await FeatureFlags(FlagSettings(url=decide.url, no_telemetry=True)).start()
    assert decide.requests == []


def test_distinct_id_hashes_uuids_only():
    uuid = "3f0b7c52-9a0f-4c55-9d6b-8b2f0b0b7c11"
    assert external_id_for(uuid) == hashlib.sha256(uuid.encode()).hexdigest()
    assert external_id_for("a" * 64) == "a" * 64


async def test_flag_picks_the_path_per_call(settings, stats, clock, upstream, decide):
    upstream.set("app.test.", "A", 60, "192.0.2.1")
    flags = FeatureFlags(FlagSettings(url=decide.url))

    def system(name, family):
        if family == socket.AF_INET:
            return [ipaddress.IPv4Address("198.51.100.1")]
        raise socket.gaierror(socket.EAI_NONAME, "no")

    resolver = build_resolver(settings, flags, stats=stats, clock=clock, send=upstream, system_lookup=system)
    assert await resolver.resolve("app.test") == [ipaddress.IPv4Address("198.51.100.1")]
    decide.flags = {USERSPACE_DNS_FLAG: True}
    await flags.refresh()
    assert await resolver.resolve("app.test") == [ipaddress.IPv4Address("192.0.2.1")]
    decide.flags = {}
    await flags.refresh()
    assert await resolver.resolve("app.test") == [ipaddress.IPv4Address("198.51.100.1")]

    registry = CollectorRegistry()
    register(stats, registry)
    text = generate_latest(registry).decode()
    assert 'firezone_gateway_dns_cache_hits_total{path="legacy"} 1.0' in text
    assert 'firezone_gateway_dns_upstream_queries_total{path="userspace"} 2.0' in text
    assert 'firezone_gateway_dns_resolution_latency_seconds_count{path="userspace"} 1.0' in text
    for name in ("cache_misses", "stale_answers", "negative_hits", "upstream_errors"):
        assert f"firezone_gateway_dns_{name}_total" in text


def test_default_registry_exports_dns_metrics():
    from prometheus_client import REGISTRY

    import gateway_pkg.dns.metrics  # noqa: F401

    assert "firezone_gateway_dns_cache_hits_total" in generate_latest(REGISTRY).decode()
