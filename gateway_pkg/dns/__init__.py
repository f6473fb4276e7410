"""DNS resources: user-space resolution with a TTL cache behind a feature flag, and the
legacy getaddrinfo path with a fixed 30 s cache. See docs/dns.md."""

from gateway_pkg.dns.base import DnsResolver, IPAddress, ResolveError
from gateway_pkg.dns.flags import FeatureFlags
from gateway_pkg.dns.resolver import FlaggedResolver, build_resolver
from gateway_pkg.dns.settings import DnsSettings

__all__ = [
    "DnsResolver",
    "DnsSettings",
    "FeatureFlags",
    "FlaggedResolver",
    "IPAddress",
    "ResolveError",
    "build_resolver",
]
