"""The data plane's I/O: UDP ⇄ WireGuard ⇄ policy/NAT ⇄ TUN, and the effects of client control.

Decisions live in sans-I/O cores: `tunnel.control` (which clients exist and what to tell
whom), `wireguard.device`, `tunnel.policy` and `tunnel.nat` (per packet). This class only
runs the loops and executes what the cores return. It runs on the asyncio loop: the TUN fd
and the UDP sockets are read with `add_reader`, draining up to a batch per wakeup, which
measured 5x faster here than asyncio's datagram protocol (docs/dataplane.md).

NAT traversal (`ice.node.Traversal`, sans-I/O) shares the UDP sockets: a datagram that looks
like WireGuard (type 1-4, three zero bytes) goes straight to the device; anything else (STUN,
TURN ChannelData, datagrams from a relay) goes to the traversal layer, which hands back the
WireGuard it finds inside relayed frames. WireGuard for endpoints reached through a relay is
framed for that relay on the way out.

Time: WireGuard timers and ICE/TURN use the monotonic clock; authorization expiry and NAT sessions use
Unix time, because the portal's `expires_at` is Unix seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from gateway_pkg.config import DataPlaneSettings
from gateway_pkg.dns.base import DnsResolver, IPAddress
from gateway_pkg.dns.tunserver import TunDnsServer
from gateway_pkg.errors import GatewayError, RuntimeFailure
from gateway_pkg.ice.agent import Credentials
from gateway_pkg.ice.node import (
    CandidatesForClient,
    ConnectionFailed,
    PathSelected,
    Traversal,
    normalise,
    version_of,
)
from gateway_pkg.interfaces import PortalSender
from gateway_pkg.portal import messages
from gateway_pkg.tunnel import checksum, metrics, p2p_control
from gateway_pkg.tunnel.accounting import ClientCounters, ResourceCounters
from gateway_pkg.tunnel.control import (
    AddPeer,
    Client,
    ClientControl,
    ConnectIce,
    CountDrop,
    DisconnectIce,
    Effect,
    RemoteCandidates,
    RemovePeer,
    ReplyToPortal,
    Resolve,
    SendToPeer,
    SetTunAddresses,
    UpdateRelays,
)
from gateway_pkg.tunnel.flows import END_ACCESS_REMOVED, END_CLIENT_REMOVED, Flow, FlowTable
from gateway_pkg.tunnel.metrics import TRAFFIC as traffic
from gateway_pkg.tunnel.offload import GSO_ECN, GSO_UDP_L4, VNET_HDR_LEN, OffloadError, coalesce, split_read
from gateway_pkg.tunnel.packet import destination
from gateway_pkg.tunnel.policy import Action
from gateway_pkg.tunnel.tun import TunDevice, TunRecovery, read_failure
from gateway_pkg.tunnel.udp import (
    GRO_CMSG_SPACE,
    SOL_UDP,
    UDP_SEGMENT,
    bind_pair,
    enable_gro,
    gro_segment_size,
    gso_runs,
    gso_supported,
    uplink_addresses,
)
from gateway_pkg.tunnel.writer import BatchWriter
from gateway_pkg.wireguard.device import WireGuardDevice
from gateway_pkg.wireguard.events import (
    HANDSHAKE_TIMEOUT,
    HANDSHAKE_UNCONFIRMED,
    DeviceOutput,
    Dropped,
    HandshakeCompleted,
    HandshakeFailed,
)

log = logging.getLogger("gateway_pkg.tunnel")
# The flow logs: their own logger, so that they are written whatever the log level.
flow_log = logging.getLogger("gateway_pkg.flows")

BATCH = 256
MAX_DATAGRAM = 65535
EXPIRY_CHECK_INTERVAL = 1.0


def _segments(write: bytes) -> int:
    """How many packets a GRO write carries: its L4 payload over the segment size (virtio
    header: hdr_len at 2, gso_size at 4, little-endian)."""
    hdr_len = write[2] | write[3] << 8
    gso_size = write[4] | write[5] << 8
    return -(-(len(write) - VNET_HDR_LEN - hdr_len) // gso_size) if gso_size else 1


class TunnelDataPlane:
    def __init__(self, private_key: bytes, resolver: DnsResolver,
                 settings: DataPlaneSettings | None = None, *,
                 wall_clock: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic, tun_dns: TunDnsServer | None = None) -> None:
        self.settings = settings or DataPlaneSettings()
        self.tun_dns = tun_dns
        # Where a failure that must end the process goes (the wiring root sets it).
        self.on_fatal: Callable[[GatewayError], None] = lambda exc: log.error("%s", exc)
        self.wg = WireGuardDevice(private_key, timers=self.settings.timers)
        self.resolver = resolver
        self.control = ClientControl()
        self.traversal = Traversal()
        metrics.watch_traversal(self.traversal)
        metrics.watch_clients(self, self.settings.metrics_per_client)
        self.flows: FlowTable | None = None
        if self.settings.flow_logs:
            self.flows = FlowTable()
            flow_log.setLevel(logging.INFO)
        self.tun = TunDevice(offloads=self.settings.offloads)
        self.tun_recovery = TunRecovery(self.tun.name)
        self._tun_lock = asyncio.Lock()  # one netlink change of the device at a time
        self._sockets: dict[int, socket.socket] = {}
        self._wall = wall_clock
        self._clock = clock
        self._addresses_set = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._portal: PortalSender | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._recv_buffer = bytearray(MAX_DATAGRAM)
        self._tun_writer: BatchWriter[bytes] | None = None
        self._udp_writer: BatchWriter[tuple[bytes, tuple[str, int]]] | None = None
        self._gro: set[int] = set()  # families whose socket hands over GRO runs
        self._gso_refused: set[tuple[str, int]] = set()  # endpoints whose route refused a GSO send
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
        vnet = self.tun.vnet_hdr
        self._tun_writer = BatchWriter("tun-writer", self._write_tun, self._coalesce if vnet else None,
                                       threaded=not vnet)
        offloads = self.settings.offloads != "off"
        self._gro = {sock.family for sock in self._sockets.values() if offloads and enable_gro(sock)}
        gso = offloads and all(gso_supported(sock) for sock in self._sockets.values())
        if gso:
            self._udp_writer = BatchWriter("udp-writer", self._send_run, gso_runs, threaded=False)
        else:
            self._udp_writer = BatchWriter("udp-writer", self._send_one)
        log.info("Packet path: %s", checksum.selected, extra={"fields": {
            "native": self.settings.native, "offloads": self.settings.offloads, "tun": self.tun.describe_offloads(),
            "udp_gso": "on" if gso else "off", "udp_gro": "on" if self._gro else "off"}})
        ports = {6 if sock.family == socket.AF_INET6 else 4: sock.getsockname()[1] for sock in self._sockets.values()}
        hosts = await asyncio.to_thread(uplink_addresses)
        self.traversal.set_host_addresses((ip, ports[version_of(ip)]) for ip in hosts if version_of(ip) in ports)
        log.info("ICE host candidates: %s", ", ".join(hosts) or "none (no uplink address found)")
        self._loop.add_reader(self.tun.fd, self._on_tun_readable)
        for sock in self._sockets.values():
            self._loop.add_reader(sock.fileno(), self._on_udp_readable, sock)
        self._spawn(self._timer_loop())

    async def stop(self) -> None:
        self._execute(self.control.goodbye_all())
        if self.flows is not None:
            for flow in self.flows.end_all():
                self._flow_ended(flow)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self.tun.fd)
            for sock in self._sockets.values():
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(sock.fileno())
        if self.tun_dns is not None:
            await self.tun_dns.close()
        for writer in (self._tun_writer, self._udp_writer):
            if writer is not None:
                await asyncio.to_thread(writer.close)
        for sock in self._sockets.values():
            sock.close()
        self._sockets = {}
        await asyncio.to_thread(self.tun.close)

    def ready(self) -> tuple[bool, str]:
        lost = self.tun_recovery.readiness()
        if lost is not None:
            return False, lost
        if not self._addresses_set:
            return False, "TUN device has no addresses yet (waiting for init)"
        if not self.tun.is_up():
            return False, "TUN device is down"
        return self.traversal.ready()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Data-plane task failed: %s", task.exception())

    # --- portal messages and the effects of client control --------------------------------

    def handle(self, message: messages.IngressMessage, portal: PortalSender) -> None:
        self._portal = portal
        self._execute(self.control.handle(message, self._wall()))

    def _execute(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, SendToPeer):
                self._send_output(self.wg.send_packet(effect.public_key, effect.packet, self._clock()))
            elif isinstance(effect, AddPeer):
                self.wg.add_peer(effect.public_key, effect.preshared_key)
            elif isinstance(effect, RemovePeer):
                self.wg.remove_peer(effect.public_key)
            elif isinstance(effect, ReplyToPortal):
                if self._portal is not None:
                    self._portal.send(effect.event, effect.payload)
            elif isinstance(effect, Resolve):
                self._spawn(self._resolve(effect))
            elif isinstance(effect, SetTunAddresses):
                self._spawn(self._apply_addresses(effect))
            elif isinstance(effect, CountDrop):
                metrics.DROPPED.labels(effect.reason).inc()
            elif isinstance(effect, ConnectIce):
                self.traversal.connect(effect.client_id, Credentials(effect.local.username, effect.local.password),
                                       Credentials(effect.remote.username, effect.remote.password), self._clock())
            elif isinstance(effect, DisconnectIce):
                self.traversal.disconnect(effect.client_id)
            elif isinstance(effect, RemoteCandidates):
                self.traversal.remote_candidates(effect.client_id, effect.candidates, self._clock(),
                                                 invalidate=effect.invalidate)
            elif isinstance(effect, UpdateRelays):
                now = self._clock()
                if effect.disconnected_ids:
                    self.traversal.remove_relays(effect.disconnected_ids, now)
                self.traversal.add_relays(((r.id, r.addr, r.username, r.password)
                                           for r in effect.connected if r.type == "turn"), now)
        metrics.ACTIVE_PEERS.set(len(self.control.clients))
        self._drain_traversal()

    def _drain_traversal(self) -> None:
        """Send what NAT traversal produced and act on its events."""
        datagrams, events = self.traversal.drain()
        if datagrams:
            self._to_udp.extend((d.data, d.destination) for d in datagrams)
            self._flush()
        for event in events:
            if isinstance(event, CandidatesForClient):
                if self._portal is not None and event.candidates:
                    self._portal.send(*(messages.broadcast_invalidated_ice_candidates if event.invalidated
                                        else messages.broadcast_ice_candidates)([event.client_id],
                                                                                list(event.candidates)))
            elif isinstance(event, PathSelected):
                client = self.control.clients.get(event.client_id)
                if client is not None and self.wg.has_peer(client.public_key):
                    self.wg.set_peer_endpoint(client.public_key, event.remote)
                log.info("ICE path selected", extra={"fields": {"client": event.client_id, "path": event.kind,
                                                                "remote": f"{event.remote[0]}:{event.remote[1]}"}})
            elif isinstance(event, ConnectionFailed):
                fields = {"client": event.client_id, "reason": event.reason}
                client = self.control.clients.get(event.client_id)
                if client is not None and self.wg.has_session(client.public_key, self._clock()):
                    # A client that reached UDP 52625 directly, without ICE: nothing is wrong.
                    log.info("ICE found no path; the client's WireGuard reaches the gateway directly",
                             extra={"fields": fields})
                else:
                    log.warning("ICE connection failed", extra={"fields": fields})

    async def _resolve(self, effect: Resolve) -> None:
        # The resolvers bound each resolution themselves (upstream's 10 s).
        answer: list[IPAddress] | None
        try:
            answer = await self.resolver.resolve(effect.name)
        except Exception as exc:  # ResolveError, timeout: both mean "no answer" here
            log.debug("DNS resolution of %s failed: %s", effect.name, exc)
            answer = None
        self._execute(self.control.resolved(effect.request, answer, self._wall()))

    async def _apply_addresses(self, effect: SetTunAddresses) -> None:
        try:
            async with self._tun_lock:
                await asyncio.to_thread(self.tun.set_addresses, effect.ipv4, effect.ipv6)
        except RuntimeFailure as exc:
            self._addresses_set = False
            log.error("%s", exc)
            return
        self._addresses_set = True
        if self.tun_dns is not None:
            try:  # (re)bound once the addresses exist; failing on both is fatal, as upstream
                await self.tun_dns.bind([effect.ipv4, effect.ipv6])
            except RuntimeFailure as exc:
                self.on_fatal(exc)

    # --- the TUN device deleted underneath -------------------------------------------------

    def _tun_lost(self, reason: str) -> None:
        """The TUN fd failed: stop reading it at once (a dead TUN polls readable for ever),
        say so once, and recreate the device. /readyz is 503 with the reason meanwhile."""
        if not self.tun_recovery.lose(reason, self._clock()):
            return
        if self._loop is not None:
            self._loop.remove_reader(self.tun.fd)
        log.error("%s", self.tun_recovery.lost_message())
        self._spawn(self._recover_tun())

    async def _recover_tun(self) -> None:
        recovery = self.tun_recovery
        delay = recovery.delays[0]
        while True:
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                async with self._tun_lock:
                    await asyncio.to_thread(self.tun.reopen)
            except RuntimeFailure as exc:
                first = recovery.attempts == 0
                next_delay = recovery.failed(str(exc), self._clock())
                if next_delay is None:  # the wiring root logs it and exits with status 1
                    self.on_fatal(RuntimeFailure(recovery.give_up_message()))
                    return
                if first:  # later attempts are quiet: /readyz carries the latest error
                    log.warning("Cannot recreate TUN device %s yet: %s; retrying", self.tun.name, exc)
                delay = next_delay
                continue
            break
        self._addresses_set = self.tun.assigned is not None
        assert self._loop is not None
        self._loop.add_reader(self.tun.fd, self._on_tun_readable)
        took = recovery.recovered(self._clock())
        log.info("TUN device %s recreated %.2f s after it was removed: addresses, routes and rule restored, "
                 "client sessions kept", self.tun.name, took)

    # --- packet paths ----------------------------------------------------------------------

    def _on_udp_readable(self, sock: socket.socket) -> None:
        now = self._clock()
        wall = self._wall()
        buffer = self._recv_buffer
        buffers = [buffer]
        view = memoryview(buffer)
        gro = sock.family in self._gro
        traversed = False
        budget = BATCH  # datagrams per wake-up, so the TUN side gets its turn
        while budget > 0:
            try:
                if gro:
                    size, ancdata, _flags, source = sock.recvmsg_into(buffers, GRO_CMSG_SPACE)
                    segment = gro_segment_size(ancdata, size) if ancdata else size
                else:
                    size, source = sock.recvfrom_into(buffer)
                    segment = size
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP port unreachable surfacing as ECONNREFUSED
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                log.warning("UDP receive failed: %s", exc)
                break
            if segment >= size:
                budget -= 1
                traversed |= self._on_datagram(view[:size], source, now, wall)
                continue
            traffic.offload_calls["udp_gro"] += 1
            traffic.offload_packets["udp_gro"] += -(-size // segment)
            for start in range(0, size, segment):  # a GRO run: views, no copies
                budget -= 1
                traversed |= self._on_datagram(view[start:min(start + segment, size)], source, now, wall)
        if traversed:
            self._drain_traversal()
        self._flush()

    def _on_datagram(self, data: memoryview, source: Any, now: float, wall: float) -> bool:
        """One datagram (a view of the receive buffer, valid until the next receive); True when
        it went to NAT traversal."""
        traversed = False
        if len(data) < 4 or not 1 <= data[0] <= 4 or data[1:4] != b"\x00\x00\x00":
            inner = self.traversal.receive(bytes(data), normalise(source), now)
            traversed = True
            if inner is None:
                return True
            data, source = memoryview(inner[0]), inner[1]
        if self.traversal.relayed_remotes and normalise(source) in self.traversal.relayed_remotes:
            self.traversal.relay_bytes_in += len(data)
        out = self.wg.receive_datagram(data, source, now)  # type: ignore[arg-type]  # it takes views
        if out.datagrams:
            self._queue_udp(out.datagrams, now)
        if out.events:
            self._count_events(out)
        for peer, packet in out.packets:
            self._from_client(peer, packet, now, wall)
        return traversed

    def _queue_udp(self, datagrams: list[tuple[bytes, Any]], now: float) -> None:
        relayed = self.traversal.relayed_remotes
        if relayed:
            self.traversal.relay_bytes_out += sum(len(d) for d, e in datagrams if normalise(e) in relayed)
        if self.traversal.routes:
            self._to_udp.extend(self.traversal.outbound(datagrams, now))  # type: ignore[arg-type]
        else:
            self._to_udp.extend(datagrams)

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

    def _coalesce(self, packets: list[bytes]) -> list[bytes]:
        """Runs on the tun-writer thread: a batch for a TUN with the virtio header, merged into
        GRO super-packets where the kernel takes them."""
        writes = coalesce(packets, tcp=self.tun.tso, udp=self.tun.uso)
        if len(writes) < len(packets):
            for write in writes:  # byte 1 of the virtio header: the GSO type of a super-packet
                if write[1]:
                    kind = "tun_gro_udp" if write[1] == GSO_UDP_L4 else "tun_gro_tcp"
                    traffic.offload_calls[kind] += 1
                    traffic.offload_packets[kind] += _segments(write)
        return writes

    def _write_tun(self, data: bytes) -> None:
        """Runs on the tun-writer thread."""
        try:
            os.write(self.tun.fd, data)
        except BlockingIOError:
            metrics.DROPPED.labels("tun_full").inc()
        except OSError as exc:
            metrics.DROPPED.labels("tun_error").inc()
            if exc.errno not in (errno.EBADFD, errno.EBADF):  # the device is gone: the reader says so once
                log.debug("TUN write failed: %s", exc)

    def _from_client(self, peer: bytes, packet: bytes, now: float, wall: float) -> None:
        client = self.control.by_key.get(peer)
        if client is None:
            metrics.DROPPED.labels("unknown_client").inc()
            return
        if p2p_control.is_p2p_control(packet):
            self._execute(self.control.p2p_control(client, packet, wall))
            return
        verdict = client.policy.check_outbound(packet, wall)
        if verdict.action == Action.FORWARD:
            data = packet if verdict.packet is None else bytes(verdict.packet)
            self._to_tun.append(data)
            size = len(data)
            traffic.packets_in += 1
            traffic.bytes_in += size
            counters = client.traffic
            counters.packets_in += 1
            counters.bytes_in += size
            resource = verdict.resource
            if resource is not None:
                resource.packets_in += 1
                resource.bytes_in += size
                if self.flows is not None:  # the flow as the client sees it: before the NAT
                    started = self.flows.count(client.id, resource.id, packet, now, wall, True)
                    if started is not None:
                        self._flow_started(started)
            return
        metrics.DROPPED.labels(verdict.reason or "policy").inc()
        if verdict.action == Action.REPLY and verdict.reply is not None:
            self._send_output(self.wg.send_packet(peer, verdict.reply, now))

    def _on_tun_readable(self) -> None:
        now = self._clock()
        wall = self._wall()
        fd = self.tun.fd
        by_address = self.control.by_address
        vnet = self.tun.vnet_hdr
        read_size = MAX_DATAGRAM + VNET_HDR_LEN if vnet else MAX_DATAGRAM
        packets: list[bytes] | tuple[bytes]
        for _ in range(BATCH):
            try:
                read = os.read(fd, read_size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                lost = read_failure(exc)
                if lost is not None:
                    self._tun_lost(lost)
                break
            if not read:
                self._tun_lost("read returned end of file")
                break
            if vnet:
                try:  # a TSO/USO super-packet becomes MTU-sized packets with complete checksums
                    packets = split_read(read)
                except OffloadError:
                    metrics.DROPPED.labels("malformed").inc()
                    continue
                if len(packets) > 1:
                    kind = "tun_uso" if read[1] & ~GSO_ECN == GSO_UDP_L4 else "tun_tso"
                    traffic.offload_calls[kind] += 1
                    traffic.offload_packets[kind] += len(packets)
            else:
                packets = (read,)
            # The segments of one TSO read are one flow: counted in its flow once, after them.
            flows = self.flows
            segments = flows is not None and len(packets) > 1
            pending: tuple[Client, ResourceCounters, bytes] | None = None
            pending_packets = pending_bytes = 0
            for packet in packets:
                dst = destination(packet)
                if dst is None:
                    metrics.DROPPED.labels("malformed").inc()
                    continue
                client = by_address.get(dst)
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
                    size = len(data)
                    traffic.packets_out += 1
                    traffic.bytes_out += size
                    counters = client.traffic
                    counters.packets_out += 1
                    counters.bytes_out += size
                    resource = verdict.resource
                    if resource is not None:
                        resource.packets_out += 1
                        resource.bytes_out += size
                        if segments:
                            if pending is not None and (pending[0] is not client or pending[1] is not resource):
                                self._count_flow(pending, pending_packets, pending_bytes, now, wall)
                                pending_packets = pending_bytes = 0
                            pending = (client, resource, data)
                            pending_packets += 1
                            pending_bytes += size
                        elif flows is not None:  # after the NAT: as the client gets it
                            started = flows.count(client.id, resource.id, data, now, wall, False)
                            if started is not None:
                                self._flow_started(started)
                    self._queue_udp(out.datagrams, now)
                if out.events:
                    self._count_events(out)
            if pending is not None:
                self._count_flow(pending, pending_packets, pending_bytes, now, wall)
        if self.traversal.routes:
            self._drain_traversal()  # Send indications for relayed peers without a channel yet
        self._flush()

    def _count_flow(self, pending: tuple[Client, ResourceCounters, bytes], packets: int, size: int, now: float,
                    wall: float) -> None:
        """Count segments of one TSO read, to the client, in their flow (after the NAT)."""
        assert self.flows is not None
        client, resource, last = pending
        started = self.flows.count(client.id, resource.id, last, now, wall, False, packets, size)
        if started is not None:
            self._flow_started(started)

    def _send_output(self, out: DeviceOutput) -> None:
        """Outside the packet loops (timers, portal messages): send at once."""
        if out.datagrams:
            self._queue_udp(out.datagrams, self._clock())
            self._drain_traversal()
            self._flush()
        if out.events:
            self._count_events(out)

    def _send_run(self, run: tuple[tuple[str, int], int, list[bytes]]) -> None:
        """Runs on the udp-writer thread: one GSO send for a run of datagrams to one endpoint."""
        endpoint, segment, datagrams = run
        if len(datagrams) == 1 or endpoint in self._gso_refused:
            for data in datagrams:
                self._send_one((data, endpoint))
            return
        sock = self._sockets.get(socket.AF_INET6 if ":" in endpoint[0] else socket.AF_INET)
        if sock is None:
            metrics.DROPPED.labels("no_socket").inc(len(datagrams))
            return
        try:
            sock.sendmsg([b"".join(datagrams)], [(SOL_UDP, UDP_SEGMENT, segment.to_bytes(2, sys.byteorder))],
                          0, endpoint)
            traffic.offload_calls["udp_gso"] += 1
            traffic.offload_packets["udp_gso"] += len(datagrams)
        except BlockingIOError:
            metrics.DROPPED.labels("udp_full").inc(len(datagrams))
        except OSError as exc:
            # EINVAL: a segment wider than the route's MTU (the kernel would have to fragment);
            # EIO: the egress device cannot checksum for us. Send that endpoint's datagrams one by one.
            if exc.errno in (errno.EINVAL, errno.EIO, errno.EMSGSIZE):
                self._gso_refused.add(endpoint)
                log.info("UDP segmentation refused towards %s:%d (%s); sending datagrams one by one",
                         endpoint[0], endpoint[1], exc.strerror or exc)
                for data in datagrams:
                    self._send_one((data, endpoint))
            else:
                metrics.DROPPED.labels("udp_error").inc(len(datagrams))
                log.debug("UDP send of %d datagrams to %s failed: %s", len(datagrams), endpoint, exc)

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
            # EMSGSIZE: too big even to fragment (the sockets allow fragmentation, see udp.py).
            metrics.DROPPED.labels("udp_too_big" if exc.errno == errno.EMSGSIZE else "udp_error").inc()
            log.debug("UDP send of %d bytes to %s failed: %s", len(data), endpoint, exc)

    def _count_events(self, out: DeviceOutput) -> None:
        for event in out.events:
            if isinstance(event, Dropped):
                metrics.DROPPED.labels(event.reason).inc(event.count)
            elif isinstance(event, HandshakeCompleted):
                metrics.HANDSHAKES.inc()
                client = self.control.by_key.get(event.peer)
                if client is not None:
                    client.traffic.handshakes += 1
                log.info("WireGuard handshake completed", extra={"fields": {
                    "client": client.id if client else "?", "initiator": event.initiator}})
            elif isinstance(event, HandshakeFailed):
                metrics.HANDSHAKE_FAILURES.labels(event.reason).inc()
                client = self.control.by_key.get(event.peer)
                if client is not None:
                    failures = client.traffic.handshake_failures
                    failures[event.reason] = failures.get(event.reason, 0) + 1
                # A replayed or too frequent initiation is routine; these two are worth a line.
                if event.reason in (HANDSHAKE_TIMEOUT, HANDSHAKE_UNCONFIRMED):
                    log.info("WireGuard handshake failed", extra={"fields": {
                        "client": client.id if client else "?", "reason": event.reason}})

    # --- timers ----------------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        next_expiry = self._clock() + EXPIRY_CHECK_INTERVAL
        while True:
            now = self._clock()
            deadlines = [d for d in (self.wg.next_deadline(), self.traversal.poll_timeout()) if d is not None]
            wake = min([next_expiry, *deadlines])
            await asyncio.sleep(max(0.01, min(wake - now, EXPIRY_CHECK_INTERVAL)))
            now = self._clock()
            self.traversal.tick(now)
            self._drain_traversal()
            self._send_output(self.wg.tick(now))
            if now >= next_expiry:
                next_expiry = now + EXPIRY_CHECK_INTERVAL
                self._execute(self.control.expire(self._wall()))
                if self.flows is not None:
                    for flow in self.flows.sweep(now, self._flow_allowed):
                        self._flow_ended(flow)

    # --- flow logs and metrics ---------------------------------------------------------------

    def _flow_allowed(self, client_id: str, resource_id: str) -> str | None:
        client = self.control.clients.get(client_id)
        if client is None:
            return END_CLIENT_REMOVED
        return None if client.policy.has_resource(resource_id) else END_ACCESS_REMOVED

    def _flow_started(self, flow: Flow) -> None:
        fields = flow.fields()
        fields["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(flow.started))
        flow_log.info("Flow started", extra={"fields": fields})

    def _flow_ended(self, flow: Flow) -> None:
        flow_log.info("Flow ended", extra={"fields": flow.end_fields()})

    def client_counters(self) -> list[tuple[str, ClientCounters, list[str]]]:
        return [(c.id, c.traffic, c.policy.resource_ids()) for c in self.control.clients.values()]

    def resource_counters(self) -> list[ResourceCounters]:
        return list(self.control.accounting.resources.values())

    def connected_clients(self) -> int:
        return self.wg.connected_peers(self._clock())

    def active_flows(self) -> int | None:
        return None if self.flows is None else len(self.flows)


__all__ = ["TunnelDataPlane"]
