"""The TUN device `tun-firezone`: open it, address it, route to it
(../shared/reference/firezone-gateway-facts.md §3.1).

Routes for the tunnel ranges live in their own table, entered through an inverted fwmark
rule: everything except the gateway's own marked sockets is routed into the tunnel.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from gateway_pkg.errors import RuntimeFailure
from gateway_pkg.netconst import (
    FIREZONE_MARK,
    ROUTE_TABLE,
    RULE_PRIORITY,
    TUN_MTU,
    TUN_NAME,
    TUN_PATH,
    TUN_TXQUEUELEN,
    TUNNEL_NETWORKS,
)

log = logging.getLogger("gateway_pkg.tunnel.tun")

_TUNSETIFF = 0x400454CA
_TUNSETOFFLOAD = 0x400454D0
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
# <linux/if_tun.h> TUN_F_*: what the kernel may hand us unfinished (and accept from us).
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6 = 0x01, 0x02, 0x04, 0x20, 0x40
_FIB_RULE_INVERT = 0x2
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1


def _capability_hint(what: str, exc: OSError) -> RuntimeFailure:
    if exc.errno in (errno.EPERM, errno.EACCES):
        return RuntimeFailure(f"{what}: permission denied; the gateway needs CAP_NET_ADMIN")
    if exc.errno == errno.EINVAL:  # TUNSETIFF on a name held by an interface of another kind
        return RuntimeFailure(f"{what}: {exc.strerror} (is the name taken by an interface that is not a TUN device?)")
    return RuntimeFailure(f"{what}: {exc.strerror or exc}")


# Recreating the device after it was deleted underneath: the delay before each attempt (the
# last one repeats), and how long to keep trying before the process exits with status 1.
RECOVERY_DELAYS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
RECOVERY_GIVE_UP = 30.0


def read_failure(exc: OSError | None) -> str | None:
    """What a failed read of the TUN fd means: None for "nothing to read now" (EAGAIN, EINTR),
    else why the device is unusable. A TUN whose device was deleted reads EBADFD ("File
    descriptor in bad state") and polls EPOLLERR for ever; an empty read is no packet either."""
    if exc is None:
        return "read returned end of file"
    if exc.errno in (errno.EAGAIN, errno.EINTR):
        return None
    if exc.errno == errno.EBADFD:
        return "the device was deleted: reads fail with EBADFD"
    return f"read failed: {exc.strerror or exc}"


@dataclass
class TunRecovery:
    """Sans-I/O: the TUN device lost and being recreated. `lose` once per loss (True the first
    time), `failed` after each attempt that did not work (the delay before the next, or None:
    give up), `recovered` when it is back. `readiness` is the /readyz reason while lost."""

    name: str = TUN_NAME
    delays: tuple[float, ...] = RECOVERY_DELAYS
    give_up_after: float = RECOVERY_GIVE_UP
    lost_at: float | None = None
    reason: str = ""
    attempts: int = 0
    last_error: str = ""

    @property
    def lost(self) -> bool:
        return self.lost_at is not None

    def lose(self, reason: str, now: float) -> bool:
        if self.lost_at is not None:
            return False
        self.lost_at, self.reason, self.attempts, self.last_error = now, reason, 0, ""
        return True

    def lost_message(self) -> str:
        return (f"TUN device {self.name} was removed ({self.reason}); recreating it with its addresses, "
                f"routes and rule, for up to {self.give_up_after:.0f} s, then exiting with status 1")

    def failed(self, error: str, now: float) -> float | None:
        assert self.lost_at is not None
        self.attempts += 1
        self.last_error = error
        if now - self.lost_at >= self.give_up_after:
            return None
        return self.delays[min(self.attempts, len(self.delays) - 1)]

    def give_up_message(self) -> str:
        return (f"TUN device {self.name} was removed and could not be recreated in "
                f"{self.give_up_after:.0f} s ({self.attempts} attempts): {self.last_error}")

    def recovered(self, now: float) -> float:
        """How long the device was gone; the state is clean again."""
        assert self.lost_at is not None
        took = now - self.lost_at
        self.lost_at, self.reason, self.attempts, self.last_error = None, "", 0, ""
        return took

    def readiness(self) -> str | None:
        if self.lost_at is None:
            return None
        detail = f"TUN device {self.name} was removed ({self.reason}); recreating it"
        return f"{detail} (last attempt: {self.last_error})" if self.last_error else detail


class TunDevice:
    """An open TUN fd plus the netlink configuration around it.

    pyroute2's synchronous IPRoute runs its own event loop, so `open`, `set_addresses` and
    `close` must be called off the asyncio loop's thread (the data plane uses to_thread).
    """

    def __init__(self, name: str = TUN_NAME, offloads: str = "off") -> None:
        self.name = name
        self.fd = -1
        self.offloads = offloads  # the FIREZONE_OFFLOADS mode asked for: auto, no-uso, off
        # After open: every read and write carries a virtio_net_hdr (tunnel.offload) ...
        self.vnet_hdr = False
        # ... and the kernel may hand us TCP (tso) / UDP (uso) super-packets and take them back.
        self.tso = False
        self.uso = False
        self.index = 0
        self._rules_added = False
        # The portal's addresses, kept to restore them on a device recreated by `reopen`.
        self.assigned: tuple[ipaddress.IPv4Address, ipaddress.IPv6Address] | None = None

    def _create(self) -> int:
        """A new fd attached to a new device `name` (TUNSETIFF)."""
        if not os.path.exists(TUN_PATH):
            raise RuntimeFailure(
                f"TUN unavailable: {TUN_PATH} does not exist (load the `tun` kernel module; "
                "containers need --device /dev/net/tun)"
            )
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise _capability_hint(f"cannot open {TUN_PATH}", exc) from None
        try:
            fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", self.name.encode(), self._flags()))
        except OSError as exc:
            os.close(fd)
            raise _capability_hint(f"cannot create TUN device {self.name}", exc) from None
        return fd

    def _flags(self) -> int:
        return _IFF_TUN | _IFF_NO_PI | (_IFF_VNET_HDR if self.offloads != "off" else 0)

    def open(self) -> None:
        self.fd = self._create()
        self.vnet_hdr = bool(self._flags() & _IFF_VNET_HDR)
        if self.vnet_hdr:
            self._negotiate_offloads()
        try:
            self._configure_link()
        except RuntimeFailure:
            self.close()
            raise
        log.info("Created TUN device %s", self.name)

    def _configure_link(self) -> None:
        try:
            with IPRoute() as ipr:
                self.index = ipr.link_lookup(ifname=self.name)[0]
                ipr.link("set", index=self.index, mtu=TUN_MTU)
                try:
                    ipr.link("set", index=self.index, txqlen=TUN_TXQUEUELEN)
                except NetlinkError as exc:  # upstream only warns here too
                    log.warning("Cannot set txqueuelen on %s: %s", self.name, exc)
        except (NetlinkError, OSError, IndexError) as exc:
            raise RuntimeFailure(f"cannot configure {self.name}: {exc}") from None

    def reopen(self) -> None:
        """Recreate the device after it was deleted underneath (its fd then reads EBADFD): a new
        device on the same descriptor number (dup2, so a writer holding the number never
        writes to a closed or reused descriptor), with the same offloads, MTU, the portal's
        addresses and the routes. The fwmark rule does not belong to the device: it stayed."""
        if self.fd < 0:
            raise RuntimeFailure(f"TUN device {self.name} is closed")
        before = (self.vnet_hdr, self.tso, self.uso)
        fd = self._create()
        try:
            os.dup2(fd, self.fd, inheritable=False)
        finally:
            os.close(fd)
        if self.vnet_hdr:
            self.tso = self.uso = False
            self._negotiate_offloads()
        if (self.vnet_hdr, self.tso, self.uso) != before:  # the same kernel: never seen
            raise RuntimeFailure(f"recreated {self.name} without the offloads it had")
        self._configure_link()
        if self.assigned is not None:
            self.set_addresses(*self.assigned)

    def _negotiate_offloads(self) -> None:
        """Ask for checksum, TSO and USO; a kernel without USO (before 6.2) refuses the whole set,
        so ask again without it. Keeps the virtio header even with none, which costs nothing."""
        tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        attempts = ([tso | TUN_F_USO4 | TUN_F_USO6] if self.offloads == "auto" else []) + [tso, 0]
        for wanted in attempts:
            try:
                fcntl.ioctl(self.fd, _TUNSETOFFLOAD, wanted)
            except OSError as exc:
                log.debug("TUNSETOFFLOAD 0x%x refused: %s", wanted, exc.strerror or exc)
                continue
            self.tso = bool(wanted & TUN_F_TSO4)
            self.uso = bool(wanted & TUN_F_USO4)
            return

    def describe_offloads(self) -> str:
        if not self.vnet_hdr:
            return "none"
        return ", ".join(name for name, on in (("virtio header", True), ("checksum", self.tso),
                                               ("TSO", self.tso), ("USO", self.uso)) if on)

    def set_addresses(self, ipv4: ipaddress.IPv4Address, ipv6: ipaddress.IPv6Address) -> None:
        """Replace the device's addresses with the portal's /32 and /128, bring it up, route."""
        self.assigned = (ipv4, ipv6)
        try:
            self._set_addresses(ipv4, ipv6)
        except NetlinkError as exc:  # e.g. the device deleted meanwhile
            raise RuntimeFailure(f"cannot set the addresses of {self.name}: {exc}") from None

    def _set_addresses(self, ipv4: ipaddress.IPv4Address, ipv6: ipaddress.IPv6Address) -> None:
        # Idempotent: an `init` after every rejoin brings the same addresses, and the device keeps
        # them (no moment without an address); only addresses that are no longer wanted go.
        wanted = {(str(ipv4), 32), (str(ipv6), 128)}
        ok = 0
        with IPRoute() as ipr:
            present: set[tuple[str, int]] = set()
            for msg in ipr.get_addr(index=self.index):
                address = msg.get_attr("IFA_ADDRESS")
                if not address or address.startswith("fe80"):
                    continue
                if (address, msg["prefixlen"]) in wanted:
                    present.add((address, msg["prefixlen"]))
                    continue
                with contextlib.suppress(NetlinkError):
                    ipr.addr("del", index=self.index, address=address, prefixlen=msg["prefixlen"])
            for address, prefix in sorted(wanted):
                if (address, prefix) in present:
                    ok += 1
                    continue
                try:
                    ipr.addr("add", index=self.index, address=address, prefixlen=prefix)
                    ok += 1
                except NetlinkError as exc:
                    if exc.code == errno.EEXIST:
                        ok += 1
                        continue
                    log.warning("Cannot add %s/%d to %s: %s", address, prefix, self.name, exc)
            if ok == 0:
                raise RuntimeFailure("Failed to set TUN interface IPs")
            ipr.link("set", index=self.index, state="up", mtu=TUN_MTU)
            self._add_routes(ipr)
        log.info("TUN addresses set", extra={"fields": {"ipv4": ipv4, "ipv6": ipv6}})

    def _add_routes(self, ipr: IPRoute) -> None:
        for network in TUNNEL_NETWORKS:
            try:
                ipr.route("add", dst=str(network), oif=self.index, table=ROUTE_TABLE)
            except NetlinkError as exc:
                if exc.code not in (errno.EEXIST, errno.EOPNOTSUPP):
                    raise RuntimeFailure(f"cannot add route {network}: {exc}") from None
        for family in (2, 10):
            try:
                ipr.rule("add", table=ROUTE_TABLE, fwmark=FIREZONE_MARK, fwmask=0xFFFFFFFF,
                         flags=_FIB_RULE_INVERT, family=family, priority=RULE_PRIORITY)
                self._rules_added = True
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    continue
                if exc.code == errno.EAFNOSUPPORT and family == 10:
                    log.warning("IPv6 policy routing unavailable; IPv6 tunnel traffic will not route")
                    continue
                raise RuntimeFailure(f"cannot add the fwmark routing rule: {exc}") from None

    def is_up(self) -> bool:
        """IFF_UP via SIOCGIFFLAGS: cheap enough for every /readyz, and no netlink round trip."""
        if self.fd < 0:
            return False
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                request = struct.pack("16sH14x", self.name.encode(), 0)
                flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))[1]
        except OSError:
            return False
        return bool(flags & _IFF_UP)

    def close(self) -> None:
        if self._rules_added:
            with contextlib.suppress(NetlinkError, OSError), IPRoute() as ipr:
                for family in (2, 10):
                    with contextlib.suppress(NetlinkError):
                        ipr.rule("del", table=ROUTE_TABLE, fwmark=FIREZONE_MARK, fwmask=0xFFFFFFFF,
                                 flags=_FIB_RULE_INVERT, family=family, priority=RULE_PRIORITY)
            self._rules_added = False
        if self.fd >= 0:
            # Closing the fd removes the (non-persistent) device and its routes with it.
            os.close(self.fd)
            self.fd = -1
            self.vnet_hdr = self.tso = self.uso = False
