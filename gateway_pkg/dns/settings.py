"""The DNS and feature-flag settings, as the dns package uses them.

The values come from the settings table (`gateway_pkg.settings`); the defaults below are
the table's own, so a part built without a Config (tests, benchmarks) behaves like the
gateway with nothing set.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway_pkg.settings import Nameserver, default

RESOLUTION_TIMEOUT = 10.0  # upstream DNS_RESOLUTION_TIMEOUT, below the 20 s handshake timeout


@dataclass(frozen=True, slots=True)
class DnsSettings:
    cache_size: int = default("dns.cache_size")
    min_ttl: float = default("dns.min_ttl")
    max_ttl: float = default("dns.max_ttl")
    max_stale_age: float = default("dns.max_stale_age")
    legacy_ttl: float = default("dns.legacy_ttl")
    resolv_conf: str = default("dns.resolv_conf")
    hosts_file: str = default("dns.hosts_file")
    # Replaces resolv.conf's nameservers when set; the only way to name a port, which
    # resolv.conf cannot express (tests and the lab point this at a local unbound).
    nameservers: tuple[Nameserver, ...] = default("dns.nameservers")
    # The TUN DNS server probes the nameservers with `<probe_name> A` (upstream: firezone.dev).
    probe_name: str = default("dns.probe_name")
    resolution_timeout: float = RESOLUTION_TIMEOUT


@dataclass(frozen=True, slots=True)
class FlagSettings:
    url: str | None = default("flags.url")
    interval: float = default("flags.interval")
    api_key: str = default("flags.api_key")
    no_telemetry: bool = default("flags.no_telemetry")
    userspace_dns_override: bool | None = default("flags.userspace_dns_override")

    @property
    def fetching_enabled(self) -> bool:
        """Fetched only with telemetry on and a URL configured (unset: flags stay off)."""
        return not self.no_telemetry and self.url is not None
