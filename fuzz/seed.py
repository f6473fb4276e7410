"""Regenerate the seed corpus under fuzz/corpus/<target>/ from our own encoders.

    python -m fuzz.seed           # rewrite fuzz/corpus (deterministic: same bytes every run)
    python -m fuzz.seed --check   # exit 1 if the committed corpus differs from what this builds

A few valid inputs per target, shaped like what upstream's portal, clients and relays send
(the frames of ../shared/reference/firezone-gateway-facts.md §2, a coturn-style allocation,
str0m's candidate lines), plus a few near misses. The fuzzer grows its own corpus from these
under .cache/fuzz/ (not committed). Seeds for the stateful targets are record sequences
(fuzz/framing.py) whose tags are documented in each target's docstring.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path

from fuzz.framing import join

CORPUS = Path(__file__).resolve().parent / "corpus"


# --- IP packets with valid checksums ---------------------------------------------------------------


def _packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def _l4(src: str, dst: str, protocol: int, segment: bytearray, checksum_at: int | None) -> bytes:
    from gateway_pkg.tunnel.checksum import internet_checksum, pseudo_header_sum
    from gateway_pkg.tunnel.packet import build_ipv4, build_ipv6

    s, d = _packed(src), _packed(dst)
    if checksum_at is not None:
        pseudo = 0 if (protocol == 1 and len(s) == 4) else pseudo_header_sum(s, d, protocol, len(segment))
        struct.pack_into("!H", segment, checksum_at, internet_checksum(segment, pseudo))
    return build_ipv4(s, d, protocol, bytes(segment)) if len(s) == 4 else build_ipv6(s, d, protocol, bytes(segment))


def tcp(src: str, dst: str, sport: int, dport: int, flags: int = 0x02, payload: bytes = b"") -> bytes:
    segment = bytearray(struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload)
    return _l4(src, dst, 6, segment, 16)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    segment = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)
    return _l4(src, dst, 17, segment, 6)


def echo(src: str, dst: str, ident: int = 7, seq: int = 1, payload: bytes = b"ping", reply: bool = False) -> bytes:
    v6 = ":" in src
    kind = (129 if reply else 128) if v6 else (0 if reply else 8)
    segment = bytearray(struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload)
    return _l4(src, dst, 58 if v6 else 1, segment, 2)


def icmp_error(src: str, dst: str, kind: int, code: int, quoted: bytes) -> bytes:
    v6 = ":" in src
    segment = bytearray(struct.pack("!BBHI", kind, code, 0, 0) + quoted)
    return _l4(src, dst, 58 if v6 else 1, segment, 2)


# --- per target -----------------------------------------------------------------------------------

C4, C6 = "100.64.0.2", "fd00:2021:1111::2"
P4, P6 = "100.96.0.1", "fd00:2021:1111:8000::1"
R4, R6 = "192.0.2.1", "2001:db8::1"
KEY = base64.b64encode(bytes(range(32))).decode()
PSK = base64.b64encode(bytes(range(32, 64))).decode()


def _frame(event: str, payload: object, ref: int | None = None, topic: str = "gateway") -> bytes:
    return json.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref},
                      separators=(",", ":")).encode()


def _lines(*frames: bytes) -> bytes:
    return b"\n".join(frames)


JOIN = _frame("phx_reply", {"status": "ok", "response": {}}, 0)
CLIENT = {"id": "c1", "public_key": KEY, "preshared_key": PSK, "ipv4": C4, "ipv6": C6}
INIT = _frame("init", {
    "interface": {"ipv4": "100.64.0.1", "ipv6": "fd00:2021:1111::1", "upstream_dns": []},
    "config": {"ipv4_masquerade_enabled": True, "ipv6_masquerade_enabled": True},
    "account_slug": "acme",
    "relays": [{"type": "turn", "id": "r1", "addr": "203.0.113.10:3478", "username": "1700000000:salt",
                "password": "cGFzc3dvcmQ=", "expires_at": 1700000000}],
    "authorizations": [{"client_id": "c1", "resource_id": "cidr", "expires_at": None}],
})
CIDR = {"type": "cidr", "id": "cidr", "address": "10.0.0.0/8", "name": "net",
        "filters": [{"protocol": "tcp", "port_range_start": 80, "port_range_end": 443}, {"protocol": "icmp"}]}
DNS = {"type": "dns", "id": "dns", "address": "**.corp.example", "name": "corp", "filters": []}


def phoenix_frame() -> dict[str, bytes]:
    return {
        "join-push-heartbeat": _lines(JOIN, INIT, _frame("phx_reply", {"status": "ok", "response": {}}, 1, "phoenix")),
        "string-ref-and-error": _lines(JOIN, b'{"topic":"gateway","event":"phx_reply","payload":{"status":"error",'
                                             b'"response":{"reason":"unmatched topic"}},"ref":"12"}',
                                       _frame("phx_error", {}), _frame("phx_close", {})),
        "disconnect": _lines(_frame("disconnect", {"reason": "token_expired"})),
        "join-refused": _frame("phx_reply", {"status": "error", "response": {"reason": "invalid_version"}}, 0),
        "not-a-frame": b'[1,2,{"topic":null}]\n{"topic":"gateway","event":"x","ref":-1}\n\xff\xfe',
    }


def portal_message() -> dict[str, bytes]:
    authorize = _frame("authorize_flow", {
        "ref": "opaque-ref", "resource": CIDR, "client": CLIENT, "expires_at": 1900000000, "flow_id": "f1",
        "gateway_ice_credentials": {"username": "gwuf", "password": "gatewaypassword0123456"},
        "client_ice_credentials": {"username": "clnt", "password": "clientpassword01234567"}, "actor": {},
    })
    request = _frame("request_connection", {
        "ref": "r2", "expires_at": None, "resource": DNS,
        "client": {"id": "c2", "payload": {"ice_parameters": {"username": "u", "password": "p"},
                                          "domain": {"name": "app.corp.example", "proxy_ips": [P4, P6]}},
                   "peer": {"persistent_keepalive": 25, "public_key": KEY, "preshared_key": PSK,
                            "ipv4": "100.64.0.3", "ipv6": "fd00:2021:1111::3"}},
    })
    allow = _frame("allow_access", {"ref": "r3", "client_id": "c2", "resource": {**DNS, "id": "dns2"},
                                    "expires_at": None, "payload": {"name": "b.corp.example", "proxy_ips": [P4]},
                                    "client_ipv4": "100.64.0.3", "client_ipv6": "fd00:2021:1111::3"})
    return {
        "flow-1.4": _lines(JOIN, INIT, authorize,
                           _frame("ice_candidates", {"client_id": "c1", "candidates": [
                               "candidate:1 1 udp 2130706431 198.51.100.2 40000 typ host"]}),
                           _frame("resource_updated", {**CIDR, "filters": []}),
                           _frame("access_authorization_expiry_updated",
                                  {"client_id": "c1", "resource_id": "cidr", "expires_at": 1950000000}),
                           _frame("reject_access", {"client_id": "c1", "resource_id": "cidr"})),
        "connection-1.3": _lines(JOIN, request, allow,
                                 _frame("relays_presence", {"disconnected_ids": ["r1"], "connected": [
                                     {"type": "turn", "id": "r2", "addr": "[2001:db8::10]:3478",
                                      "username": "1:s", "password": "p", "expires_at": None}]}),
                                 _frame("invalidate_ice_candidates", {"client_id": "c2", "candidates": []}),
                                 _lines(INIT)),
        "unknown-and-malformed": _lines(JOIN, _frame("something_new", {}), _frame("init", []),
                                        _frame("authorize_flow", {"ref": 1, "resource": CIDR, "client": CLIENT})),
    }


def _wireguard_messages() -> dict[str, bytes]:
    from fuzz.targets import _WireGuardWorld

    # Another world than the target's: these are a stranger's messages there (unknown key, unknown
    # index), as a replay of the target's own session would be authentic and decrypt.
    world = _WireGuardWorld(b"stranger")
    init = world.client.initiate_handshake(world.gateway.public_key, world.now + 10)
    world.now += 10
    initiation = init.datagrams[0][0] if init.datagrams else b""
    world.loaded = True
    cookie = world.gateway.receive_datagram(bytes(initiation), ("198.51.100.7", 40000), world.now)
    world.loaded = False
    response = world.gateway.receive_datagram(bytes(initiation), ("198.51.100.7", 40000), world.now + 0.1)
    transport = world.client.send_packet(world.gateway.public_key, echo(C4, "10.1.2.3"), world.now)
    return {
        "initiation": bytes(initiation),
        "response": bytes(response.datagrams[0][0]) if response.datagrams else b"",
        "cookie-reply": bytes(cookie.datagrams[0][0]) if cookie.datagrams else b"",
        "transport": bytes(transport.datagrams[0][0]),
    }


def wg_messages() -> dict[str, bytes]:
    return {**_wireguard_messages(), "keepalive-too-short": b"\x04\x00\x00\x00" + bytes(12)}


def wg_device() -> dict[str, bytes]:
    msgs = _wireguard_messages()
    packet = echo(C4, "10.1.2.3", payload=bytes(40))
    return {
        "foreign-handshakes": join([(0, msgs["initiation"]), (0, msgs["response"]), (0, msgs["cookie-reply"]),
                                    (0, msgs["transport"])]),
        "traffic": join([(5, packet), (5, packet + bytes(12)), (5, b""), (5, tcp(C6, R6, 1, 80)), (5, b"\x45" * 20),
                         (4 | 16, bytes(8) + bytes(32))]),
        "forged-with-mac1": join([(1, bytes(144)), (1 | 8, msgs["initiation"][4:]), (3 | 16, bytes(60)),
                                  (2 | 16, bytes(88))]),
        "gateway-initiates": join([(6, b""), (2 | 16, bytes(88)), (3 | 16, bytes(60)), (7, b"\x01\x40"),
                                   (6 | 16, b""), (5, packet), (7, b"\xff\xff"), (7, b"\xff\xff")]),
    }


def p2p_control() -> dict[str, bytes]:
    from gateway_pkg.tunnel import p2p_control as p2p

    proxies = [ipaddress.ip_address(P4), ipaddress.ip_address(P6)]
    return {
        "assigned-ips": b"\x00" + p2p.encode_assigned_ips("dns", "app.corp.example", proxies),
        "assigned-ips-other-resource": b"\x00" + p2p.encode_assigned_ips("nope", "app.corp.example", proxies),
        "domain-status": b"\x00" + p2p.encode_domain_status("dns", "app.corp.example", True),
        "goodbye": b"\x00" + p2p.encode_goodbye(),
        "framed-assigned-ips": b"\x01" + json.dumps({"resource": "d", "domain": "x.corp.example",
                                                     "proxy_ips": ["100.96.0.9"]}).encode(),
        "framed-unknown-type": b"\x07" + b"{}",
    }


def _ip_seeds() -> dict[str, bytes]:
    quoted = udp(C4, R4, 5000, 53, b"q")[:28]
    return {
        "tcp4": tcp(C4, "10.1.2.3", 40000, 443, payload=b"hello"),
        "udp6": udp(C6, R6, 5353, 53, b"abc"),
        "echo4": echo(C4, P4),
        "echo6-reply": echo(R6, C6, reply=True),
        "icmp4-error": icmp_error("198.51.100.1", C4, 3, 3, quoted),
        "icmp6-error": icmp_error("2001:db8::ff", C6, 1, 4, tcp(C6, R6, 9, 9)),
        "v6-fragment-header": bytes.fromhex("6000000000102c40") + _packed(C6) + _packed(R6)
        + bytes.fromhex("1100000100000001") + struct.pack("!HHHH", 1, 2, 8, 0),
        "v4-options": bytes.fromhex("46000020000000004006") + bytes(2) + _packed(C4) + _packed("10.0.0.1")
        + bytes(4) + bytes(8),
    }


def ip_packet() -> dict[str, bytes]:
    return _ip_seeds()


def policy_nat() -> dict[str, bytes]:
    syn = tcp(C4, P4, 40000, 443)
    answer = tcp(R4, C4, 443, 40000, flags=0x12)
    quoted = tcp(C4, R4, 40000, 443)[:28]
    return {
        "dns-nat-tcp": b"\x00" + join([(0, syn), (1, answer), (1, icmp_error("198.51.100.1", C4, 3, 4, quoted)),
                                       (0, tcp(C4, P4, 40000, 443, flags=0x04)), (1, answer)]),
        "dns-nat-udp6-echo": b"\x20" + join([(0, udp(C6, P6, 5353, 53, b"q")), (1, udp(R6, C6, 53, 5353, b"a")),
                                             (0, echo(C4, P4)), (1, echo(R4, C4, reply=True)),
                                             (2, b"\x00\x01\x00"), (1, udp(R6, C6, 53, 5353, b"late"))]),
        "re-resolve": b"\x01" + join([(0, syn), (3 | 8, b""), (0, tcp(C4, P4, 40001, 443)), (3 | 12, b""),
                                      (0, tcp(C4, P4, 40002, 443)), (1, answer)]),
        "cidr-and-filters": b"\x05" + join([(0, tcp(C4, "10.1.2.3", 1, 80)), (0, tcp(C4, "10.1.2.3", 1, 22)),
                                            (0, udp(C4, "8.8.8.8", 1, 53)), (1, tcp("10.1.2.3", C4, 80, 1)),
                                            (0, tcp("100.64.0.9", "10.1.2.3", 1, 80)),
                                            (0 | 4 | 8, b"\x45" + bytes(39)),
                                            (0, tcp(C6, "2001:db8:1::5", 1, 80)), (2, b"\xff\xff\xff")]),
    }


def tun_offload() -> dict[str, bytes]:
    # The unit tests' builders: super-packets as the kernel hands them to a vnet_hdr TUN.
    from gateway_pkg.tunnel.offload import GSO_NONE, NO_OFFLOAD
    from tests.unit.tunnel.test_offload import flow, gso_read, tcp, udp, vnet

    needs_csum = bytearray(gso_read(6, 4, bytes(range(200)), 1))
    needs_csum[:10] = vnet(1, GSO_NONE, 0, 0, 20, 16)
    tcp4, tcp6 = flow(5, 4, 300, sport=1), flow(4, 6, 280, sport=2, last=100)
    udp4 = [udp(4, bytes([i]) * 200, ident=i) for i in range(4)]
    interleaved = [tcp4[0], tcp6[0], udp4[0], tcp4[1], udp4[1], tcp6[1], tcp4[2], udp4[2], tcp6[2], tcp4[3],
                   udp4[3], tcp6[3], tcp4[4]]
    fragment = bytearray(tcp(4, bytes(64), ident=9))
    fragment[6:8] = b"\x00\x64"
    return {
        "reads": b"\x03" + join([(1, gso_read(6, 4, bytes(range(256)) * 12, 1000, flags=0x18, ident=0xFFFF)),
                                 (1, gso_read(6, 6, bytes(2000), 600, ecn=True, flags=0x90, hdr_len=0)),
                                 (1, gso_read(17, 4, bytes(1500), 500, df=True)),
                                 (1, gso_read(17, 6, bytes(999), 333)),
                                 (1, NO_OFFLOAD + tcp(4, b"plain")), (1, bytes(needs_csum))]),
        "gro-batch": b"\x03" + join([(0, p) for p in interleaved]),
        "tso-then-gro": b"\x01" + join([(1, gso_read(6, 4, bytes(range(250)) * 8, 250, ident=5)),
                                        (0, tcp(4, bytes(250), seq=3000, ident=13))]),
        "not-mergeable": b"\x03" + join([
            (0, tcp4[0]), (0, tcp4[2]), (0, tcp(4, bytes(300), seq=1000, flags=0x02)), (0, bytes(fragment)),
            (0, tcp(4, bytes(300), seq=1300, ident=101, checksum=0x1234)), (2, tcp(4, bytes(300), checksum=7)),
            (0, tcp(4, bytes(300), seq=1300, ident=101, options=bytes.fromhex("01010101"))),
            (0, udp(4, bytes(100), checksum=0)), (0, udp(6, bytes(100))), (0, udp(6, bytes(101)))]),
        "refused-reads": b"\x00" + join([(1, bytes(9)), (1, gso_read(6, 4, b"", 100)), (1, bytes(20)),
                                         (3, gso_read(6, 4, bytes(900), 300)[:-7]),
                                         (1, gso_read(17, 6, bytes(900), 300)[:12] + b"\x00\x00")]),
    }


def dns_answer() -> dict[str, bytes]:
    import dns.message
    import dns.rcode
    import dns.rrset

    def response(qname: str, rdtype: str, *answers: tuple[str, int, str, str],
                 rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
                 authority: tuple[str, int, str, str] | None = None) -> bytes:
        query = dns.message.make_query(qname, rdtype, use_edns=0, payload=1232)
        reply = dns.message.make_response(query)
        reply.id = 4242  # make_query picks a random id; the target patches it to the query's anyway
        reply.set_rcode(rcode)
        for name, ttl, kind, value in answers:
            reply.answer.append(dns.rrset.from_text(name, ttl, "IN", kind, value))
        if authority is not None:
            name, ttl, kind, value = authority
            reply.authority.append(dns.rrset.from_text(name, ttl, "IN", kind, value))
        return reply.to_wire()

    name = "app.corp.example."
    soa = ("corp.example.", 300, "SOA", "ns.corp.example. host.corp.example. 1 3600 600 86400 60")
    return {
        "a": b"\x00" + join([(0, response(name, "A", (name, 60, "A", "192.0.2.1"), (name, 60, "A", "192.0.2.2")))]),
        "aaaa-absolute": b"\x03" + join([(0, response(name, "AAAA", (name, 30, "AAAA", "2001:db8::1")))]),
        "cname-chase": b"\x00" + join([(0, response(name, "A", (name, 60, "CNAME", "real.corp.example."))),
                                       (0, response("real.corp.example.", "A",
                                                    ("real.corp.example.", 20, "A", "192.0.2.7")))]),
        "nodata-soa": b"\x01" + join([(0, response(name, "AAAA", authority=soa))]),
        "nxdomain-then-servfail-then-a": b"\x00" + join([
            (0, response(name, "A", rcode=dns.rcode.NXDOMAIN, authority=soa)),
            (0, response("app.", "A", rcode=dns.rcode.SERVFAIL)),
            (0, response("app.", "A", ("app.", 5, "A", "192.0.2.9")))]),
        "garbage-then-timeout": b"\x00" + join([(0, b"\x00\x01\x81\x80"), (0, response("other.", "A"))]),
    }


def stun_message() -> dict[str, bytes]:
    from fuzz.targets import STUN_KEY
    from gateway_pkg.ice import stun
    from gateway_pkg.ice.stun import Attr, Method

    tid = bytes(range(12))
    binding = stun.request(Method.BINDING, tid, (Attr.USERNAME, b"gwuf:clnt"), (Attr.PRIORITY, stun.encode_u32(1)),
                           (Attr.ICE_CONTROLLING, stun.encode_u64(5)), (Attr.USE_CANDIDATE, b""))
    allocated = stun.success_response(
        stun.request(Method.ALLOCATE, tid),
        (Attr.XOR_RELAYED_ADDRESS, stun.encode_xor_address(("192.0.2.10", 50000), tid)),
        (Attr.XOR_MAPPED_ADDRESS, stun.encode_xor_address(("2001:db8::7", 52625), tid)),
        (Attr.LIFETIME, stun.encode_u32(600)), (Attr.SOFTWARE, b"Coturn-4.6.1"))
    challenge = stun.error_response(stun.request(Method.ALLOCATE, tid), stun.UNAUTHORIZED, "Unauthorized",
                                    (Attr.REALM, b"firezone"), (Attr.NONCE, b"0123456789abcdef"))
    data = stun.indication(Method.DATA, tid, (Attr.XOR_PEER_ADDRESS, stun.encode_xor_address(("203.0.113.5", 1), tid)),
                           (Attr.DATA, b"\x04\x00\x00\x00" + bytes(28)))
    unknown = stun.request(Method.BINDING, tid, (0x7F01, b"x"), (Attr.UNKNOWN_ATTRIBUTES, b"\x7f\x01\x00\x02"),
                           (Attr.MAPPED_ADDRESS, stun.encode_address(("192.0.2.3", 9))))
    return {
        "binding-request": stun.encode(binding, key=STUN_KEY),
        "binding-request-sha256": stun.encode(binding, key=STUN_KEY, sha256=True),
        "allocate-success": stun.encode(allocated, key=b"other-key"),
        "unauthorized": stun.encode(challenge),
        "data-indication": stun.encode(data, fingerprint=False),
        "unknown-attributes": stun.encode(unknown),
        "channel-data": stun.encode_channel_data(0x4000, b"\x04\x00\x00\x00" + bytes(29)),
    }


def ice_candidate() -> dict[str, bytes]:
    return {
        "host4": b"candidate:7d7a3d2b5a5e4f1c 1 udp 2130706431 192.0.2.1 52625 typ host",
        "srflx": b"a=candidate:1 1 UDP 1694498815 198.51.100.7 40000 typ srflx raddr 10.0.0.2 rport 40000",
        "relay6": b"candidate:abc+/ 1 udp 16777215 2001:db8::10 50000 typ relay raddr 2001:db8::7 rport 1 "
        b"generation 0 network-id 1",
        "mdns-refused": b"candidate:1 1 udp 2130706431 6c8f.local 52625 typ host",
        "tcp-refused": b"candidate:1 1 tcp 2130706431 192.0.2.1 9 typ host tcptype active",
    }


def _turn_responses() -> dict[str, bytes]:
    from gateway_pkg.ice import stun
    from gateway_pkg.ice.stun import Attr, Method

    tid = bytes(12)

    def ok(method: int, *attrs: tuple[int, bytes]) -> bytes:
        return stun.encode(stun.success_response(stun.request(method, tid), *attrs), fingerprint=False)

    def err(method: int, code: int, reason: str, *attrs: tuple[int, bytes]) -> bytes:
        return stun.encode(stun.error_response(stun.request(method, tid), code, reason, *attrs), fingerprint=False)

    return {
        "401": err(Method.ALLOCATE, stun.UNAUTHORIZED, "Unauthorized", (Attr.REALM, b"firezone"),
                   (Attr.NONCE, b"nonce-1")),
        "438": err(Method.ALLOCATE, stun.STALE_NONCE, "Stale Nonce", (Attr.REALM, b"firezone"),
                   (Attr.NONCE, b"nonce-2")),
        "437": err(Method.ALLOCATE, stun.ALLOCATION_MISMATCH, "Allocation Mismatch"),
        "allocated": ok(Method.ALLOCATE,
                        (Attr.XOR_RELAYED_ADDRESS, stun.encode_xor_address(("192.0.2.10", 50000), tid)),
                        (Attr.XOR_MAPPED_ADDRESS, stun.encode_xor_address(("198.51.100.7", 52625), tid)),
                        (Attr.LIFETIME, stun.encode_u32(600))),
        "refreshed": ok(Method.REFRESH, (Attr.LIFETIME, stun.encode_u32(600))),
        "refresh-ok-0": ok(Method.REFRESH, (Attr.LIFETIME, stun.encode_u32(0))),
        "permission": ok(Method.CREATE_PERMISSION),
        "channel": ok(Method.CHANNEL_BIND),
        "403": err(Method.CREATE_PERMISSION, stun.FORBIDDEN, "Forbidden"),
        "508": err(Method.ALLOCATE, stun.INSUFFICIENT_CAPACITY, "Insufficient Capacity"),
    }


SIGN = 1 | 32 | 64  # tag: a forged response, signed, with FINGERPRINT


def turn_client() -> dict[str, bytes]:
    r = _turn_responses()
    wireguard = b"\x04\x00\x00\x00" + bytes(28)
    allocated = [(1, r["401"]), (SIGN, r["allocated"])]
    return {
        "allocate-send-bind": join([*allocated, (4, wireguard), (SIGN | 8, r["permission"]), (SIGN, r["channel"]),
                                    (2 | 8, b"\x40\x00\x00\x20" + wireguard), (6, wireguard), (4, wireguard),
                                    (3, b"\x09\x60"), (SIGN, r["refreshed"]), (5 | (2 << 3), b"")]),
        "stale-nonce-mismatch": join([(1, r["401"]), (SIGN, r["438"]), (SIGN, r["437"]), (SIGN, r["refresh-ok-0"]),
                                      (SIGN, r["allocated"]), (1, r["allocated"])]),
        "refused-and-lost": join([*allocated, (5 | (3 << 3), b""), (SIGN, r["403"]), (3, b"\xff\xff"),
                                  (3, b"\xff\xff"), (5, b""), (1, r["508"])]),
        "raw-from-server": join([(0, r["allocated"]), (0, b"\x40\x00\x00\x00"), (7, bytes(16))]),
    }


def ice_agent() -> dict[str, bytes]:
    from gateway_pkg.ice import stun
    from gateway_pkg.ice.stun import Attr, Method

    tid = bytes(12)
    check = stun.encode(stun.request(Method.BINDING, tid, (Attr.PRIORITY, stun.encode_u32(0x6E0001FF)),
                                     (Attr.ICE_CONTROLLING, stun.encode_u64(1)), (Attr.USE_CANDIDATE, b"")))
    success = stun.encode(stun.success_response(stun.request(Method.BINDING, tid), (
        Attr.XOR_MAPPED_ADDRESS, stun.encode_xor_address(("192.0.2.1", 52625), tid))))
    conflict = stun.encode(stun.error_response(stun.request(Method.BINDING, tid), stun.ROLE_CONFLICT, "Role Conflict"))
    controlled = stun.encode(stun.request(Method.BINDING, tid, (Attr.PRIORITY, stun.encode_u32(1)),
                                          (Attr.ICE_CONTROLLED, stun.encode_u64(1))))
    return {
        "check-nominate": join([(1 | 32 | 64, check), (3, b"\x00\x10"), (2 | 32 | 64, success), (2 | 32 | 64, success),
                                (3, b"\x06\x40"), (2 | 32 | 64, success), (3, b"\xff\xff")]),
        "role-conflict-and-unsigned": join([(3, b"\x00\x10"), (2 | 32, conflict), (1 | 64, check),
                                            (1 | 32, controlled), (0, check), (1 | 16 | 32, check)]),
        "candidates": join([(4, b"candidate:2 1 udp 1694498815 198.51.100.9 41000 typ srflx raddr 10.0.0.2 rport 1"),
                            (4, b"candidate:3 1 udp 16777215 2001:db8::9 50000 typ relay"), (5 | 16 | 64, b""),
                            (5 | 8, b"x"), (3, b"\x00\x20"), (5 | 64 | 128, b""), (4 | 32, b"candidate:3 1 udp 1 "
                            b"2001:db8::9 50000 typ relay"), (3, b"\x40\x00"), (3, b"\xff\xff")]),
    }


def ice_node() -> dict[str, bytes]:
    from gateway_pkg.ice import stun
    from gateway_pkg.ice.stun import Attr, Method

    r = _turn_responses()
    tid = bytes(12)
    check = stun.encode(stun.request(Method.BINDING, tid, (Attr.PRIORITY, stun.encode_u32(0x6E0001FF)),
                                     (Attr.USE_CANDIDATE, b"")))
    success = stun.encode(stun.success_response(stun.request(Method.BINDING, tid)))
    wireguard = b"\x01\x00\x00\x00" + bytes(144)
    return {
        "relay-allocation": join([(1, r["401"]), (SIGN, r["allocated"]), (4, b"\x00\x10"),
                                  (1 | 32 | 64 | 8, r["permission"]), (SIGN, r["channel"]),
                                  (6 | 8, wireguard), (0, b"\x40\x00\x00\x04abcd"), (4, b"\xff\xff")]),
        "direct-check": join([(2 | 32 | 64, check), (4, b"\x00\x10"), (3 | 32 | 64, success),
                              (0 | 8, wireguard), (6 | 8, wireguard), (4, b"\x10\x00")]),
        "relayed-check": join([(1, r["401"]), (SIGN, r["allocated"]), (SIGN, r["permission"]),
                               (2 | 16 | 32 | 64, check), (5, b"candidate:9 1 udp 16777215 203.0.113.77 9 typ relay"),
                               (4, b"\x01\x00")]),
        "churn": join([(7, b""), (7 | 8, b"[2001:db8::10]:3478"), (7 | 16, b""), (7 | 24, b"newufrag"),
                       (0 | 16, bytes(20)), (5 | 8, b"candidate:1 1 udp 2130706431 198.51.100.2 40000 typ host")]),
    }


SEEDS: dict[str, Callable[[], dict[str, bytes]]] = {
    "phoenix_frame": phoenix_frame,
    "portal_message": portal_message,
    "wg_messages": wg_messages,
    "wg_device": wg_device,
    "p2p_control": p2p_control,
    "ip_packet": ip_packet,
    "policy_nat": policy_nat,
    "tun_offload": tun_offload,
    "dns_answer": dns_answer,
    "stun_message": stun_message,
    "ice_candidate": ice_candidate,
    "turn_client": turn_client,
    "ice_agent": ice_agent,
    "ice_node": ice_node,
}


def build() -> dict[str, dict[str, bytes]]:
    return {target: make() for target, make in SEEDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with fuzz/corpus instead of writing it")
    args = parser.parse_args(argv)
    corpus = build()
    if args.check:
        stale = []
        for target, seeds in corpus.items():
            directory = CORPUS / target
            on_disk = {p.name: p.read_bytes() for p in directory.iterdir()} if directory.is_dir() else {}
            if on_disk != seeds:
                stale.append(target)
        if stale:
            print(f"fuzz/corpus is out of date for {', '.join(stale)}: run python -m fuzz.seed", file=sys.stderr)
            return 1
        print(f"fuzz/corpus is up to date ({sum(len(s) for s in corpus.values())} seeds)")
        return 0
    for target, seeds in corpus.items():
        directory = CORPUS / target
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        for name, data in seeds.items():
            (directory / name).write_bytes(data)
    print(f"wrote {sum(len(s) for s in corpus.values())} seeds for {len(corpus)} targets under {CORPUS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
