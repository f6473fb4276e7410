"""The system's resolver configuration: /etc/resolv.conf and /etc/hosts.

Parsed here rather than through dnspython's Resolver because we also need `attempts`
(which dnspython ignores) and want the search rules in one visible place.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway_pkg.dns.settings import Nameserver

logger = logging.getLogger("gateway_pkg.dns")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# resolv.conf(5) limits and defaults.
MAX_NAMESERVERS = 3
DEFAULT_TIMEOUT = 5.0
DEFAULT_ATTEMPTS = 2
DEFAULT_NDOTS = 1


@dataclass(frozen=True, slots=True)
class ResolvConf:
    nameservers: tuple[Nameserver, ...] = ()
    search: tuple[str, ...] = ()
    ndots: int = DEFAULT_NDOTS
    timeout: float = DEFAULT_TIMEOUT
    attempts: int = DEFAULT_ATTEMPTS

    def candidates(self, name: str) -> list[str]:
        """Absolute names to try, in order, for a name as the resource gives it.

        Like glibc: a name ending in '.' is absolute; one with at least `ndots` dots is
        tried as-is first, then with the search domains; otherwise the other way round.
        """
        if name.endswith("."):
            return [name]
        searched = [f"{name}.{domain.strip('.')}." for domain in self.search if domain != "."]
        if name.count(".") >= self.ndots:
            return [f"{name}.", *searched]
        return [*searched, f"{name}."]


def parse_resolv_conf(text: str) -> ResolvConf:
    nameservers: list[Nameserver] = []
    search: tuple[str, ...] = ()
    ndots, timeout, attempts = DEFAULT_NDOTS, DEFAULT_TIMEOUT, DEFAULT_ATTEMPTS
    for line in text.splitlines():
        tokens = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(tokens) < 2:
            continue
        keyword, values = tokens[0], tokens[1:]
        if keyword == "nameserver" and len(nameservers) < MAX_NAMESERVERS:
            address = values[0].split("%", 1)[0]  # drop a link-local zone id
            try:
                ipaddress.ip_address(address)
            except ValueError:
                continue
            nameservers.append((address, 53))
        elif keyword in ("search", "domain"):
            # The last search/domain line wins, as in glibc.
            search = tuple(values)
        elif keyword == "options":
            for option in values:
                key, _, value = option.partition(":")
                if key == "ndots" and value.isdigit():
                    ndots = min(int(value), 15)
                elif key == "timeout" and value.isdigit():
                    timeout = float(max(int(value), 1))
                elif key == "attempts" and value.isdigit():
                    attempts = max(int(value), 1)
    return ResolvConf(tuple(nameservers), search, ndots, timeout, attempts)


def load_resolv_conf(path: str, nameservers: tuple[Nameserver, ...] = ()) -> ResolvConf:
    """Read resolv.conf; explicit nameservers replace the file's. A missing file means
    glibc's fallback of the local host, like an empty file."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            conf = parse_resolv_conf(f.read())
    except FileNotFoundError:
        conf = ResolvConf()
    if nameservers:
        conf = ResolvConf(nameservers, conf.search, conf.ndots, conf.timeout, conf.attempts)
    if not conf.nameservers:
        conf = ResolvConf((("127.0.0.1", 53),), conf.search, conf.ndots, conf.timeout,
                          conf.attempts)  # fmt: skip
    return conf


@dataclass(frozen=True, slots=True)
class HostsTable:
    v4: dict[str, tuple[ipaddress.IPv4Address, ...]] = field(default_factory=dict)
    v6: dict[str, tuple[ipaddress.IPv6Address, ...]] = field(default_factory=dict)


def parse_hosts(text: str) -> HostsTable:
    v4: dict[str, list[ipaddress.IPv4Address]] = {}
    v6: dict[str, list[ipaddress.IPv6Address]] = {}
    for line in text.splitlines():
        tokens = line.split("#", 1)[0].split()
        if len(tokens) < 2:
            continue
        try:
            address = ipaddress.ip_address(tokens[0].split("%", 1)[0])
        except ValueError:
            continue
        for name in tokens[1:]:
            key = name.lower().rstrip(".")
            if isinstance(address, ipaddress.IPv4Address):
                v4.setdefault(key, []).append(address)
            else:
                v6.setdefault(key, []).append(address)
    return HostsTable(
        {name: tuple(dict.fromkeys(a)) for name, a in v4.items()},
        {name: tuple(dict.fromkeys(a)) for name, a in v6.items()},
    )


class HostsFile:
    """/etc/hosts, re-read when its mtime changes, checked at most every `recheck` seconds.

    A stat per resolution would cost more than the whole cache hit; hickory reads the
    file once at start, glibc on every call. Rechecking every few seconds sits between.
    """

    def __init__(self, path: str, clock: Callable[[], float], recheck: float = 5.0) -> None:
        self._path = path
        self._clock = clock
        self._recheck = recheck
        self.next_check = float("-inf")
        self._mtime: int | None = None
        self.table = HostsTable()

    def current(self) -> HostsTable:
        self.check(self._clock())
        return self.table

    def check(self, now: float) -> bool:
        """Re-read the file if the recheck time has come and it changed; True if the
        table changed (callers drop cached answers the new entries override)."""
        if now < self.next_check:
            return False
        self.next_check = now + self._recheck
        try:
            mtime = os.stat(self._path).st_mtime_ns
        except OSError:
            changed = bool(self.table.v4 or self.table.v6)
            self._mtime, self.table = None, HostsTable()
            return changed
        if mtime == self._mtime:
            return False
        try:
            with open(self._path, encoding="utf-8", errors="replace") as f:
                self.table = parse_hosts(f.read())
            self._mtime = mtime
        except OSError as error:
            logger.warning("cannot read hosts file %s: %s", self._path, error)
            return False
        return True
