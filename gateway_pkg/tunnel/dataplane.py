"""The data plane: portal messages → peers and policies; UDP ⇄ WireGuard ⇄ policy/NAT ⇄ TUN.

This is the I/O glue around three sans-I/O cores (`wireguard.device`, `tunnel.policy`,
`tunnel.p2p_control`). It runs on the asyncio loop: the TUN fd and the UDP sockets are
read with `add_reader`, draining up to a batch per wakeup, which measured 5x faster here
than asyncio's datagram protocol (performance.md).

Time: WireGuard timers use the monotonic clock; authorization expiry and NAT sessions use
Unix time, because the portal's `expires_at` is Unix seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway_pkg.dns.base import DnsResolver, IPAddress
from gateway_pkg.dns.flags import FeatureFlags
from gateway_pkg.errors import RuntimeFailure
from gateway_pkg.interfaces import PortalSender
from gateway_pkg.netconst import DEFAULT_UDP_PORT
from gateway_pkg.portal import messages
from gateway_pkg.tunnel import metrics, p2p_control
from gateway_pkg.tunnel.metrics import TRAFFIC as traffic
from gateway_pkg.tunnel.policy import Action, ClientPolicy, TunAddresses
from gateway_pkg.tunnel.tun import TunDevice
from gateway_pkg.tunnel.udp import bind_pair
from gateway_pkg.tunnel.writer import BatchWriter
from gateway_pkg.wireguard.device import WireGuardDevice
from gateway_pkg.wireguard.events import DeviceOutput, Dropped, HandshakeCompleted
from gateway_pkg.wireguard.timers import TimerConfig

log = logging.getLogger("gateway_pkg.tunnel")

BATCH = 256
MAX_DATAGRAM = 65535
DNS_RESOLUTION_TIMEOUT = 10.0  # below WireGuard/ICE's 20 s handshake timeout, as upstream
MAX_PENDING_RESOLUTIONS = 1000
EXPIRY_CHECK_INTERVAL = 1.0


@dataclass
class Client:
    id: str
    public_key: bytes
    preshared_key: bytes
    policy: ClientPolicy
    addresses: tuple[bytes, bytes] = field(default=(b"", b""))


@dataclass(frozen=True)
class DataPlaneSettings:
    udp_port: int = DEFAULT_UDP_PORT
    timers: TimerConfig = field(default_factory=TimerConfig)
    flags_distinct_id: str = ""


class TunnelDataPlane:
    def __init__(self, private_key: bytes, resolver: DnsResolver, flags: FeatureFlags,
                 settings: DataPlaneSettings | None = None, *,
                 wall_clock: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or DataPlaneSettings()
        self.wg = WireGuardDevice(private_key, timers=self.settings.timers)
        self.resolver = resolver
        self.flags = flags
        self.tun = TunDevice()
        self.gateway_addresses = TunAddresses()
        self.clients: dict[str, Client] = {}
        self._by_key: dict[bytes, Client] = {}
        self._by_ip: dict[bytes, Client] = {}
        self._sockets: dict[int, socket.socket] = {}
        self._wall = wall_clock
        self._clock = clock
        self._addresses_set = False
        self._pending_resolutions = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._portal: PortalSender | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._recv_buffer = bytearray(MAX_DATAGRAM)
        self._tun_writer: BatchWriter[bytes] | None = None
        self._udp_writer: BatchWriter[tuple[bytes, tuple[str, int]]] | None = None
        self._to_tun: list[bytes] = []
        self._to_udp: list[tuple[bytes, tuple[str, int]]] = []

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        return self.wg.public_key

    @property
    def udp_port(self) -> int:
        sock = self._sockets.get(socket.AF_INET) or next(iter(self._sockets.values()), None)
        return sock.getsockname()[1] if sock else 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.tun.open)
        try:
            self._sockets = bind_pair(self.settings.udp_port)
        except RuntimeFailure:
            await asyncio.to_thread(self.tun.close)
            raise
        self._tun_writer = BatchWriter("tun-writer", self._write_tun)
        self._udp_writer = BatchWriter("udp-writer", self._send_one)
        self._loop.add_reader(self.tun.fd, self._on_tun_readable)
        for sock in self._sockets.values():
            self._loop.add_reader(sock.fileno(), self._on_udp_readable, sock)
        self._spawn(self._timer_loop())
        if self.flags.fetching_enabled:
            # As upstream: the first evaluation is awaited before the portal connects.
            await self.flags.refresh(self.settings.flags_distinct_id)
            self._spawn(self._refresh_flags())

    async def _refresh_flags(self) -> None:
        interval = self.flags.interval
        while True:
            await asyncio.sleep(interval)
            await self.flags.refresh(self.settings.flags_distinct_id)

    async def stop(self) -> None:
        for client in list(self.clients.values()):
            self._remove_client(client, goodbye=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self.tun.fd)
            for sock in self._sockets.values():
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(sock.fileno())
        for writer in (self._tun_writer, self._udp_writer):
            if writer is not None:
                await asyncio.to_thread(writer.close)
        for sock in self._sockets.values():
            sock.close()
        self._sockets = {}
        await asyncio.to_thread(self.tun.close)

    def ready(self) -> tuple[bool, str]:
        if not self._addresses_set:
            return False, "TUN device has no addresses yet (waiting for init)"
        if not self.tun.is_up():
            return False, "TUN device is down"
        return True, "ready"

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Data-plane task failed: %s", task.exception())

    # --- portal messages -------------------------------------------------------------------

    def handle(self, message: messages.IngressMessage, portal: PortalSender) -> None:
        self._portal = portal
        if isinstance(message, messages.Init):
            self._on_init(message)
        elif isinstance(message, messages.AuthorizeFlow):
            client = self._upsert_client(message.client)
            client.policy.add_resource(message.resource, message.expires_at)
            self._update_gauges()
            portal.send(*messages.flow_authorized(message.ref))
            log.info("Authorized flow", extra={"fields": {"client": client.id, "resource": message.resource.id}})
        elif isinstance(message, messages.RequestConnection):
            self._spawn(self._request_connection(message, portal))
        elif isinstance(message, messages.AllowAccess):
            self._spawn(self._allow_access(message))
        elif isinstance(message, messages.RejectAccess):
            self._reject_access(message.client_id, message.resource_id)
        elif isinstance(message, messages.ResourceUpdated):
            for holder in self.clients.values():
                if holder.policy.has_resource(message.resource.id):
                    holder.policy.update_filters(message.resource)
        elif isinstance(message, messages.AccessAuthorizationExpiryUpdated):
            known = self.clients.get(message.client_id)
            if known is not None:
                known.policy.set_expiry(message.resource_id, message.expires_at)
        elif isinstance(message, messages.RelaysPresence | messages.IceCandidates | messages.InvalidateIceCandidates):
            log.debug("Ignoring %s: no ICE/TURN yet, clients connect directly", type(message).__name__)

    def _on_init(self, init: messages.Init) -> None:
        self._spawn(self._apply_addresses(init.interface))
        self.gateway_addresses.set(init.interface.ipv4, init.interface.ipv6)
        listed: dict[str, dict[str, int | None]] = {}
        for auth in init.authorizations:
            listed.setdefault(auth.client_id, {})[auth.resource_id] = auth.expires_at
        for client in list(self.clients.values()):
            keep = listed.get(client.id, {})
            for resource_id in client.policy.resource_ids():
                if resource_id not in keep:
                    client.policy.remove_resource(resource_id)
                else:
                    client.policy.set_expiry(resource_id, keep[resource_id])
            if client.policy.is_empty():
                self._remove_client(client, goodbye=True)

    async def _apply_addresses(self, interface: messages.Interface) -> None:
        try:
            await asyncio.to_thread(self.tun.set_addresses, interface.ipv4, interface.ipv6)
        except RuntimeFailure as exc:
            self._addresses_set = False
            log.error("%s", exc)
            return
        self._addresses_set = True

    def _upsert_client(self, info: messages.FlowClient) -> Client:
        client: Client | None = self.clients.get(info.id)
        if client is not None and (client.public_key != info.public_key or client.preshared_key != info.preshared_key):
            # New keys mean a new connection: the old session and its policy go.
            self._remove_client(client, goodbye=False)
            client = None
        if client is None:
            policy = ClientPolicy(info.ipv4, info.ipv6, self.gateway_addresses)
            client = Client(info.id, info.public_key, info.preshared_key, policy)
            self.clients[info.id] = client
        old_ips = client.addresses
        for packed in old_ips:
            if self._by_ip.get(packed) is client:
                del self._by_ip[packed]
        client.addresses = (info.ipv4.packed, info.ipv6.packed)
        for packed in client.addresses:
            self._by_ip[packed] = client
        self._by_key[info.public_key] = client
        self.wg.add_peer(info.public_key, info.preshared_key)
        return client

    def _remove_client(self, client: Client, *, goodbye: bool) -> None:
        if goodbye and self.wg.has_peer(client.public_key):
            self._send_output(self.wg.send_packet(client.public_key, p2p_control.encode_goodbye(), self._clock()))
        self.wg.remove_peer(client.public_key)
        self.clients.pop(client.id, None)
        if self._by_key.get(client.public_key) is client:
            del self._by_key[client.public_key]
        for packed in client.addresses:
            if self._by_ip.get(packed) is client:
                del self._by_ip[packed]
        self._update_gauges()
        log.info("Removed client", extra={"fields": {"client": client.id}})

    def _reject_access(self, client_id: str, resource_id: str) -> None:
        client = self.clients.get(client_id)
        if client is None:
            return
        client.policy.remove_resource(resource_id)
        log.info("Access rejected", extra={"fields": {"client": client_id, "resource": resource_id}})
        if client.policy.is_empty():
            self._remove_client(client, goodbye=True)

    async def _resolve(self, name: str) -> list[IPAddress] | None:
        """Resolution with upstream's bound: 10 s each, 1000 at once, the newest dropped."""
        if self._pending_resolutions >= MAX_PENDING_RESOLUTIONS:
            log.warning("Too many DNS resolution requests, dropping the new one for %s", name)
            metrics.DROPPED.labels("dns_overload").inc()
            return None
        self._pending_resolutions += 1
        try:
            return await asyncio.wait_for(self.resolver.resolve(name), DNS_RESOLUTION_TIMEOUT)
        except Exception as exc:  # ResolveError, timeout: both mean "no answer" here
            log.debug("DNS resolution of %s failed: %s", name, exc)
            return None
        finally:
            self._pending_resolutions -= 1

    async def _request_connection(self, message: messages.RequestConnection, portal: PortalSender) -> None:
        resolved: list[IPAddress] = []
        if message.domain is not None:
            answer = await self._resolve(message.domain.name)
            if answer is None:
                # As upstream: no reply at all, the client times out and retries.
                log.debug("DNS resolution failed as part of connection request")
                return
            resolved = answer
        client = self._upsert_client(message.client)
        client.policy.add_resource(message.resource, message.expires_at)
        if message.domain is not None:
            client.policy.setup_nat(message.resource.id, message.domain.name, message.domain.proxy_ips,
                                    resolved, self._wall())
        self._update_gauges()
        # The gateway's own ICE answer credentials, as upstream's accept_connection generates them
        # (unused until ICE exists: clients reach UDP 52625 directly).
        credentials = messages.IceCredentials(os.urandom(4).hex(), os.urandom(11).hex())
        portal.send(*messages.connection_ready(message.ref, credentials))
        log.info("Accepted connection", extra={"fields": {"client": client.id, "resource": message.resource.id}})

    async def _allow_access(self, message: messages.AllowAccess) -> None:
        client = self.clients.get(message.client_id)
        if client is None:
            log.warning("allow_access for unknown client %s", message.client_id)
            return
        resolved: list[IPAddress] = []
        if message.domain is not None:
            # Upstream carries on with an empty list when resolution fails here.
            resolved = await self._resolve(message.domain.name) or []
            if message.client_id not in self.clients:
                return
        client.policy.add_resource(message.resource, message.expires_at)
        if message.domain is not None:
            client.policy.setup_nat(message.resource.id, message.domain.name, message.domain.proxy_ips,
                                    resolved, self._wall())
        log.info("Allowed access", extra={"fields": {"client": client.id, "resource": message.resource.id,
                                                     "resolved": len(resolved)}})

    async def _assigned_ips(self, client: Client, event: p2p_control.AssignedIps) -> None:
        """1.4 clients: resolve the name, install the NAT, answer DomainStatus in-band."""
        auth_ok = client.policy.has_resource(event.resource)
        active = False
        if auth_ok:
            resolved = await self._resolve(event.domain)
            if self.clients.get(client.id) is not client:
                return
            active = resolved is not None and client.policy.setup_nat(
                event.resource, event.domain, event.proxy_ips, resolved, self._wall())
        reply = p2p_control.encode_domain_status(event.resource, event.domain, active)
        self._send_output(self.wg.send_packet(client.public_key, reply, self._clock()))

    # --- packet paths ----------------------------------------------------------------------

    def _on_udp_readable(self, sock: socket.socket) -> None:
        now = self._clock()
        wall = self._wall()
        buffer = self._recv_buffer
        view = memoryview(buffer)
        for _ in range(BATCH):
            try:
                size, source = sock.recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP port unreachable surfacing as ECONNREFUSED
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                log.warning("UDP receive failed: %s", exc)
                break
            out = self.wg.receive_datagram(bytes(view[:size]), source, now)
            if out.datagrams:
                self._to_udp.extend(out.datagrams)
            if out.events:
                self._count_events(out)
            for peer, packet in out.packets:
                self._from_client(peer, packet, now, wall)
        self._flush()

    def _flush(self) -> None:
        """Hand the batch's writes to the worker threads (in order, per destination)."""
        if self._to_tun:
            assert self._tun_writer is not None
            self._tun_writer.submit(self._to_tun)
            self._to_tun = []
        if self._to_udp:
            assert self._udp_writer is not None
            self._udp_writer.submit(self._to_udp)
            self._to_udp = []

    def _write_tun(self, data: bytes) -> None:
        """Runs on the tun-writer thread."""
        try:
            os.write(self.tun.fd, data)
        except BlockingIOError:
            metrics.DROPPED.labels("tun_full").inc()
        except OSError as exc:
            metrics.DROPPED.labels("tun_error").inc()
            log.debug("TUN write failed: %s", exc)

    def _from_client(self, peer: bytes, packet: bytes, now: float, wall: float) -> None:
        client = self._by_key.get(peer)
        if client is None:
            metrics.DROPPED.labels("unknown_client").inc()
            return
        if p2p_control.is_p2p_control(packet):
            self._on_p2p_control(client, packet)
            return
        verdict = client.policy.check_outbound(packet, wall)
        if verdict.action == Action.FORWARD:
            data = packet if verdict.packet is None else bytes(verdict.packet)
            self._to_tun.append(data)
            traffic.packets_in += 1
            traffic.bytes_in += len(data)
            return
        metrics.DROPPED.labels(verdict.reason or "policy").inc()
        if verdict.action == Action.REPLY and verdict.reply is not None:
            self._send_output(self.wg.send_packet(peer, verdict.reply, now))

    def _on_p2p_control(self, client: Client, packet: bytes) -> None:
        try:
            event = p2p_control.decode(packet)
        except p2p_control.P2pControlError as exc:
            metrics.DROPPED.labels("p2p_malformed").inc()
            log.debug("Malformed p2p control packet: %s", exc)
            return
        if isinstance(event, p2p_control.AssignedIps):
            self._spawn(self._assigned_ips(client, event))
        elif isinstance(event, p2p_control.Goodbye):
            log.info("Client said goodbye", extra={"fields": {"client": client.id}})

    def _on_tun_readable(self) -> None:
        now = self._clock()
        wall = self._wall()
        fd = self.tun.fd
        for _ in range(BATCH):
            try:
                packet = os.read(fd, MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.warning("TUN read failed: %s", exc)
                break
            if not packet:
                break
            version = packet[0] >> 4
            if version == 4:
                dst = packet[16:20]
            elif version == 6:
                dst = packet[24:40]
            else:
                metrics.DROPPED.labels("malformed").inc()
                continue
            client = self._by_ip.get(dst)
            if client is None:
                metrics.DROPPED.labels("no_client").inc()
                continue
            verdict = client.policy.check_inbound(packet, wall)
            if verdict.action != Action.FORWARD:
                metrics.DROPPED.labels(verdict.reason or "policy").inc()
                continue
            data = packet if verdict.packet is None else bytes(verdict.packet)
            out = self.wg.send_packet(client.public_key, data, now)
            if out.datagrams:
                traffic.packets_out += 1
                traffic.bytes_out += len(data)
                self._to_udp.extend(out.datagrams)
            if out.events:
                self._count_events(out)
        self._flush()

    def _send_output(self, out: DeviceOutput) -> None:
        """Outside the packet loops (timers, portal messages): send at once."""
        if out.datagrams:
            self._to_udp.extend(out.datagrams)
            self._flush()
        if out.events:
            self._count_events(out)

    def _send_one(self, item: tuple[bytes, tuple[str, int]]) -> None:
        """Runs on the udp-writer thread."""
        data, endpoint = item
        family = socket.AF_INET6 if ":" in endpoint[0] else socket.AF_INET
        sock = self._sockets.get(family)
        if sock is None:
            metrics.DROPPED.labels("no_socket").inc()
            return
        try:
            sock.sendto(data, endpoint)
        except BlockingIOError:
            metrics.DROPPED.labels("udp_full").inc()
        except OSError as exc:
            metrics.DROPPED.labels("udp_error").inc()
            log.debug("UDP send to %s failed: %s", endpoint, exc)

    def _count_events(self, out: DeviceOutput) -> None:
        for event in out.events:
            if isinstance(event, Dropped):
                metrics.DROPPED.labels(event.reason).inc(event.count)
            elif isinstance(event, HandshakeCompleted):
                metrics.HANDSHAKES.inc()
                client = self._by_key.get(event.peer)
                log.info("WireGuard handshake completed", extra={"fields": {
                    "client": client.id if client else "?", "initiator": event.initiator}})

    # --- timers ----------------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        next_expiry = self._clock() + EXPIRY_CHECK_INTERVAL
        while True:
            now = self._clock()
            deadline = self.wg.next_deadline()
            wake = min(next_expiry, deadline if deadline is not None else next_expiry)
            await asyncio.sleep(max(0.01, min(wake - now, EXPIRY_CHECK_INTERVAL)))
            now = self._clock()
            self._send_output(self.wg.tick(now))
            if now >= next_expiry:
                next_expiry = now + EXPIRY_CHECK_INTERVAL
                self._check_expiry()

    def _check_expiry(self) -> None:
        wall = self._wall()
        for client in list(self.clients.values()):
            expired = client.policy.expire(wall)
            if expired:
                log.info("Authorization expired", extra={"fields": {"client": client.id,
                                                                    "resources": ",".join(expired)}})
            if client.policy.is_empty():
                self._remove_client(client, goodbye=True)

    def _update_gauges(self) -> None:
        metrics.ACTIVE_PEERS.set(len(self.clients))


def parse_timers(environ: Mapping[str, str]) -> TimerConfig:
    """Test knobs: FIREZONE_WG_REKEY_AFTER_TIME (seconds) shortens the rekey interval."""
    raw = environ.get("FIREZONE_WG_REKEY_AFTER_TIME")
    if not raw:
        return TimerConfig()
    try:
        rekey = float(raw)
    except ValueError:
        from gateway_pkg.errors import ConfigError

        raise ConfigError(f"FIREZONE_WG_REKEY_AFTER_TIME must be seconds, got {raw!r}") from None
    return TimerConfig(rekey_after_time=rekey, reject_after_time=max(rekey * 1.5, rekey + 3))


__all__ = ["DataPlaneSettings", "TunnelDataPlane", "parse_timers"]
