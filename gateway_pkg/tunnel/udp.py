"""The WireGuard UDP sockets: IPv4 and IPv6 on 52625 (ephemeral if taken), marked, large buffers,
and allowed to be fragmented.

The outer datagram of a full 1280-byte inner packet is 1340 bytes over IPv4 and 1360 over IPv6
(+4 when relayed), so an outer path narrower than that needs IP fragmentation; the tunnel MTU
cannot go below 1280 for IPv6. As kernel WireGuard does, the IPv4 socket clears DF
(IP_MTU_DISCOVER = IP_PMTUDISC_DONT): a router on a narrower link fragments instead of dropping
and sending an ICMP "fragmentation needed" that a firewall may eat. IPv6 routers never fragment;
the IPv6 socket (IPV6_MTU_DISCOVER = IPV6_PMTUDISC_DONT, IPV6_DONTFRAG off) lets the kernel
fragment at the source to the path MTU, learned from ICMPv6 Packet Too Big, and reports no error.

Measured here (docs/dataplane.md): asyncio's DatagramProtocol handled only 26-38 kpps and
dropped most packets, while `add_reader` draining many `recvfrom_into` per wakeup handled
180-200 kpps; so the data plane reads these sockets itself in batches. With the kernel's UDP
offloads (FIREZONE_OFFLOADS, on by default) one receive returns a sender's run of datagrams
(UDP_GRO; `gro_segment_size` says how to split it) and one send carries a run of equal-sized
datagrams to one endpoint (UDP_SEGMENT; `gso_runs` finds the runs).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from gateway_pkg.errors import RuntimeFailure
from gateway_pkg.netconst import DEFAULT_UDP_PORT, FIREZONE_MARK, TUN_MTU, TUN_NAME

log = logging.getLogger("gateway_pkg.tunnel.udp")

SO_MARK = getattr(socket, "SO_MARK", 36)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
# <linux/in.h>, <linux/in6.h>: Python's socket module names only IPV6_DONTFRAG.
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_DONT = 0
IPV6_DONTFRAG = getattr(socket, "IPV6_DONTFRAG", 62)
# <linux/udp.h>: segmentation offload on send (GSO) and coalescing on receive (GRO).
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO = getattr(socket, "UDP_GRO", 104)
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS
GSO_MAX_BYTES = 65000  # below the largest UDP payload of either family
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)  # one int: the segment size
RECV_BUFFER = 128 * 1024 * 1024
SEND_BUFFER = 16 * 1024 * 1024


def _set_buffers(sock: socket.socket) -> None:
    for force, plain, size in ((SO_RCVBUFFORCE, socket.SO_RCVBUF, RECV_BUFFER),
                               (SO_SNDBUFFORCE, socket.SO_SNDBUF, SEND_BUFFER)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)  # beyond rmem_max, needs CAP_NET_ADMIN
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, size)


def allow_fragmentation(sock: socket.socket) -> None:
    """Clear DF (IPv4) / let the kernel fragment (IPv6) on an outer socket; see the module doc.

    A kernel that refuses is logged once per socket: the gateway still runs, but a narrow path
    then needs ICMP to get through."""
    options: tuple[tuple[int, int, int, str], ...]
    if sock.family == socket.AF_INET6:
        options = ((socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT, "IPV6_MTU_DISCOVER"),
                   (socket.IPPROTO_IPV6, IPV6_DONTFRAG, 0, "IPV6_DONTFRAG"))
    else:
        options = ((socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT, "IP_MTU_DISCOVER"),)
    for level, option, value, name in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError as exc:
            log.warning("Cannot set %s on the UDP socket (%s): outer datagrams may be dropped on paths "
                        "narrower than %d bytes", name, exc.strerror or exc,
                        TUN_MTU + (80 if sock.family == socket.AF_INET6 else 60))  # IP, UDP, WireGuard


def enable_gro(sock: socket.socket) -> bool:
    """Let the kernel hand over a run of datagrams of one sender (sent with GSO, or merged by
    the NIC's GRO) as one buffer, with the segment size in a control message."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def gso_supported(sock: socket.socket) -> bool:
    """Whether the kernel knows UDP_SEGMENT (Linux 4.18+); a send may still refuse it per route."""
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def gro_segment_size(ancdata: list[tuple[int, int, bytes]], size: int) -> int:
    """The segment size of a buffer received with GRO on: from its control message, else the
    whole buffer is one datagram."""
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
            segment = int.from_bytes(data[:4], sys.byteorder)
            if segment > 0:
                return segment
    return size


def gso_runs(batch: list[tuple[bytes, tuple[str, int]]]) -> list[tuple[tuple[str, int], int, list[bytes]]]:
    """Split a batch of (datagram, endpoint), in order, into runs for one GSO send each:
    consecutive datagrams to one endpoint, all of the first one's size except a shorter last,
    at most GSO_MAX_SEGMENTS and GSO_MAX_BYTES. Returns (endpoint, segment size, datagrams)."""
    runs: list[tuple[tuple[str, int], int, list[bytes]]] = []
    current: list[bytes] = []
    endpoint: tuple[str, int] = ("", 0)
    segment = total = 0
    open_run = False
    for data, destination in batch:
        size = len(data)
        if (open_run and destination == endpoint and size <= segment and len(current) < GSO_MAX_SEGMENTS
                and total + size <= GSO_MAX_BYTES):
            current.append(data)
            total += size
            open_run = size == segment  # a shorter datagram ends the run
            continue
        if current:
            runs.append((endpoint, segment, current))
        current, endpoint, segment, total, open_run = [data], destination, size, size, True
    if current:
        runs.append((endpoint, segment, current))
    return runs


def _bind(family: int, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, struct.pack("I", FIREZONE_MARK))
        allow_fragmentation(sock)
        _set_buffers(sock)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


Binder = Callable[[int, int], socket.socket]
"""Binds one family's socket on a port (0: ephemeral); injectable so the unit tests need no socket."""

FAMILY_NAMES: Final[dict[int, str]] = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
# Times to look for one ephemeral port free in both families before each family gets its own.
SHARED_PORT_ATTEMPTS: Final = 16


def _ipv4_first(family: int) -> int:
    return 0 if family == socket.AF_INET else 1


def _families_text(families: Iterable[int]) -> str:
    return " and ".join(FAMILY_NAMES[f] for f in sorted(families, key=_ipv4_first))


def fallback_message(asked: int, taken: Iterable[int], bound: Mapping[int, int]) -> str:
    """The one warning when the asked port was taken: both the asked and the bound port(s).

    `taken`: the families in which `asked` was in use; `bound`: family -> port really bound."""
    taken = set(taken)
    where = "" if taken >= set(bound) else f" for {_families_text(taken)}"
    ports = set(bound.values())
    if len(ports) == 1:
        instead = f"UDP port {ports.pop()} ({_families_text(bound)})"
    else:
        instead = "UDP ports " + " and ".join(f"{bound[family]} ({FAMILY_NAMES[family]})"
                                              for family in sorted(bound, key=_ipv4_first))
    return (f"UDP port {asked} is taken{where}: listening on {instead} instead (ephemeral: it changes "
            f"at each start; free port {asked} or set FIREZONE_UDP_PORT to keep one port)")


def _close(sockets: Mapping[int, socket.socket]) -> None:
    for sock in sockets.values():
        sock.close()


def _bind_failure(port: int, exc: OSError) -> RuntimeFailure:
    what = f"UDP port {port}" if port else "an ephemeral UDP port"
    return RuntimeFailure(f"cannot bind {what}: {exc.strerror or exc}")


def _ipv6_unavailable(exc: OSError) -> bool:
    return exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)


class _NoIPv6(Exception):
    """The kernel has no IPv6 (module off, disabled): listen on IPv4 only."""


def _bind_shared(families: list[int], binder: Binder) -> dict[int, socket.socket]:
    """Every family on one ephemeral port: the first family's, when the others can have it too."""
    for attempt in range(SHARED_PORT_ATTEMPTS + 1):
        sockets: dict[int, socket.socket] = {}
        try:
            for family in families:
                # The last attempt (very unlikely: the ephemeral range nearly full) gives each
                # family a port of its own.
                shared = attempt < SHARED_PORT_ATTEMPTS and bool(sockets)
                sockets[family] = binder(family, sockets[families[0]].getsockname()[1] if shared else 0)
        except OSError as exc:
            _close(sockets)
            if family == socket.AF_INET6 and _ipv6_unavailable(exc):
                raise _NoIPv6 from None
            if exc.errno == errno.EADDRINUSE:
                continue
            raise
        return sockets
    raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))  # not reached: the last attempt binds 0


def bind_pair(port: int = DEFAULT_UDP_PORT, binder: Binder = _bind) -> dict[int, socket.socket]:
    """Bind IPv4 and IPv6 on `port`; if it is taken, fall back to an ephemeral port, as upstream.

    One port for both families whenever possible: if `port` is taken in one family only, both
    move to one ephemeral port (the gateway has one port to tell; an IPv4 and an IPv6 client,
    and one firewall rule, see the same). The fallback logs one warning naming the asked and the
    bound port. Port 0 asks for that shared ephemeral port directly, without a warning. A host
    without IPv6 listens on IPv4 only. Any other failure (EACCES...) is a RuntimeFailure (exit 1).
    """
    families: list[int] = [socket.AF_INET, socket.AF_INET6]
    sockets: dict[int, socket.socket] = {}
    taken: list[int] = []
    if port != 0:
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                sockets[family] = binder(family, port)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    taken.append(family)
                elif family == socket.AF_INET6 and _ipv6_unavailable(exc):
                    log.warning("IPv6 unavailable: listening on IPv4 only")
                    families.remove(family)
                else:
                    _close(sockets)
                    raise _bind_failure(port, exc) from None
    if port == 0 or taken:
        _close(sockets)
        try:
            try:
                sockets = _bind_shared(families, binder)
            except _NoIPv6:
                log.warning("IPv6 unavailable: listening on IPv4 only")
                families = [socket.AF_INET]
                sockets = _bind_shared(families, binder)
        except OSError as exc:
            raise _bind_failure(0, exc) from None
        if taken:
            log.warning(fallback_message(port, taken, {f: s.getsockname()[1] for f, s in sockets.items()}))
    for bound in sockets.values():
        log.info("Listening for WireGuard on UDP %s port %d", FAMILY_NAMES[bound.family], bound.getsockname()[1])
    return sockets


def uplink_addresses() -> list[str]:
    """The addresses of the default routes' interfaces: our ICE host candidates.

    Never the TUN device's, loopback, link-local or the networks behind the gateway (those are
    not on a default-route interface), so no candidate leaks a resource or tunnel address.
    """
    from pyroute2 import IPRoute  # the data plane already depends on it (tun.py)

    found: list[str] = []
    try:
        with IPRoute() as ipr:
            indexes: list[int] = []
            for family in (socket.AF_INET, socket.AF_INET6):
                for route in ipr.get_default_routes(family=family):
                    oif = route.get_attr("RTA_OIF")
                    if oif is not None and oif not in indexes:
                        indexes.append(oif)
            for index in indexes:
                links = ipr.get_links(index)
                if links and links[0].get_attr("IFLA_IFNAME") == TUN_NAME:
                    continue
                for addr in ipr.get_addr(index=index):
                    text = addr.get_attr("IFA_ADDRESS")
                    if not text:
                        continue
                    ip = ipaddress.ip_address(text)
                    if ip.is_loopback or ip.is_link_local or ip.is_multicast or str(ip) in found:
                        continue
                    found.append(str(ip))
    except OSError as exc:
        log.warning("Cannot list the uplink addresses for ICE host candidates: %s", exc)
    return found
