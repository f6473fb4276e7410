"""What every resolution path promises its callers (the data plane)."""

from __future__ import annotations

import ipaddress
from typing import Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ResolveError(Exception):
    """The name could not be resolved to any address.

    `negative` is True when DNS said so authoritatively (NXDOMAIN, or no A and no AAAA
    records), False for failures to get an answer at all (timeouts, refusals).
    """

    def __init__(self, message: str, *, negative: bool = False) -> None:
        super().__init__(message)
        self.negative = negative


class DnsResolver(Protocol):
    async def resolve(self, name: str) -> list[IPAddress]:
        """IPv4 and IPv6 addresses of `name`; raises ResolveError."""
        ...
