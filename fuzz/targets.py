"""Fuzz targets: one function per parser that sees untrusted bytes; bytes in, nothing out.

Each target lets through exactly the exceptions its parser documents as the way it rejects
input (`Target.rejects`, caught by `Target.__call__`, or per record inside the stateful
targets); any other exception escaping a target is a crash, and so is a failed `_check`
(an invariant the module documents, e.g. "nothing unauthenticated is ever decrypted" or
"the NAT keeps a valid checksum valid").

Stateful targets (a WireGuard device, the policy and NAT, TURN, ICE) read their input as a
sequence of records (`fuzz/framing.py`) and start from fresh, deterministically seeded state
for every input, so a saved input reproduces on its own (wg_device reuses its device across
inputs that only deliver datagrams; see there). To get past checks the fuzzer
cannot solve by mutation (MACs, HMACs, transaction ids chosen at random), some record tags
ask the harness to patch those fields in; the parsers still see every other byte as given.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from fuzz.framing import Rng, records

T = TypeVar("T")


class InvariantViolated(AssertionError):
    """A documented property did not hold (raised by `_check`, never caught)."""


def _check(condition: object, message: str) -> None:
    if not condition:
        raise InvariantViolated(message)


def _lines(data: bytes, limit: int = 32) -> list[bytes]:
    return data.split(b"\n")[:limit]


def _run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never really waits (its I/O is faked) without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise InvariantViolated("the coroutine suspended although nothing it awaits can block")


# --- portal: Phoenix frames and messages ---------------------------------------------------------

JOIN_REPLY = '{"topic":"gateway","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":0}'


def _joined_channel() -> Any:
    from gateway_pkg.portal import phoenix

    channel = phoenix.PhoenixChannel("gateway")
    channel.connection_opened(0.0)
    channel.receive(JOIN_REPLY, 0.0)
    return channel


def phoenix_frame(data: bytes) -> None:
    """`decode_frame` raises MalformedFrame only; `PhoenixChannel.receive` never raises, for every
    line of the input as bytes (binary frame) and as text (text frame)."""
    from gateway_pkg.portal import phoenix

    event_types = (phoenix.Joined, phoenix.Push, phoenix.Reply, phoenix.Reconnect, phoenix.Fatal, phoenix.Skipped)
    try:
        frame = phoenix.decode_frame(data)
    except phoenix.MalformedFrame:
        pass
    else:
        _check(isinstance(frame.topic, str) and isinstance(frame.event, str), "topic and event are strings")
        _check(frame.ref is None or (type(frame.ref) is int and frame.ref >= 0), "ref is a non-negative int")
    channel = _joined_channel()
    now = 0.0
    for line in _lines(data):
        for text in (line, line.decode("utf-8", "replace")):
            frames, events = channel.receive(text, now)
            _check(all(isinstance(f, str) for f in frames), "frames to send are text")
            _check(all(isinstance(e, event_types) for e in events), "only documented events")
        now += 7.5
        channel.tick(now)


def _answer_effects(control: Any, effects: list[Any], now: float, choice: int) -> None:
    """Execute the effects the data plane would: resolutions get an answer (or fail)."""
    from gateway_pkg.tunnel import control as ctl
    from gateway_pkg.tunnel import p2p_control as p2p

    answers: list[list[Any] | None] = [
        [ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1")],
        [ipaddress.ip_address("192.0.2.2")],
        [],
        None,
    ]
    queue = list(effects)
    while queue:
        effect = queue.pop(0)
        if isinstance(effect, ctl.Resolve):
            queue.extend(control.resolved(effect.request, answers[choice % len(answers)], now))
            choice += 1
        elif isinstance(effect, ctl.SendToPeer):
            _check(p2p.is_p2p_control(effect.packet), "the gateway only sends p2p-control packets itself")
            p2p.decode(effect.packet)  # what we send must decode


def portal_message(data: bytes) -> None:
    """Each line is a frame from the portal: through the joined channel, `parse_ingress` (rejects:
    MalformedMessage, UnknownEvent) and the client control core, which must take any message
    `parse_ingress` accepts."""
    from gateway_pkg.portal import messages, phoenix
    from gateway_pkg.tunnel.control import ClientControl

    channel = _joined_channel()
    control = ClientControl(random_bytes=Rng(b"control"))
    now = 1_700_000_000.0
    for index, line in enumerate(_lines(data)):
        _, events = channel.receive(line, now)
        for event in events:
            if not isinstance(event, phoenix.Push):
                continue
            try:
                message = messages.parse_ingress(event.event, event.payload)
            except (messages.MalformedMessage, messages.UnknownEvent):
                continue
            _check(isinstance(message, tuple(_ingress_types())), "parse_ingress returns a message type")
            _answer_effects(control, control.handle(message, now), now, index)
        now += 1.0
    _answer_effects(control, control.expire(now + 10.0**10), now, 0)
    control.goodbye_all()


def _ingress_types() -> list[type]:
    from gateway_pkg.portal import messages

    return [messages.Init, messages.RelaysPresence, messages.AuthorizeFlow, messages.RequestConnection,
            messages.AllowAccess, messages.RejectAccess, messages.ResourceUpdated,
            messages.AccessAuthorizationExpiryUpdated, messages.IceCandidates, messages.InvalidateIceCandidates]


# --- WireGuard -----------------------------------------------------------------------------------


def wg_messages(data: bytes) -> None:
    """The four decoders and `message_type` raise MalformedMessage only, agree with each other,
    and re-encode what they decoded to the same bytes."""
    from gateway_pkg.wireguard import messages as wg

    try:
        kind: int | None = wg.message_type(data)
    except wg.MalformedMessage:
        kind = None
    decoders: list[tuple[int, Any]] = [
        (wg.MESSAGE_HANDSHAKE_INITIATION, wg.HandshakeInitiation),
        (wg.MESSAGE_HANDSHAKE_RESPONSE, wg.HandshakeResponse),
        (wg.MESSAGE_COOKIE_REPLY, wg.CookieReply),
    ]
    for message_kind, cls in decoders:
        try:
            message = cls.decode(data)
        except wg.MalformedMessage:
            _check(kind != message_kind, f"message_type says {message_kind} but {cls.__name__} refused it")
            continue
        _check(kind == message_kind, f"{cls.__name__} decoded a message of type {kind}")
        _check(message.encode() == data, f"{cls.__name__} does not round-trip")
    try:
        header = wg.TransportHeader.decode(data)
    except wg.MalformedMessage:
        _check(kind != wg.MESSAGE_TRANSPORT_DATA, "message_type says transport but the header decoder refused it")
    else:
        _check(kind == wg.MESSAGE_TRANSPORT_DATA, "transport header decoded from another type")
        _check(0 <= header.receiver_index < 2**32 and 0 <= header.counter < 2**64, "header fields in range")


GATEWAY_ADDR = ("192.0.2.1", 52625)
WG_SOURCES = [("198.51.100.7", 40000), ("203.0.113.9", 1), ("2001:db8::7", 51820), ("fe80::1%eth0", 0)]
WALL_CLOCK = 1_700_000_000.0


class _WireGuardWorld:
    """A gateway device with one authorised client whose session is up, built deterministically."""

    def __init__(self, seed: bytes = b"wg") -> None:
        from gateway_pkg.wireguard import WireGuardDevice, generate_private_key
        from gateway_pkg.wireguard.primitives import LABEL_MAC1, hash_

        self.now = 1000.0
        self.loaded = False
        rng_g, rng_c = Rng(seed + b"-gateway"), Rng(seed + b"-client")
        self.gateway = WireGuardDevice(generate_private_key(rng_g), rng=rng_g, under_load=self.under_load,
                                       wall_clock=self.wall_clock)
        self.client = WireGuardDevice(generate_private_key(rng_c), rng=rng_c, under_load=self.not_loaded,
                                      wall_clock=self.wall_clock)
        psk = Rng(seed + b"-psk")(32)
        self.gateway.add_peer(self.client.public_key, psk)
        self.client.add_peer(self.gateway.public_key, psk)
        self.client.set_peer_endpoint(self.gateway.public_key, GATEWAY_ADDR)
        self.mac1_key = hash_(LABEL_MAC1 + self.gateway.public_key)
        self.client_mac1_key = hash_(LABEL_MAC1 + self.client.public_key)
        self.pending_index = 0
        response = self.exchange(self.client.initiate_handshake(self.gateway.public_key, self.now), to_gateway=True)
        self.live_index = struct.unpack_from("<I", response, 4)[0]
        self.dirty = False  # time passed or an initiation went out: not for another input
        self.used = False  # some input ran on it

    def under_load(self) -> bool:
        return self.loaded

    def not_loaded(self) -> bool:
        return False

    def wall_clock(self) -> float:
        return WALL_CLOCK + self.now

    def exchange(self, out: Any, *, to_gateway: bool) -> bytes:
        """Bounce datagrams between the two devices until quiet; the first datagram delivered."""
        first = b""
        for _ in range(8):
            if not out.datagrams:
                break
            result = type(out)()
            for datagram, _destination in out.datagrams:
                first = first or bytes(datagram)
                if to_gateway:
                    result.extend(self.gateway.receive_datagram(bytes(datagram), WG_SOURCES[0], self.now))
                else:
                    result.extend(self.client.receive_datagram(bytes(datagram), GATEWAY_ADDR, self.now))
            out, to_gateway = result, not to_gateway
        return first


_wireguard_world: _WireGuardWorld | None = None


def _check_device_output(out: Any, *, authenticated: bool) -> None:
    from gateway_pkg.wireguard import (
        DROP_REASONS,
        Dropped,
        HandshakeCompleted,
        HandshakeFailed,
        PeerSessionExpired,
    )

    for event in out.events:
        _check(isinstance(event, Dropped | HandshakeCompleted | HandshakeFailed | PeerSessionExpired),
               f"unexpected event {event!r}")
        if isinstance(event, Dropped):
            _check(event.reason in DROP_REASONS, f"undocumented drop reason {event.reason!r}")
    if not authenticated:
        _check(not out.packets, "a datagram the fuzzer forged was decrypted into a packet")


def wg_device(data: bytes) -> None:
    """`WireGuardDevice.receive_datagram` of a gateway with a live session never raises and never
    yields a packet from forged bytes. Tags (low 3 bits): 0 raw datagram; 1 initiation, 2 response,
    3 cookie reply (mac1 fixed, receiver index patched to a live or pending one); 4 transport on the
    live index; 5 a packet really encrypted by the client (the inner-packet path); 6 the gateway
    initiates; 7 time passes (timers on both sides). Bit 3 turns "under load" on (cookie path);
    bits 5-6 choose the source address."""
    from gateway_pkg.tunnel.packet import total_length
    from gateway_pkg.wireguard.primitives import mac

    global _wireguard_world
    items = records(data, limit=16)
    # A world costs a handshake (~1 ms), so it is reused across inputs while they only deliver
    # datagrams (tags 0-5: nothing they change alters how later datagrams are handled). Time and
    # initiations (6, 7) need the world as built: such an input gets a fresh one.
    stateful = any(tag & 7 in (6, 7) for tag, _ in items)
    if _wireguard_world is None or _wireguard_world.dirty or (stateful and _wireguard_world.used):
        _wireguard_world = _WireGuardWorld()
    world = _wireguard_world
    world.used = True
    gateway, client = world.gateway, world.client
    for tag, body in items:
        op, source = tag & 7, WG_SOURCES[(tag >> 5) & 3]
        world.loaded = bool(tag & 8)
        authenticated = False
        if op == 0:
            out = gateway.receive_datagram(body, source, world.now)
        elif op in (1, 2, 3):
            length, mac_offset, index_offset = {1: (148, 116, None), 2: (92, 60, 8), 3: (64, None, 4)}[op]
            message = bytearray((bytes((op, 0, 0, 0)) + body)[:length].ljust(length, b"\0"))
            if index_offset is not None and tag & 16:
                index = world.pending_index if op == 2 else world.live_index
                struct.pack_into("<I", message, index_offset, index)
            if mac_offset is not None:
                message[mac_offset : mac_offset + 16] = mac(world.mac1_key, bytes(message[:mac_offset]))
            out = gateway.receive_datagram(bytes(message), source, world.now)
        elif op == 4:
            transport = struct.pack("<II", 4, world.live_index) + body[:8].ljust(8, b"\0") + body[8:]
            out = gateway.receive_datagram(transport.ljust(32, b"\0"), source, world.now)
        elif op == 5:
            sent = client.send_packet(gateway.public_key, body, world.now)
            out = type(sent)()
            for datagram, _destination in sent.datagrams:
                out.extend(gateway.receive_datagram(bytes(datagram), source, world.now))
            authenticated = True
            # The receiver trims WireGuard's zero padding by the IP header's length, so a packet
            # whose header claims more than was sent comes out with some of that padding.
            padded = body + bytes(-len(body) % 16)
            claimed = total_length(padded)
            for _key, packet in out.packets:
                _check(claimed is not None and packet == padded[:claimed], "the decrypted packet is the one sent")
        elif op == 6:
            world.dirty = True
            if gateway.peer_endpoint(client.public_key) is None:
                continue
            out = gateway.initiate_handshake(client.public_key, world.now)
            if out.datagrams:
                world.pending_index = struct.unpack_from("<I", out.datagrams[0][0], 4)[0]
                if tag & 16:
                    world.exchange(out, to_gateway=False)
        else:
            world.dirty = True
            world.now += int.from_bytes(body[:2].ljust(2, b"\0"), "big") / 16
            out = gateway.tick(world.now)
            world.exchange(client.tick(world.now), to_gateway=True)
            world.exchange(out, to_gateway=False)
            authenticated = True  # staged packets may be flushed to us
        _check_device_output(out, authenticated=authenticated)


# --- p2p control -----------------------------------------------------------------------------------

C4, C6 = "100.64.0.2", "fd00:2021:1111::2"
GW4, GW6 = "100.64.0.1", "fd00:2021:1111::1"
PROXY4 = [ipaddress.ip_address("100.96.0.1"), ipaddress.ip_address("100.96.0.2")]
PROXY6 = [ipaddress.ip_address("fd00:2021:1111:8000::1")]
REAL4, REAL6 = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1")
ALT4 = ipaddress.ip_address("192.0.2.99")  # what the name resolves to after a change
CLIENT_KEY = bytes(range(32))
CLIENT_PSK = bytes(range(32, 64))


_flow: Any = None


def _control_with_client() -> tuple[Any, Any]:
    """A fresh control core with client c1 authorized for a DNS resource (the parsed flow is
    immutable, so it is parsed once)."""
    import base64

    from gateway_pkg.portal import messages
    from gateway_pkg.tunnel.control import ClientControl

    global _flow
    if _flow is None:
        _flow = messages.parse_ingress("authorize_flow", {
            "ref": "r", "expires_at": None,
            "resource": {"type": "dns", "id": "d", "address": "**.corp.example", "name": "d"},
            "client": {"id": "c1", "public_key": base64.b64encode(CLIENT_KEY).decode(),
                       "preshared_key": base64.b64encode(CLIENT_PSK).decode(), "ipv4": C4, "ipv6": C6},
        })
    control = ClientControl(random_bytes=Rng(b"control"))
    control.handle(_flow, 1_700_000_000.0)
    return control, control.clients["c1"]


def p2p_control(data: bytes) -> None:
    """`decode` raises P2pControlError only, agrees with `is_p2p_control` and round-trips
    AssignedIps; the control core takes every packet. Byte 0: bit 0 frames the rest with
    `encode` as the event type in bits 1-2, else the rest is the whole packet."""
    from gateway_pkg.tunnel import p2p_control as p2p

    if not data:
        return
    mode, body = data[0], data[1:]
    packet = body
    if mode & 1:
        try:
            packet = p2p.encode((mode >> 1) & 3, body)
        except ValueError:
            packet = body
    is_control = p2p.is_p2p_control(packet)
    try:
        event = p2p.decode(packet)
    except p2p.P2pControlError:
        event = None
    else:
        _check(is_control, "decoded a packet is_p2p_control refuses")
        if isinstance(event, p2p.AssignedIps):
            try:
                again = p2p.encode_assigned_ips(event.resource, event.domain, event.proxy_ips)
            except ValueError:
                again = None  # re-encoded larger than a control packet may be
            if again is not None:
                _check(p2p.decode(again) == event, "AssignedIps does not round-trip")
    control, client = _control_with_client()
    if is_control:
        _answer_effects(control, control.p2p_control(client, packet, 1_700_000_001.0), 1_700_000_001.0, mode)
    del event


# --- IP packets, policy and NAT ----------------------------------------------------------------


def ip_packet(data: bytes) -> None:
    """`IpPacket` raises PacketError only; the header helpers agree with it where it parses
    (and return None only where it raises); the ICMP errors built about it parse."""
    from gateway_pkg.tunnel import icmp
    from gateway_pkg.tunnel.checksum import internet_checksum
    from gateway_pkg.tunnel.packet import (
        IpPacket,
        PacketError,
        destination,
        fixed_header,
        total_length,
        version,
    )

    v, dst, length, fixed = version(data), destination(data), total_length(data), fixed_header(data)
    internet_checksum(data)
    try:
        p = IpPacket(data)
    except PacketError:
        return
    _check(v == p.version and dst == p.dst and length == p.total_len, "header helpers disagree with IpPacket")
    _check(fixed is not None and fixed[0] == p.version, "fixed_header disagrees with IpPacket")
    _check(p.header_len <= p.total_len <= len(data), "header length within the packet")
    repr(p)
    bytes(p.payload)
    _check(p.src_ip.version == p.dst_ip.version == p.version, "address versions")
    for reply in (icmp.unreachable(p), icmp.prohibited(p)):
        if reply is not None:
            answer = IpPacket(reply)
            _check(answer.is_icmp_error and answer.dst == p.src, "an ICMP error goes back to the sender")


def _checksums_valid(packet: bytes | bytearray) -> bool | None:
    """Whether the IPv4 header checksum and the L4 checksum verify; None when not checkable
    (extension headers, fragments, other protocols, IPv4 UDP without checksum)."""
    from gateway_pkg.tunnel.checksum import internet_checksum, pseudo_header_sum
    from gateway_pkg.tunnel.packet import (
        PROTO_ICMP,
        PROTO_ICMPV6,
        PROTO_TCP,
        PROTO_UDP,
        IpPacket,
        PacketError,
    )

    try:
        p = IpPacket(bytes(packet))
    except PacketError:
        return None
    if p.is_fragment or (p.version == 6 and p.header_len != 40):
        return None
    buf = p.buf
    segment = buf[p.header_len : p.total_len]
    if p.version == 4 and internet_checksum(buf[: p.header_len]) != 0:
        return False
    if p.protocol == PROTO_ICMP and p.version == 4:
        return internet_checksum(segment) == 0
    if p.protocol not in (PROTO_TCP, PROTO_UDP) and not (p.protocol == PROTO_ICMPV6 and p.version == 6):
        return None
    if p.protocol == PROTO_UDP and p.version == 4 and segment[6:8] == b"\0\0":
        return None
    return internet_checksum(segment, pseudo_header_sum(p.src, p.dst, p.protocol, len(segment))) == 0


def _patch(packet: bytes, *, src: Any = None, dst: Any = None) -> bytes:
    from gateway_pkg.tunnel.packet import DST_OFFSET, SRC_OFFSET, version

    v = version(packet)
    if v is None:
        return packet
    buf = bytearray(packet)
    for offsets, choice in ((SRC_OFFSET, src), (DST_OFFSET, dst)):
        if choice is not None:
            address = choice[0] if v == 4 else choice[1]
            buf[offsets[v] : offsets[v] + (4 if v == 4 else 16)] = ipaddress.ip_address(address).packed
    return bytes(buf)


def _fresh_policy(config: int) -> Any:
    from gateway_pkg.resources import CidrResource, DnsResource, Filter, InternetResource
    from gateway_pkg.tunnel.policy import ClientPolicy, TunAddresses

    filters: list[tuple[Filter, ...]] = [(), (Filter("tcp", 80, 443), Filter("icmp")), (Filter("udp", 53, 53),)]
    policy = ClientPolicy(C4, C6, TunAddresses(GW4, GW6))
    policy.add_resource(CidrResource("c", ipaddress.ip_network("10.0.0.0/8"), "c", filters[config % 3]), None)
    policy.add_resource(CidrResource("c6", ipaddress.ip_network("2001:db8:1::/48"), "c6"), 2e9)
    if config & 4:
        policy.add_resource(InternetResource("i", filters[(config >> 3) % 3]), 1e12)
    policy.add_resource(DnsResource("d", "**.corp.example", "d", filters[(config >> 5) % 3]), None)
    policy.setup_nat("d", "a.corp.example", PROXY4 + PROXY6, [REAL4, REAL6], 0.0)
    return policy


_CLIENT_PACKED = frozenset(ipaddress.ip_address(a).packed for a in (C4, C6))
_GATEWAY_PACKED = frozenset(ipaddress.ip_address(a).packed for a in (GW4, GW6))
_REAL_PACKED = frozenset(a.packed for a in (REAL4, REAL6, ALT4))
_CIDRS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:1::/48"))


def _check_authorized(p: Any, *, outbound: bool, internet: bool) -> None:
    """What the policy forwards: from the client's own address to an authorized destination
    (a CIDR resource, a real address behind a proxy IP, the gateway, or anything outside the
    proxy ranges with the internet resource), and towards the client's address only."""
    from gateway_pkg.tunnel.nat import is_proxy_ip

    if not outbound:
        _check(p.dst in _CLIENT_PACKED, "forwarded to the client a packet for another address")
        return
    _check(p.src in _CLIENT_PACKED, "forwarded a packet with a spoofed source")
    destination = ipaddress.ip_address(p.dst)
    allowed = (p.dst in _GATEWAY_PACKED or p.dst in _REAL_PACKED or any(destination in net for net in _CIDRS)
               or (internet and not is_proxy_ip(p.dst)))
    _check(allowed, f"forwarded a packet to {destination}, which no resource authorizes")


def policy_nat(data: bytes) -> None:
    """`ClientPolicy.check_outbound` / `check_inbound` (and the DNS-resource NAT behind them) never
    raise; what they forward parses, is authorized (`_check_authorized`) and keeps valid checksums
    valid, and their ICMP replies go to the client. Byte 0 picks the resources (bit 2: the
    internet resource); then records, tag low 2 bits: 0 a packet from the client (bit 2: source
    set to the client's, bit 3: destination set to a proxy IP), 1 a packet from the TUN (bit 2:
    destination set to the client's, bit 3: source set to the real IP), 2 time passes and
    `expire` runs, 3 the name re-resolves (bits 2-3: both families, IPv4 only, none, changed)."""
    from gateway_pkg.tunnel.packet import IpPacket
    from gateway_pkg.tunnel.policy import Action

    if not data:
        return
    policy = _fresh_policy(data[0])
    now = 100.0
    client = (C4, C6)
    for tag, body in records(data[1:], limit=24):
        op = tag & 3
        if op in (0, 1):
            if op == 0:
                packet = _patch(body, src=client if tag & 4 else None,
                                dst=(str(PROXY4[tag >> 7]), str(PROXY6[0])) if tag & 8 else None)
                verdict = policy.check_outbound(packet, now)
            else:
                packet = _patch(body, dst=client if tag & 4 else None,
                                src=(str(REAL4), str(REAL6)) if tag & 8 else None)
                verdict = policy.check_inbound(packet, now)
            _check(verdict.action in (Action.FORWARD, Action.REPLY, Action.DROP), "a documented action")
            if verdict.action == Action.FORWARD:
                _check_authorized(IpPacket(bytes(verdict.packet if verdict.packet is not None else packet)),
                                  outbound=op == 0, internet=bool(data[0] & 4))
            if verdict.action == Action.FORWARD and verdict.packet is not None:
                forwarded = IpPacket(bytes(verdict.packet))
                if op == 0:
                    _check(forwarded.dst in (REAL4.packed, REAL6.packed, ALT4.packed), "the NAT forwards to a real IP")
                if _checksums_valid(packet):
                    _check(_checksums_valid(verdict.packet) is not False, "the NAT broke a valid checksum")
            elif verdict.action == Action.REPLY:
                _check(op == 0 and verdict.reply is not None, "only the client gets ICMP replies")
                reply = IpPacket(verdict.reply or b"")
                _check(reply.is_icmp_error and reply.dst in (ipaddress.ip_address(C4).packed,
                                                             ipaddress.ip_address(C6).packed),
                       "ICMP replies go to the client")
            else:
                _check(verdict.packet is None, "only a forward carries a packet")
        elif op == 2:
            now += int.from_bytes(body[:3].ljust(3, b"\0"), "big")
            policy.expire(now)
        else:
            resolved = [[REAL4, REAL6], [REAL4], [], [ALT4, REAL6]][(tag >> 2) & 3]
            policy.setup_nat("d", "a.corp.example", PROXY4 + PROXY6, resolved, now)


# --- the TUN offloads (virtio_net_hdr) ---------------------------------------------------------


def _fix_packet(packet: bytes) -> bytes:
    """Set an IPv4/IPv6 TCP or UDP packet's length fields to its length and its checksums to
    correct values, so that the fuzzer reaches coalescing; anything else comes back as it is."""
    from gateway_pkg.tunnel.checksum import internet_checksum, pseudo_header_sum

    buf = bytearray(packet)
    n = len(buf)
    if n >= 20 and buf[0] >> 4 == 4:
        ihl = (buf[0] & 0x0F) * 4
        protocol, src, dst = buf[9], bytes(buf[12:16]), bytes(buf[16:20])
        if ihl < 20 or n < ihl:
            return packet
        struct.pack_into("!H", buf, 2, n)
        buf[10:12] = b"\0\0"
        struct.pack_into("!H", buf, 10, internet_checksum(buf[:ihl]))
    elif n >= 40 and buf[0] >> 4 == 6:
        ihl, protocol, src, dst = 40, buf[6], bytes(buf[8:24]), bytes(buf[24:40])
        struct.pack_into("!H", buf, 4, n - 40)
    else:
        return packet
    at = {6: 16, 17: 6}.get(protocol)
    if at is None or n < ihl + at + 2:
        return bytes(buf)
    if protocol == 17:
        struct.pack_into("!H", buf, ihl + 4, min(n - ihl, 0xFFFF))
    buf[ihl + at : ihl + at + 2] = b"\0\0"
    csum = internet_checksum(buf[ihl:], pseudo_header_sum(src, dst, protocol, n - ihl))
    struct.pack_into("!H", buf, ihl + at, csum or (0xFFFF if protocol == 17 else 0))
    return bytes(buf)


def _fix_read(read: bytes) -> bytes:
    """A TUN read whose IP length field, csum_start and csum_offset agree with its packet."""
    buf = bytearray(read)
    if len(buf) < 30:
        return read
    if buf[10] >> 4 == 4:
        ihl, protocol = (buf[10] & 0x0F) * 4, buf[19]
        struct.pack_into("!H", buf, 12, len(buf) - 10)
    elif len(buf) >= 50 and buf[10] >> 4 == 6:
        ihl, protocol = 40, buf[16]
        struct.pack_into("!H", buf, 14, len(buf) - 50)
    else:
        return read
    struct.pack_into("<HH", buf, 6, ihl, 16 if protocol == 6 else 6)
    return bytes(buf)


def _flow_of(packet: bytes, index: int) -> tuple[object, ...]:
    """The flow `coalesce` sees (addresses, protocol, ports), or the packet's own index where it
    sees none."""
    n = len(packet)
    if n >= 20 and packet[0] >> 4 == 4 and packet[9] in (6, 17):
        ihl = (packet[0] & 0x0F) * 4
        if ihl >= 20 and n >= ihl + 4 and not struct.unpack_from("!H", packet, 6)[0] & 0x1FFF:
            return (4, packet[9], packet[12:20], packet[ihl : ihl + 4])
    elif n >= 44 and packet[0] >> 4 == 6 and packet[6] in (6, 17):
        return (6, packet[6], packet[8:44])
    return ("alone", index)


def _as_resent(packet: bytes) -> bytes:
    """What may differ between a merged packet and the kernel's segmentation of its super-
    packet: with DF set the IPv4 ID (and so the header checksum), and an IPv4 header or TCP
    checksum of 0 written as 0xFFFF (the same ones' complement number)."""
    buf = bytearray(packet)
    n = len(buf)
    if n >= 20 and buf[0] >> 4 == 4:
        ihl, protocol = (buf[0] & 0x0F) * 4, buf[9]
        if buf[6] & 0x40:
            buf[4:6] = buf[10:12] = b"\0\0"
        elif buf[10:12] == b"\xff\xff":
            buf[10:12] = b"\0\0"
    elif n >= 40 and buf[0] >> 4 == 6:
        ihl, protocol = 40, buf[6]
    else:
        return packet
    if protocol == 6 and n >= ihl + 18 and buf[ihl + 16 : ihl + 18] == b"\xff\xff":
        buf[ihl + 16 : ihl + 18] = b"\0\0"
    return bytes(buf)


def tun_offload(data: bytes) -> None:
    """`split_read` raises OffloadError only, and the packets of a GSO read it accepts are IP
    packets whose checksums verify, no longer than the read; `coalesce` never raises, every
    write starts with a virtio_net_hdr, each super-packet is accepted by `split_read`, and what
    the kernel gets back from the writes is the batch: each flow's packets in their order, byte
    for byte but for `_as_resent`. Byte 0: bit 0 TCP coalescing, bit 1 UDP. Then records, tag
    bit 0: 0 an IP packet for the batch, 1 a TUN read (split, its packets join the batch); bit 1:
    the harness first sets the packet's lengths and checksums right (`_fix_packet`), or the
    read's IP length and csum_start/csum_offset (`_fix_read`)."""
    from gateway_pkg.tunnel.offload import (
        GSO_TCPV4,
        GSO_TCPV6,
        GSO_UDP_L4,
        NEEDS_CSUM,
        NO_OFFLOAD,
        VNET_HDR_LEN,
        OffloadError,
        coalesce,
        split_read,
    )
    from gateway_pkg.tunnel.packet import IpPacket

    if not data:
        return
    tcp, udp = bool(data[0] & 1), bool(data[0] & 2)
    batch: list[bytes] = []
    for tag, body in records(data[1:]):
        if not tag & 1:
            batch.append(_fix_packet(body) if tag & 2 else body)
            continue
        read = _fix_read(body) if tag & 2 else body
        try:
            packets = split_read(read)
        except OffloadError:
            continue
        _check(all(type(p) is bytes for p in packets) and packets, "split_read returns packets")
        if read[1]:  # GSO: complete packets
            for packet in packets:
                _check(len(packet) <= len(read) - VNET_HDR_LEN, "a segment longer than the read")
                IpPacket(packet)
                _check(_checksums_valid(packet) is True, "a segment whose checksums do not verify")
        batch.extend(packets)
    writes = coalesce(batch, tcp=tcp, udp=udp)
    resent: list[bytes] = []
    for write in writes:
        _check(len(write) >= VNET_HDR_LEN, "a write without its virtio_net_hdr")
        if write[:VNET_HDR_LEN] == NO_OFFLOAD:
            resent.append(write[VNET_HDR_LEN:])
            continue
        _check(write[0] == NEEDS_CSUM and ((tcp and write[1] in (GSO_TCPV4, GSO_TCPV6)) or
                                           (udp and write[1] == GSO_UDP_L4)),
               "a super-packet's header: NEEDS_CSUM and a GSO type that was asked for")
        try:
            segments = split_read(write)
        except OffloadError as exc:
            raise InvariantViolated(f"split_read refuses a coalesce write: {exc}") from exc
        _check(len(segments) >= 2, "a super-packet of one segment")
        resent.extend(segments)
    _check(len(resent) == len(batch), "coalesce lost or added packets")
    flows_in: dict[tuple[object, ...], list[bytes]] = {}
    flows_out: dict[tuple[object, ...], list[bytes]] = {}
    for i, packet in enumerate(batch):
        flows_in.setdefault(_flow_of(packet, i), []).append(_as_resent(packet))
    for packet in resent:
        flows_out.setdefault(_flow_of(packet, -1), []).append(_as_resent(packet))
    lone_in = sorted(p for key, ps in flows_in.items() if key[0] == "alone" for p in ps)
    lone_out = sorted(flows_out.pop(("alone", -1), []))
    _check(lone_in == lone_out, "packets outside any flow changed")
    _check(flows_out == {k: v for k, v in flows_in.items() if k[0] != "alone"},
           "a flow's packets changed or changed order")


# --- DNS answers ------------------------------------------------------------------------------


def dns_answer(data: bytes) -> None:
    """The user-space resolver's upstream path (`Upstream.lookup`: `interpret`, CNAME chasing,
    search list) over the responses in the records, each parsed by dnspython as the real
    transport does (`from_wire`, then `is_response`; the message id is patched to the query's).
    It returns Positive or Negative or raises UpstreamError, and the cache takes the result.
    Byte 0: bit 0 asks AAAA instead of A, bit 1 an absolute name (no search list)."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rdatatype

    from gateway_pkg.dns.answer import Negative, Positive
    from gateway_pkg.dns.cache import RecordCache, plan
    from gateway_pkg.dns.metrics import PathStats
    from gateway_pkg.dns.sysconf import ResolvConf
    from gateway_pkg.dns.upstream import Upstream, UpstreamError

    if not data:
        return
    config = data[0]
    responses = iter(body for _tag, body in records(data[1:], limit=12))

    async def send(query: Any, nameserver: Any, seconds: float) -> Any:  # the SendQuery shape
        wire = next(responses, None)
        if wire is None:
            raise dns.exception.Timeout
        response = dns.message.from_wire(wire)
        response.id = query.id
        if not query.is_response(response):
            raise dns.query.BadResponse
        return response

    conf = ResolvConf(nameservers=(("192.0.2.53", 53), ("192.0.2.54", 53)), search=("corp.example",), ndots=1,
                      timeout=1.0, attempts=2)
    rdtype = dns.rdatatype.AAAA if config & 1 else dns.rdatatype.A
    name = "app.corp.example." if config & 2 else "app"
    try:
        result = _run_sync(Upstream(conf, PathStats(), send).lookup(name, rdtype))
    except UpstreamError:
        return
    _check(isinstance(result, Positive | Negative), "lookup returns Positive or Negative")
    cache = RecordCache(16, 0.0, 86400.0, 3600.0)
    key = (name, int(rdtype))
    if isinstance(result, Positive):
        family = 6 if rdtype == dns.rdatatype.AAAA else 4
        _check(all(address.version == family for address in result.addresses), "addresses of the asked family")
        _check(result.ttl >= 0, "a TTL is not negative")
        entry = cache.store_positive(key, result.addresses, result.ttl, 0.0)
    else:
        _check(result.ttl is None or result.ttl >= 0, "a TTL is not negative")
        entry = cache.store_negative(key, result.kind, result.ttl, 0.0)
    for when in (0.0, entry.expires, entry.stale_until):
        plan(entry, when, upstream_down=False)


# --- STUN, TURN, ICE ----------------------------------------------------------------------------

STUN_KEY = b"fuzz-integrity-key"


def stun_message(data: bytes) -> None:
    """`decode` and `decode_channel_data` raise StunError only; the verifiers and every accessor
    never raise; a decoded message re-encodes to one that decodes to the same attributes and
    verifies under the key it was signed with."""
    from gateway_pkg.ice import stun

    stun.is_stun(data)
    if stun.is_channel_data(data):
        try:
            channel, payload = stun.decode_channel_data(data)
        except stun.StunError:
            pass
        else:
            _check(stun.encode_channel_data(channel, payload) == data[: 4 + len(payload)], "ChannelData round trip")
    stun.verify_integrity(data, STUN_KEY)
    stun.verify_fingerprint(data)
    try:
        message = stun.decode(data)
    except stun.StunError:
        return
    _check(stun.is_stun(data), "decoded a datagram is_stun refuses")
    for text in (message.username, message.realm, message.software, message.nonce, message.data, message.error,
                 message.unknown_attributes, message.priority, message.use_candidate, message.ice_controlling,
                 message.ice_controlled, message.lifetime, message.channel_number,
                 message.unknown_comprehension_required, message.address):
        text()
    for attr in (stun.Attr.XOR_MAPPED_ADDRESS, stun.Attr.XOR_PEER_ADDRESS, stun.Attr.XOR_RELAYED_ADDRESS):
        address = message.xor_address(attr)
        if address is not None:
            _check(stun.decode_xor_address(stun.encode_xor_address(address, message.transaction_id),
                                           message.transaction_id) == address, "XOR address round trip")
    try:
        encoded = stun.encode(message, key=STUN_KEY)
    except stun.StunError:
        return  # too long once padded and signed
    again = stun.decode(encoded)
    trailer = {stun.Attr.MESSAGE_INTEGRITY, stun.Attr.MESSAGE_INTEGRITY_SHA256, stun.Attr.FINGERPRINT}
    kept = tuple(a for a in message.attributes if a[0] not in trailer)
    _check((again.cls, again.method, again.transaction_id) == (message.cls, message.method, message.transaction_id),
           "header round trip")
    _check(tuple(a for a in again.attributes if a[0] not in trailer) == kept, "attributes round trip")
    _check(stun.verify_integrity(encoded, STUN_KEY) and stun.verify_fingerprint(encoded) is True,
           "what we sign verifies")


def ice_candidate(data: bytes) -> None:
    """`Candidate.from_sdp` raises ValueError only and round-trips through `to_sdp`;
    `parse_candidates` never raises."""
    from gateway_pkg.ice.candidate import Candidate, parse_candidates

    text = data.decode("utf-8", "surrogateescape")
    try:
        candidate = Candidate.from_sdp(text)
    except ValueError:
        pass
    else:
        _check(Candidate.from_sdp(candidate.to_sdp()) == candidate, "to_sdp/from_sdp round trip")
        _check(candidate.version in (4, 6) and 0 <= candidate.local_preference <= 0xFFFF, "derived fields")
    parsed = parse_candidates([text, text.lower()])
    _check(len(parsed) <= 2, "at most one candidate per text")


TURN_SERVER = ("192.0.2.10", 3478)
TURN_USERNAME = "1700000000:salt"
TURN_PASSWORD = "c2VjcmV0LXBhc3N3b3Jk"  # noqa: S105 - a test credential
TURN_PEERS = [("203.0.113.5", 40000), ("203.0.113.6", 40001), ("2001:db8::5", 40000), ("198.51.100.2", 1)]


def _requests_in(datagrams: Iterable[bytes]) -> list[Any]:
    """The STUN requests among datagrams we sent (our own encoder's output: they decode)."""
    from gateway_pkg.ice import stun

    found = []
    for data in datagrams:
        if stun.is_stun(data):
            message = stun.decode(data)
            if message.cls == stun.Class.REQUEST:
                found.append(message)
    return found


def _forge(body: bytes, tag: int, outstanding: list[Any], key: bytes | None) -> bytes:
    """Make `body` answer one of our outstanding requests (chosen by tag bits 3-4): its transaction
    id, signed with `key` when tag bit 5 is set, FINGERPRINT when bit 6 is. Bytes that are not STUN
    stay as they are."""
    from gateway_pkg.ice import stun

    try:
        message = stun.decode(body)
    except stun.StunError:
        return body
    if outstanding:
        request = outstanding[-1 - ((tag >> 3) & 3) % len(outstanding)]
        message = stun.Message(message.cls, message.method, request.transaction_id, message.attributes)
    try:
        return stun.encode(message, key=key if tag & 32 else None, fingerprint=bool(tag & 64))
    except stun.StunError:
        return body


def _turn_key(requests: list[Any]) -> bytes:
    """The long-term key of the realm our latest authenticated request used."""
    from gateway_pkg.ice import stun

    realm = next((r.realm() for r in reversed(requests) if r.realm() is not None), "firezone")
    return stun.long_term_key(TURN_USERNAME, realm, TURN_PASSWORD)


def turn_client(data: bytes) -> None:
    """`TurnClient.handle` takes any datagram from the server, in any state, without raising, and
    only reports documented events. Tags (low 3 bits): 0 a raw datagram; 1 a STUN response made
    to answer an outstanding request (see `_forge`); 2 ChannelData (bit 3: channel patched to a
    bound one); 3 time passes; 4 send to a peer; 5 a command (allocate, refresh, release, permit,
    revoke); 6 a Data indication from a peer."""
    from gateway_pkg.ice import stun
    from gateway_pkg.ice.turn import Allocated, AllocationFailed, Lost, Received, TurnClient

    client = TurnClient(TURN_SERVER, TURN_USERNAME, TURN_PASSWORD, random_bytes=Rng(b"turn"), software="fuzz")
    now = 0.0
    client.allocate(now)
    sent: list[Any] = []

    def drain() -> None:
        transmits, events = client.drain()
        for transmit in transmits:
            _check(transmit.destination == TURN_SERVER, "TURN only talks to its server")
        sent.extend(_requests_in(t.data for t in transmits))
        del sent[:-8]
        for event in events:
            _check(isinstance(event, Allocated | AllocationFailed | Received | Lost), f"unexpected {event!r}")

    drain()
    for tag, body in records(data, limit=24):
        op = tag & 7
        if op == 0:
            client.handle(body, now)
        elif op == 1:
            client.handle(_forge(body, tag, sent, _turn_key(sent)), now)
        elif op == 2:
            frame = bytearray(body)
            if tag & 8 and len(frame) >= 2:
                frame[0:2] = (stun.CHANNEL_MIN + ((tag >> 4) & 3)).to_bytes(2, "big")
            client.handle(bytes(frame), now)
        elif op == 3:
            now += int.from_bytes(body[:2].ljust(2, b"\0"), "big") / 8
            client.tick(now)
        elif op == 4:
            client.send(TURN_PEERS[(tag >> 3) & 3], body, now)
        elif op == 5:
            command = (tag >> 3) & 7
            peer = TURN_PEERS[(tag >> 6) & 3]
            if command == 0:
                client.allocate(now)
            elif command == 1:
                client.refresh(now)
            elif command == 2:
                client.release(now)
            elif command in (3, 4):
                client.permit(body.decode("ascii", "replace") if command == 4 else peer[0], now)
            else:
                client.revoke(peer[0])
            client.permitted(peer[0])
            client.channel_for(peer)
        elif op == 6:
            tid = Rng(body)(12)
            message = stun.indication(stun.Method.DATA, tid, (stun.Attr.XOR_PEER_ADDRESS, stun.encode_xor_address(
                TURN_PEERS[(tag >> 3) & 3], tid)), (stun.Attr.DATA, body))
            client.handle(stun.encode(message, fingerprint=bool(tag & 64)), now)
        else:
            client.handle(body[:4] + b"\x21\x12\xa4\x42" + body[4:], now)  # magic cookie in place
        client.poll_timeout()
        drain()


ICE_LOCAL = ("gwuf", "gatewaypassword0123456")
ICE_REMOTE = ("clnt", "clientpassword01234567")
ICE_SOURCES = [("198.51.100.2", 40000), ("198.51.100.3", 40001), ("2001:db8::2", 40000), ("203.0.113.50", 42000)]
ICE_VIAS = ["direct-v4", "direct-v4", "direct-v6", "relay-a"]  # the via each source arrives on
RAW_VIAS = ["direct-v4", "direct-v6", "relay-a", "unknown"]


def _ice_request(body: bytes, tag: int, local: tuple[str, str], remote: tuple[str, str]) -> bytes:
    """A Binding request from the client's side: USERNAME set to ours:theirs, PRIORITY added when
    absent (tag bit 3), signed with our password (bit 5), FINGERPRINT (bit 6). Bytes that are not
    STUN become a bare request with USE-CANDIDATE."""
    from gateway_pkg.ice import stun
    from gateway_pkg.ice.stun import Attr

    try:
        message = stun.decode(body)
    except stun.StunError:
        message = stun.request(stun.Method.BINDING, Rng(body)(12), (Attr.USE_CANDIDATE, b""))
    attrs = [a for a in message.attributes if a[0] != Attr.USERNAME]
    attrs.insert(0, (Attr.USERNAME, f"{local[0]}:{remote[0]}".encode()))
    if tag & 8 and not message.has(Attr.PRIORITY):
        attrs.append((Attr.PRIORITY, stun.encode_u32(0x6E0001FF)))
    message = stun.Message(stun.Class.REQUEST, stun.Method.BINDING, message.transaction_id, tuple(attrs))
    try:
        return stun.encode(message, key=stun.short_term_key(local[1]) if tag & 32 else None,
                           fingerprint=bool(tag & 64))
    except stun.StunError:
        return body


def ice_agent(data: bytes) -> None:
    """`IceAgent.handle` takes any STUN message on any via from any source without raising, in
    any state. Tags (low 3 bits): 0 a raw datagram, decoded first (StunError rejects it), bits 3-4
    the source, 5-6 the via; 1 a Binding request from the client (`_ice_request`), bits 4 and 7
    the source; 2 a response to one of our checks (`_forge`, signed with the client's password),
    bit 7 the source; 3 time passes; 4 an SDP candidate from the client (from_sdp's ValueError
    rejects it; bit 5: invalidate); 5 local candidates change (bits 3-4 the type, 5-6 the via,
    bit 7 removes); 6-7 queries."""
    from gateway_pkg.ice import stun
    from gateway_pkg.ice.agent import (
        Credentials,
        Disconnected,
        IceAgent,
        LocalCandidate,
        LocalCandidateInvalidated,
        Selected,
    )
    from gateway_pkg.ice.candidate import Candidate, CandidateType, foundation, priority

    def candidate(kind: CandidateType, ip: str, port: int) -> Candidate:
        return Candidate(foundation(kind, ip), 1, "udp", priority(kind), ip, port, kind)

    now = 0.0
    agent = IceAgent(Credentials(*ICE_LOCAL), Credentials(*ICE_REMOTE), now=now, random_bytes=Rng(b"ice"))
    agent.add_local_candidate(candidate(CandidateType.HOST, "192.0.2.1", 52625), ICE_VIAS[0])
    agent.add_local_candidate(candidate(CandidateType.HOST, "2001:db8::1", 52625), ICE_VIAS[2])
    agent.add_remote_candidate(candidate(CandidateType.HOST, *ICE_SOURCES[0]))
    sent: list[Any] = []

    def drain() -> None:
        transmits, events = agent.drain()
        sent.extend(_requests_in(t.data for t in transmits))
        del sent[:-8]
        for event in events:
            _check(isinstance(event, Selected | Disconnected | LocalCandidate | LocalCandidateInvalidated),
                   f"unexpected {event!r}")

    drain()
    remote_key = stun.short_term_key(ICE_REMOTE[1])
    for tag, body in records(data, limit=24):
        op = tag & 7
        if op in (0, 1, 2):
            if op == 0:
                source, via, raw = ICE_SOURCES[(tag >> 3) & 3], RAW_VIAS[(tag >> 5) & 3], body
            else:
                index = ((tag >> 4) & 1) | ((tag >> 6) & 2) if op == 1 else (tag >> 7) & 1
                source, via = ICE_SOURCES[index], ICE_VIAS[index]
                raw = (_ice_request(body, tag, ICE_LOCAL, ICE_REMOTE) if op == 1
                       else _forge(body, tag, sent, remote_key))
            try:
                message = stun.decode(raw)
            except stun.StunError:
                continue
            agent.handle(message, raw, source, via, now)
        elif op == 3:
            now += int.from_bytes(body[:2].ljust(2, b"\0"), "big") / 64
            agent.tick(now)
        elif op == 4:
            try:
                remote = Candidate.from_sdp(body.decode("utf-8", "replace"))
            except ValueError:
                continue
            if tag & 32:
                agent.remove_remote_candidate(remote)
            else:
                agent.add_remote_candidate(remote)
        elif op == 5:
            kind = [CandidateType.HOST, CandidateType.SRFLX, CandidateType.RELAY, CandidateType.HOST][(tag >> 3) & 3]
            via = RAW_VIAS[(tag >> 5) & 3]
            if tag & 128:
                agent.remove_local_candidates(via)
            else:
                address = ICE_SOURCES[3] if kind == CandidateType.RELAY else ("192.0.2.77", 1024 + len(body))
                agent.add_local_candidate(candidate(kind, *address), via)
        else:
            agent.owns(body[:12])
            agent.pairs()
        agent.poll_timeout()
        drain()


NODE_HOSTS = [("192.0.2.1", 52625), ("2001:db8::1", 52625)]
NODE_RELAY = "203.0.113.10:3478"
NODE_RELAY_ADDR = ("203.0.113.10", 3478)


def ice_node(data: bytes) -> None:
    """`Traversal.receive` demultiplexes any datagram from any source (a relay server, a client,
    anyone) without raising, and passes on as WireGuard only what is not STUN. Tags (low 3 bits):
    0 raw datagram (bits 3-4 choose the source: the relay server, the client, another); 1 a
    response from the relay to an outstanding request (`_forge` with the relay's key); 2 a Binding
    request from the client (`_ice_request`), bit 4 wrapped in a Data indication from the relay;
    3 a response to one of our checks; 4 time passes; 5 SDP candidates from the client (bit 3:
    invalidate); 6 WireGuard out to an endpoint; 7 relays and sessions change."""
    from gateway_pkg.ice import stun
    from gateway_pkg.ice.agent import Credentials
    from gateway_pkg.ice.node import CandidatesForClient, ConnectionFailed, Datagram, PathSelected, Traversal

    now = 100.0
    node = Traversal(random_bytes=Rng(b"node"))
    node.set_host_addresses(NODE_HOSTS)
    node.add_relays([("relay-1", NODE_RELAY, TURN_USERNAME, TURN_PASSWORD)], now)
    local, remote = Credentials(*ICE_LOCAL), Credentials(*ICE_REMOTE)
    node.connect("client-1", local, remote, now)
    node.remote_candidates("client-1", [f"candidate:1 1 udp 2130706431 {ICE_SOURCES[0][0]} 40000 typ host"], now)
    to_relay: list[Any] = []
    checks: list[Any] = []
    sources = [NODE_RELAY_ADDR, ICE_SOURCES[0], ICE_SOURCES[2], ("192.0.2.200", 9)]

    def drain() -> None:
        datagrams, events = node.drain()
        for datagram in datagrams:
            _check(isinstance(datagram, Datagram), "datagrams out")
            requests = _requests_in([datagram.data])
            if datagram.destination == NODE_RELAY_ADDR:
                # Our TURN requests, and checks relayed in Send indications or ChannelData.
                to_relay.extend(requests)
                inner: bytes | None = None
                if stun.is_channel_data(datagram.data):
                    inner = stun.decode_channel_data(datagram.data)[1]
                elif stun.is_stun(datagram.data):
                    inner = stun.decode(datagram.data).data()
                if inner is not None:
                    checks.extend(r for r in _requests_in([inner]) if r.method == stun.Method.BINDING)
            else:
                checks.extend(r for r in requests if r.method == stun.Method.BINDING)
        del to_relay[:-8]
        del checks[:-8]
        for event in events:
            _check(isinstance(event, CandidatesForClient | PathSelected | ConnectionFailed), f"unexpected {event!r}")

    drain()
    remote_key = stun.short_term_key(ICE_REMOTE[1])
    for tag, body in records(data, limit=24):
        op = tag & 7
        if op == 0:
            passed = node.receive(body, sources[(tag >> 3) & 3], now)
            if passed is not None:
                _check(not stun.is_stun(passed[0]), "STUN passed on as WireGuard")
        elif op == 1:
            node.receive(_forge(body, tag, to_relay, _turn_key(to_relay)), NODE_RELAY_ADDR, now)
        elif op in (2, 3):
            raw = (_ice_request(body, tag, ICE_LOCAL, ICE_REMOTE) if op == 2
                   else _forge(body, tag, checks, remote_key))
            if tag & 16 and op == 2:
                tid = Rng(body)(12)
                raw = stun.encode(stun.indication(stun.Method.DATA, tid, (
                    stun.Attr.XOR_PEER_ADDRESS, stun.encode_xor_address(ICE_SOURCES[0], tid)),
                    (stun.Attr.DATA, raw)), fingerprint=False)
                node.receive(raw, NODE_RELAY_ADDR, now)
            else:
                node.receive(raw, ICE_SOURCES[0], now)
        elif op == 4:
            now += int.from_bytes(body[:2].ljust(2, b"\0"), "big") / 16
            node.tick(now)
        elif op == 5:
            texts = body.decode("utf-8", "replace").split("\n")[:8]
            node.remote_candidates("client-1", texts, now, invalidate=bool(tag & 8))
        elif op == 6:
            node.outbound([(body, sources[(tag >> 3) & 3]), (body, (ICE_SOURCES[0][0], ICE_SOURCES[0][1], 0, 0))],
                          now)
        else:
            command = (tag >> 3) & 3
            if command == 0:
                node.remove_relays(["relay-1"], now)
            elif command == 1:
                node.add_relays([("relay-1", body.decode("utf-8", "replace") or NODE_RELAY, TURN_USERNAME,
                                  TURN_PASSWORD)], now)
            elif command == 2:
                node.disconnect("client-1")
            else:
                node.connect("client-1", local, Credentials(body.decode("utf-8", "replace") or "x", "p"), now)
        node.poll_timeout()
        node.ready()
        node.paths()
        drain()


# --- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    function: Callable[[bytes], None]
    # The exceptions (dotted names) the parsers under test document as their way to refuse
    # input. The target catches them where the parser raises them (per record in the stateful
    # ones); everything else, these included when raised by a call documented never to raise,
    # escapes: a crash. Names, not classes, so that listing targets imports nothing.
    rejects: tuple[str, ...] = ()
    covers: str = ""
    max_len: int = 4096
    # Packages atheris instruments for coverage besides gateway_pkg (instrumenting costs seconds
    # at start: only where the fuzzer must learn that package's input format).
    instrument: tuple[str, ...] = ()

    def __call__(self, data: bytes) -> None:
        self.function(data)

    def reject_types(self) -> tuple[type[BaseException], ...]:
        import importlib

        found = []
        for dotted in self.rejects:
            module, _, name = dotted.rpartition(".")
            found.append(getattr(importlib.import_module(module or "builtins"), name))
        return tuple(found)


def all_targets() -> dict[str, Target]:
    """Every target by name."""
    targets = [
        Target("phoenix_frame", phoenix_frame, ("gateway_pkg.portal.phoenix.MalformedFrame",),
               covers="portal/phoenix.py decode_frame, PhoenixChannel.receive"),
        Target("portal_message", portal_message,
               ("gateway_pkg.portal.messages.MalformedMessage", "gateway_pkg.portal.messages.UnknownEvent"),
               covers="portal/messages.py parse_ingress, then tunnel/control.py ClientControl.handle"),
        Target("wg_messages", wg_messages, ("gateway_pkg.wireguard.messages.MalformedMessage",), max_len=512,
               covers="wireguard/messages.py: message_type and the decoder of each of the four types"),
        Target("wg_device", wg_device,
               covers="wireguard/device.py receive_datagram of a device with a peer (noise, cookie, session)"),
        Target("p2p_control", p2p_control, ("gateway_pkg.tunnel.p2p_control.P2pControlError",), max_len=2048,
               covers="tunnel/p2p_control.py is_p2p_control/decode, ClientControl.p2p_control"),
        Target("ip_packet", ip_packet, ("gateway_pkg.tunnel.packet.PacketError",), max_len=2048,
               covers="tunnel/packet.py IpPacket and header helpers, tunnel/icmp.py"),
        Target("policy_nat", policy_nat,
               covers="tunnel/policy.py check_outbound/check_inbound, tunnel/nat.py"),
        Target("tun_offload", tun_offload, ("gateway_pkg.tunnel.offload.OffloadError",), max_len=16384,
               covers="tunnel/offload.py split_read, coalesce"),
        Target("dns_answer", dns_answer, ("gateway_pkg.dns.upstream.UpstreamError",), instrument=("dns",),
               covers="dns/answer.py interpret, dns/upstream.py, dns/cache.py over dnspython's parse"),
        Target("stun_message", stun_message, ("gateway_pkg.ice.stun.StunError",), max_len=2048,
               covers="ice/stun.py decode, decode_channel_data, verify_integrity/fingerprint, accessors"),
        Target("ice_candidate", ice_candidate, ("ValueError",), max_len=512,
               covers="ice/candidate.py Candidate.from_sdp, parse_candidates"),
        Target("turn_client", turn_client, covers="ice/turn.py TurnClient.handle"),
        Target("ice_agent", ice_agent, ("gateway_pkg.ice.stun.StunError", "ValueError"),
               covers="ice/agent.py IceAgent.handle"),
        Target("ice_node", ice_node, covers="ice/node.py Traversal.receive"),
    ]
    return {t.name: t for t in targets}


__all__ = ["InvariantViolated", "Target", "all_targets"]
