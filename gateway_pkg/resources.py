"""Resources a client may be authorized for, as the portal describes them.

These are domain values shared by the portal message parser (which builds them) and the
data plane (which enforces them), so neither depends on the other.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Filter:
    """One allowed protocol (and port range for tcp/udp). An empty filter list allows all."""

    protocol: Literal["tcp", "udp", "icmp"]
    port_range_start: int = 0
    port_range_end: int = 65535


@dataclass(frozen=True, slots=True)
class CidrResource:
    id: str
    address: IPNetwork
    name: str
    filters: tuple[Filter, ...] = ()


@dataclass(frozen=True, slots=True)
class DnsResource:
    """A DNS resource: `address` is a name pattern such as `*.corp.example` or `app.example`."""

    id: str
    address: str
    name: str
    filters: tuple[Filter, ...] = ()


@dataclass(frozen=True, slots=True)
class InternetResource:
    id: str
    filters: tuple[Filter, ...] = ()


Resource = CidrResource | DnsResource | InternetResource
