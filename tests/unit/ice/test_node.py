"""The traversal layer without sockets: relays, candidates, demultiplexing and paths."""

from __future__ import annotations

from gateway_pkg.ice import stun
from gateway_pkg.ice.agent import Transmit
from gateway_pkg.ice.candidate import Candidate, CandidateType
from gateway_pkg.ice.node import (
    CandidatesForClient,
    ConnectionFailed,
    Datagram,
    PathSelected,
    Relayed,
    Traversal,
    parse_address,
)
from tests.unit.ice.test_agent import CLIENT, GATEWAY, Client
from tests.unit.ice.test_turn import MAPPED, PASSWORD, RELAYED, SERVER, USERNAME, Relay, counter_random

HOSTS = [("192.0.2.1", 52625), ("2001:db8::1", 52625)]
CLIENT_ADDR = ("198.51.100.2", 40000)
T0 = 100.0
WIREGUARD = b"\x04\x00\x00\x00" + bytes(28)


def traversal() -> Traversal:
    node = Traversal(random_bytes=counter_random())  # type: ignore[arg-type]
    node.set_host_addresses(HOSTS)
    return node


def broadcasts(events: list[object]) -> list[CandidatesForClient]:
    return [e for e in events if isinstance(e, CandidatesForClient)]


def with_relay(node: Traversal) -> None:
    """Add one relay entry and let the fake server grant the allocation."""
    relay = Relay()
    node.add_relays([("relay-1", f"{SERVER[0]}:{SERVER[1]}", USERNAME, PASSWORD)], T0)
    [first], _ = node.drain()
    assert first.destination == SERVER
    assert node.receive(relay.challenge(stun.decode(first.data)), SERVER, T0) is None
    [second], _ = node.drain()
    assert node.receive(relay.allocated(relay.check(second.data)), SERVER, T0) is None


def test_addresses_parse_like_the_portal_writes_them() -> None:
    assert parse_address("198.18.0.1:3478") == ("198.18.0.1", 3478)
    assert parse_address("[2001:DB8::1]:3478") == ("2001:db8::1", 3478)
    assert parse_address("nonsense") is None and parse_address("1.2.3.4:0") is None


def test_a_new_session_broadcasts_the_host_candidates_highest_priority_first() -> None:
    node = traversal()
    assert node.connect("c1", GATEWAY, CLIENT, T0)
    _, events = node.drain()
    [sent] = broadcasts(events)
    assert sent.client_id == "c1" and not sent.invalidated
    candidates = [Candidate.from_sdp(text) for text in sent.candidates]
    assert {c.addr for c in candidates} == set(HOSTS)
    assert [c.priority for c in candidates] == sorted((c.priority for c in candidates), reverse=True)


def test_an_unchanged_session_is_kept_and_changed_credentials_replace_it() -> None:
    node = traversal()
    assert node.connect("c1", GATEWAY, CLIENT, T0)
    assert not node.connect("c1", GATEWAY, CLIENT, T0 + 1)
    assert node.connect("c1", GATEWAY, type(CLIENT)("other", "another-password-0000000"), T0 + 2)


def test_wireguard_and_unknown_bytes_pass_through_untouched() -> None:
    node = traversal()
    assert node.receive(WIREGUARD, CLIENT_ADDR, T0) == (WIREGUARD, CLIENT_ADDR)


def test_malformed_and_unmatched_stun_is_dropped_and_counted() -> None:
    node = traversal()
    node.connect("c1", GATEWAY, CLIENT, T0)
    node.drain()
    broken = bytearray(Client().check())
    broken[3] ^= 0x04  # the length field no longer matches
    assert node.receive(bytes(broken), CLIENT_ADDR, T0) is None
    stranger = Client().check(username=f"nobody:{CLIENT.ufrag}")
    assert node.receive(stranger, CLIENT_ADDR, T0) is None
    assert node.dropped["stun_malformed"] == 1 and node.dropped["stun_unmatched"] == 1


def test_a_nominated_check_selects_the_path_and_is_answered() -> None:
    node = traversal()
    node.connect("c1", GATEWAY, CLIENT, T0)
    node.remote_candidates("c1", [f"candidate:1 1 udp 2130706431 {CLIENT_ADDR[0]} {CLIENT_ADDR[1]} typ host"], T0)
    node.drain()
    controlling = Client()
    assert node.receive(controlling.check(use_candidate=True), CLIENT_ADDR, T0) is None
    datagrams, _ = node.drain()
    to_client = [d for d in datagrams if d.destination == CLIENT_ADDR]
    kinds = {stun.decode(d.data).cls for d in to_client}
    assert kinds == {stun.Class.SUCCESS, stun.Class.REQUEST}  # the answer and the triggered check
    [check] = [d for d in to_client if stun.decode(d.data).cls == stun.Class.REQUEST]
    answer = controlling.answer(Transmit(check.data, check.destination, None))
    assert node.receive(answer, CLIENT_ADDR, T0 + 0.01) is None
    _, events = node.drain()
    assert PathSelected("c1", CLIENT_ADDR, "host") in events
    assert node.paths() == {"c1": "host"} and node.routes == {}


def test_a_relay_allocation_offers_relay_and_srflx_candidates_and_makes_the_gateway_ready() -> None:
    node = traversal()
    node.connect("c1", GATEWAY, CLIENT, T0)
    node.drain()
    node.add_relays([("relay-1", f"{SERVER[0]}:{SERVER[1]}", USERNAME, PASSWORD)], T0)
    assert node.ready() == (False, "1 relay address(es) configured, none allocated")
    node.drain()
    node.remove_relays(["relay-1"], T0)
    with_relay(node)
    assert node.ready() == (True, "ready") and node.relays_allocated() == 1
    _, events = node.drain()
    [sent] = broadcasts(events)
    offered = {(c.type, c.addr) for c in map(Candidate.from_sdp, sent.candidates)}
    assert offered == {(CandidateType.RELAY, RELAYED), (CandidateType.SRFLX, MAPPED)}


def test_a_relay_that_leaves_is_released_and_its_candidates_invalidated() -> None:
    node = traversal()
    with_relay(node)
    node.connect("c1", GATEWAY, CLIENT, T0)
    node.drain()
    node.remove_relays(["relay-1"], T0 + 1)
    datagrams, events = node.drain()
    [release] = [d for d in datagrams if d.destination == SERVER]
    assert stun.decode(release.data).method == stun.Method.REFRESH and stun.decode(release.data).lifetime() == 0
    [gone] = [e for e in broadcasts(events) if e.invalidated]
    assert [Candidate.from_sdp(t).type for t in gone.candidates] == [CandidateType.RELAY]
    assert node.relay_servers() == set() and node.ready() == (True, "ready")


def test_wireguard_for_a_relayed_endpoint_is_framed_for_the_relay() -> None:
    node = traversal()
    with_relay(node)
    node.drain()
    peer = ("203.0.113.5", 40000)
    node.routes[peer] = Relayed("relay-1", 4)
    assert node.outbound([(WIREGUARD, peer)], T0) == []  # no permission yet: queued in the TURN client
    datagrams, _ = node.drain()
    assert datagrams and all(isinstance(d, Datagram) and d.destination == SERVER for d in datagrams)
    direct = ("198.51.100.9", 1000)
    assert node.outbound([(WIREGUARD, direct)], T0) == [(WIREGUARD, direct)]


def test_a_failed_session_is_forgotten_so_the_same_flow_starts_a_new_one() -> None:
    node = traversal()
    node.connect("c1", GATEWAY, CLIENT, T0)
    node.drain()
    node.tick(T0 + 11)  # no remote candidate within the candidate timeout
    _, events = node.drain()
    failed = [e for e in events if isinstance(e, ConnectionFailed)]
    assert [e.client_id for e in failed] == ["c1"]
    assert node.path_of("c1") is None
    assert node.connect("c1", GATEWAY, CLIENT, T0 + 12)  # not "reused": a fresh agent
