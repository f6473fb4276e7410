"""TURN client driven by hand-built relay responses: no sockets, no clock."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_pkg.ice import stun
from gateway_pkg.ice.stun import Attr, Class, Method
from gateway_pkg.ice.turn import (
    Allocated,
    AllocationFailed,
    Lost,
    Received,
    TurnClient,
    TurnTimings,
)

SERVER = ("192.0.2.10", 3478)
USERNAME = "1700000000:salt"
PASSWORD = "c2VjcmV0LXBhc3N3b3Jk"
RELAYED = ("192.0.2.10", 50000)
MAPPED = ("198.51.100.7", 52625)
PEER = ("203.0.113.5", 40000)


def counter_random() -> object:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


class Relay:
    """Builds the server's side of the conversation with our own STUN codec."""

    def __init__(self, realm: str = "firezone", nonce: bytes = b"nonce-1", password: str = PASSWORD) -> None:
        self.realm, self.nonce, self.password = realm, nonce, password

    @property
    def key(self) -> bytes:
        return stun.long_term_key(USERNAME, self.realm, self.password)

    def challenge(self, request: stun.Message, code: int = stun.UNAUTHORIZED, reason: str = "Unauthorized") -> bytes:
        return stun.encode(stun.error_response(request, code, reason, (Attr.REALM, self.realm.encode()),
                                               (Attr.NONCE, self.nonce)))

    def ok(self, request: stun.Message, *attrs: tuple[int, bytes], key: bytes | None = None) -> bytes:
        return stun.encode(stun.success_response(request, *attrs), key=self.key if key is None else key)

    def error(self, request: stun.Message, code: int, reason: str) -> bytes:
        return stun.encode(stun.error_response(request, code, reason), key=self.key)

    def allocated(self, request: stun.Message, lifetime: int = 600) -> bytes:
        tid = request.transaction_id
        return self.ok(request, (Attr.XOR_RELAYED_ADDRESS, stun.encode_xor_address(RELAYED, tid)),
                       (Attr.XOR_MAPPED_ADDRESS, stun.encode_xor_address(MAPPED, tid)),
                       (Attr.LIFETIME, stun.encode_u32(lifetime)))

    def check(self, data: bytes) -> stun.Message:
        """A request from the client, with valid integrity over our key."""
        assert stun.verify_integrity(data, self.key), "request not authenticated with the long-term key"
        assert stun.verify_fingerprint(data) is True
        message = stun.decode(data)
        assert message.username() == USERNAME and message.realm() == self.realm and message.nonce() == self.nonce
        return message


def drain_messages(client: TurnClient) -> tuple[list[bytes], list[object]]:
    transmits, events = client.drain()
    assert all(t.destination == SERVER for t in transmits)
    return [t.data for t in transmits], list(events)


def requests(data: list[bytes]) -> list[stun.Message]:
    return [stun.decode(d) for d in data if stun.is_stun(d)]


def allocated_client(relay: Relay | None = None, **kwargs: object) -> tuple[TurnClient, Relay]:
    relay = relay or Relay()
    client = TurnClient(SERVER, USERNAME, PASSWORD, random_bytes=counter_random(), **kwargs)  # type: ignore[arg-type]
    client.allocate(0.0)
    [first], _ = drain_messages(client)
    assert client.handle(relay.challenge(stun.decode(first)), 0.01)
    [second], _ = drain_messages(client)
    assert client.handle(relay.allocated(relay.check(second)), 0.02)
    _, events = drain_messages(client)
    assert events == [Allocated(RELAYED, MAPPED)]
    return client, relay


# --- allocation and authentication -----------------------------------------------------


def test_allocate_challenge_then_authenticated_success() -> None:
    relay = Relay()
    client = TurnClient(SERVER, USERNAME, PASSWORD, random_bytes=counter_random(), software="test-gateway")
    assert not client.allocated and client.relayed is None and client.server == SERVER
    client.allocate(0.0)
    [first], events = drain_messages(client)
    assert events == []
    message = stun.decode(first)
    assert (message.cls, message.method) == (Class.REQUEST, Method.ALLOCATE)
    assert message.get(Attr.REQUESTED_TRANSPORT) == b"\x11\x00\x00\x00"
    assert message.get(Attr.SOFTWARE) == b"test-gateway"
    assert message.username() is None and message.get(Attr.MESSAGE_INTEGRITY) is None
    assert client.handle(relay.challenge(message), 0.01)
    [second], _ = drain_messages(client)
    retry = relay.check(second)
    assert retry.transaction_id != message.transaction_id and retry.method == Method.ALLOCATE
    assert client.handle(relay.allocated(retry), 0.02)
    _, events = drain_messages(client)
    assert events == [Allocated(RELAYED, MAPPED)]
    assert client.allocated and client.relayed == RELAYED and client.mapped == MAPPED
    assert client.poll_timeout() == pytest.approx(0.02 + 300)


def test_the_realm_comes_from_the_servers_challenge() -> None:
    relay = Relay(realm="other.example")
    client, _ = allocated_client(relay)
    assert client.allocated


def test_wrong_password_fails_after_the_authenticated_retry() -> None:
    relay = Relay(password="not-the-password")
    client = TurnClient(SERVER, USERNAME, PASSWORD, random_bytes=counter_random())
    client.allocate(0.0)
    [first], _ = drain_messages(client)
    client.handle(relay.challenge(stun.decode(first)), 0.01)
    [second], _ = drain_messages(client)
    assert not stun.verify_integrity(second, relay.key)
    assert client.handle(relay.challenge(stun.decode(second)), 0.02)
    transmits, events = drain_messages(client)
    assert transmits == [] and len(events) == 1 and isinstance(events[0], AllocationFailed)
    assert "wrong credentials" in events[0].reason and "401" in events[0].reason
    assert client.poll_timeout() is None and not client.allocated
    assert client.state == "failed"


def test_challenge_without_nonce_fails() -> None:
    client = TurnClient(SERVER, USERNAME, PASSWORD, random_bytes=counter_random())
    client.allocate(0.0)
    [first], _ = drain_messages(client)
    client.handle(stun.encode(stun.error_response(stun.decode(first), 401, "Unauthorized")), 0.01)
    _, events = drain_messages(client)
    assert len(events) == 1 and isinstance(events[0], AllocationFailed)


@pytest.mark.parametrize(("code", "reason"), [(486, "Allocation Quota Reached"), (508, "Insufficient Capacity"),
                                              (442, "Unsupported Transport Protocol")])
def test_allocate_refusals_fail(code: int, reason: str) -> None:
    relay = Relay()
    client = TurnClient(SERVER, USERNAME, PASSWORD, random_bytes=counter_random())
    client.allocate(0.0)
    [first], _ = drain_messages(client)
    client.handle(relay.challenge(stun.decode(first)), 0.01)
    [second], _ = drain_messages(client)
    client.handle(relay.error(stun.decode(second), code, reason), 0.02)
    _, events = drain_messages(client)
    assert events == [AllocationFailed(f"refused: {code} {reason}")]


def test_allocation_mismatch_clears_the_stale_allocation_and_allocates_again() -> None:
    relay = Relay()
    client = TurnClient(SERVER, USERNAME, PASSWORD, random_bytes=counter_random())
    client.allocate(0.0)
    [first], _ = drain_messages(client)
    client.handle(relay.challenge(stun.decode(first)), 0.01)
    [second], _ = drain_messages(client)
    client.handle(relay.error(stun.decode(second), stun.ALLOCATION_MISMATCH, "Allocation Mismatch"), 0.02)
    [clear], events = drain_messages(client)
    clearing = relay.check(clear)
    assert clearing.method == Method.REFRESH and clearing.lifetime() == 0 and events == []
    client.handle(relay.ok(clearing, (Attr.LIFETIME, stun.encode_u32(0))), 0.03)
    [again], _ = drain_messages(client)
    client.handle(relay.allocated(relay.check(again)), 0.04)
    assert drain_messages(client)[1] == [Allocated(RELAYED, MAPPED)]
    # A second mismatch is not cleared again.
    client2 = TurnClient(SERVER, USERNAME, PASSWORD, random_bytes=counter_random())
    client2.allocate(0.0)
    [first], _ = drain_messages(client2)
    client2.handle(relay.challenge(stun.decode(first)), 0.01)
    for _ in range(2):
        [request], _ = drain_messages(client2)
        message = relay.check(request)
        if message.method == Method.REFRESH:
            client2.handle(relay.ok(message), 0.02)
            [request], _ = drain_messages(client2)
            message = relay.check(request)
        client2.handle(relay.error(message, stun.ALLOCATION_MISMATCH, "Allocation Mismatch"), 0.03)
    assert drain_messages(client2)[1] == [AllocationFailed("refused: 437 Allocation Mismatch")]


def test_stale_nonce_retries_with_the_new_nonce_a_bounded_number_of_times() -> None:
    relay = Relay()
    client = TurnClient(SERVER, USERNAME, PASSWORD, random_bytes=counter_random())
    client.allocate(0.0)
    [first], _ = drain_messages(client)
    client.handle(relay.challenge(stun.decode(first)), 0.01)
    [second], _ = drain_messages(client)
    relay.check(second)
    relay.nonce = b"nonce-2"
    client.handle(relay.challenge(stun.decode(second), stun.STALE_NONCE, "Stale Nonce"), 0.02)
    [third], _ = drain_messages(client)
    assert relay.check(third).nonce() == b"nonce-2"
    client.handle(relay.allocated(stun.decode(third)), 0.03)
    assert drain_messages(client)[1] == [Allocated(RELAYED, MAPPED)]

    looping = TurnClient(SERVER, USERNAME, PASSWORD, random_bytes=counter_random())
    looping.allocate(0.0)
    [request], _ = drain_messages(looping)
    looping.handle(relay.challenge(stun.decode(request)), 0.01)
    for attempt in range(4):
        [request], events = drain_messages(looping)
        assert events == []
        relay.nonce = f"n{attempt}".encode()
        looping.handle(relay.challenge(stun.decode(request), stun.STALE_NONCE, "Stale Nonce"), 0.02)
    transmits, events = drain_messages(looping)
    assert transmits == [] and events == [AllocationFailed("refused: 438 Stale Nonce")]


def test_responses_with_bad_integrity_are_ignored_and_retransmits_go_on() -> None:
    relay = Relay()
    client = TurnClient(SERVER, USERNAME, PASSWORD, random_bytes=counter_random())
    client.allocate(0.0)
    [first], _ = drain_messages(client)
    client.handle(relay.challenge(stun.decode(first)), 0.01)
    [second], _ = drain_messages(client)
    message = stun.decode(second)
    forged = stun.encode(stun.decode(relay.allocated(message)), key=b"wrong key")
    unsigned = stun.encode(stun.decode(relay.allocated(message)))
    bad_error = stun.encode(stun.error_response(message, 486, "quota"), key=b"wrong key")
    for datagram in (forged, unsigned, bad_error):
        assert client.handle(datagram, 0.02)
        assert drain_messages(client) == ([], [])
    assert client.dropped["bad_integrity"] == 3
    client.tick(0.26)
    [retransmit], _ = drain_messages(client)
    assert retransmit == second
    client.handle(relay.allocated(message), 0.3)
    assert drain_messages(client)[1] == [Allocated(RELAYED, MAPPED)]


def test_bad_fingerprint_is_dropped() -> None:
    relay = Relay()
    client = TurnClient(SERVER, USERNAME, PASSWORD, random_bytes=counter_random())
    client.allocate(0.0)
    [first], _ = drain_messages(client)
    challenge = bytearray(relay.challenge(stun.decode(first)))
    challenge[-1] ^= 1
    assert client.handle(bytes(challenge), 0.01)
    assert drain_messages(client) == ([], []) and client.dropped["bad_fingerprint"] == 1


def test_datagrams_that_are_not_ours() -> None:
    client, relay = allocated_client()
    other = stun.request(Method.ALLOCATE, bytes(12))
    assert not client.handle(relay.allocated(other), 1.0)  # unknown transaction
    assert not client.handle(stun.encode(stun.request(Method.BINDING, bytes(12))), 1.0)
    assert not client.handle(stun.encode(stun.indication(Method.BINDING, bytes(12))), 1.0)
    assert not client.handle(b"\x01\x00\x00\x00" + bytes(144), 1.0)  # WireGuard
    assert not client.handle(stun.encode_channel_data(0x4000, b"x"), 1.0)  # no channel bound
    assert not client.handle(b"\x40\x00\x00\x09x", 1.0)  # malformed ChannelData
    assert not client.handle(b"\x00\x01\x00\x04\x21\x12\xa4\x42" + bytes(12), 1.0)  # malformed STUN
    assert drain_messages(client) == ([], [])


@given(st.binary(max_size=120))
def test_handle_never_raises(data: bytes) -> None:
    client, _ = allocated_client()
    client.send(PEER, b"x", 1.0)
    client.handle(data, 1.0)
    client.handle(b"\x40\x00" + data, 1.0)  # ChannelData-looking
    padded = data + bytes(-len(data) % 4)
    for method in (0x0017, 0x0103, 0x0113, 0x0104, 0x0109):  # Data indication, responses: well-framed, any body
        client.handle(method.to_bytes(2, "big") + len(padded).to_bytes(2, "big") + b"\x21\x12\xa4\x42"
                      + bytes(12) + padded, 1.0)


# --- retransmissions and loss ----------------------------------------------------------


def test_retransmit_schedule_then_allocation_failed() -> None:
    client = TurnClient(SERVER, USERNAME, PASSWORD, random_bytes=counter_random())
    client.allocate(0.0)
    [first], _ = drain_messages(client)
    sent_at = [0.0]
    now = 0.0
    while (deadline := client.poll_timeout()) is not None:
        now = deadline
        client.tick(now)
        transmits, events = drain_messages(client)
        if events:
            break
        assert transmits == [first]
        sent_at.append(now)
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(sent_at)]
    assert gaps == [0.25, 0.5, 1.0] + [1.5] * 9
    assert len(sent_at) == 13  # the request and 12 retransmits
    assert now == pytest.approx(sent_at[-1] + 1.5)
    assert events == [AllocationFailed("no response from the relay")]
    assert client.poll_timeout() is None


def test_refresh_timing_and_lost_when_the_server_stops_answering() -> None:
    client, relay = allocated_client()
    assert client.poll_timeout() == pytest.approx(300.02)
    client.tick(300.0)
    assert drain_messages(client) == ([], [])
    client.tick(300.02)
    [refresh], _ = drain_messages(client)
    message = relay.check(refresh)
    assert message.method == Method.REFRESH and message.lifetime() is None
    client.handle(relay.ok(message, (Attr.LIFETIME, stun.encode_u32(120))), 300.1)
    assert drain_messages(client) == ([], []) and client.poll_timeout() == pytest.approx(360.1)
    client.tick(360.1)
    [refresh], _ = drain_messages(client)
    now = 360.1
    events: list[object] = []
    while not events:
        deadline = client.poll_timeout()
        assert deadline is not None
        now = deadline
        client.tick(now)
        _, events = drain_messages(client)
    assert now == pytest.approx(360.1 + 16.75)
    assert events == [Lost("the relay stopped answering (refresh timed out)")]
    assert not client.allocated and client.poll_timeout() is None
    client.send(PEER, b"x", now)
    assert drain_messages(client) == ([], [])


def test_refresh_refused_is_lost_and_stale_nonce_on_refresh_is_retried() -> None:
    client, relay = allocated_client()
    client.refresh(10.0)
    [refresh], _ = drain_messages(client)
    relay.nonce = b"nonce-2"
    client.handle(relay.challenge(stun.decode(refresh), stun.STALE_NONCE, "Stale Nonce"), 10.1)
    [again], _ = drain_messages(client)
    client.handle(relay.error(relay.check(again), stun.ALLOCATION_MISMATCH, "Allocation Mismatch"), 10.2)
    assert drain_messages(client)[1] == [Lost("refresh refused: 437 Allocation Mismatch")]


def test_allocate_again_after_loss_starts_unauthenticated() -> None:
    client, _ = allocated_client()
    client.refresh(1.0)
    drain_messages(client)
    while (deadline := client.poll_timeout()) is not None:
        client.tick(deadline)
    assert isinstance(drain_messages(client)[1][-1], Lost)
    client.allocate(30.0)
    [first], _ = drain_messages(client)
    assert stun.decode(first).method == Method.ALLOCATE and stun.decode(first).username() is None


# --- permissions, channels and data ----------------------------------------------------


def test_send_permits_binds_and_switches_to_channel_data() -> None:
    client, relay = allocated_client()
    client.send(PEER, b"first", 1.0)
    client.send(PEER, b"second", 1.0)
    data, events = drain_messages(client)
    assert events == []
    permission, bind = (relay.check(d) for d in data)
    assert permission.method == Method.CREATE_PERMISSION
    assert permission.xor_address(Attr.XOR_PEER_ADDRESS) == (PEER[0], 0)
    assert bind.method == Method.CHANNEL_BIND and bind.channel_number() == 0x4000
    assert bind.xor_address(Attr.XOR_PEER_ADDRESS) == PEER
    assert client.channel_for(PEER) is None
    # The permission arrives first: the buffered data goes out as Send indications.
    client.handle(relay.ok(permission), 1.05)
    data, _ = drain_messages(client)
    sent = requests(data)
    assert [(m.cls, m.method) for m in sent] == [(Class.INDICATION, Method.SEND)] * 2
    assert [m.data() for m in sent] == [b"first", b"second"]
    assert all(m.xor_address(Attr.XOR_PEER_ADDRESS) == PEER for m in sent)
    client.send(PEER, b"third", 1.06)
    [indication], _ = drain_messages(client)
    assert stun.decode(indication).data() == b"third"
    # The channel is bound: ChannelData from now on, 4 bytes of header.
    client.handle(relay.ok(bind), 1.1)
    assert client.channel_for(PEER) == 0x4000
    client.send(PEER, b"fourth", 1.2)
    [frame], _ = drain_messages(client)
    assert frame == stun.encode_channel_data(0x4000, b"fourth")
    # And in the other direction.
    assert client.handle(stun.encode_channel_data(0x4000, b"reply") + b"\x00\x00\x00", 1.3)
    tid = bytes(range(12))
    data_indication = stun.encode(stun.indication(Method.DATA, tid, (Attr.XOR_PEER_ADDRESS,
                                                                      stun.encode_xor_address(PEER, tid)),
                                                  (Attr.DATA, b"via indication")))
    assert client.handle(data_indication, 1.4)
    assert drain_messages(client)[1] == [Received(PEER, b"reply"), Received(PEER, b"via indication")]
    # A second peer gets the next channel.
    other = ("203.0.113.6", 1)
    client.send(other, b"x", 2.0)
    data, _ = drain_messages(client)
    assert [m.channel_number() for m in requests(data) if m.method == Method.CHANNEL_BIND] == [0x4001]


def test_channel_bound_before_permission_flushes_as_channel_data() -> None:
    client, relay = allocated_client()
    client.send(PEER, b"early", 1.0)
    permission, bind = (relay.check(d) for d in drain_messages(client)[0])
    client.handle(relay.ok(bind), 1.1)
    [frame], _ = drain_messages(client)
    assert frame == stun.encode_channel_data(0x4000, b"early")
    client.handle(relay.ok(permission), 1.2)
    assert drain_messages(client) == ([], [])


def test_permission_and_channel_refresh_timing() -> None:
    client, relay = allocated_client()
    client.permit(PEER[0], 1.0)
    client.permit(PEER[0], 1.0)  # idempotent
    [permission] = [relay.check(d) for d in drain_messages(client)[0]]
    client.handle(relay.ok(permission), 1.0)
    client.send(PEER, b"x", 2.0)
    data, _ = drain_messages(client)
    bind = next(m for m in requests(data) if m.method == Method.CHANNEL_BIND)
    assert [m.data() for m in requests(data) if m.cls == Class.INDICATION] == [b"x"]
    client.handle(relay.ok(bind), 2.0)
    assert client.poll_timeout() == pytest.approx(241.0)
    client.tick(241.0)
    [again] = [relay.check(d) for d in drain_messages(client)[0]]
    assert again.method == Method.CREATE_PERMISSION and again.xor_address(Attr.XOR_PEER_ADDRESS) == (PEER[0], 0)
    client.send(PEER, b"during refresh", 241.1)
    assert drain_messages(client)[0] == [stun.encode_channel_data(0x4000, b"during refresh")]
    client.handle(relay.ok(again), 241.1)
    assert client.poll_timeout() == pytest.approx(300.02)  # the allocation refresh
    client.tick(300.02)
    [refresh] = [relay.check(d) for d in drain_messages(client)[0]]
    client.handle(relay.ok(refresh, (Attr.LIFETIME, stun.encode_u32(600))), 300.03)
    assert client.poll_timeout() == pytest.approx(302.0)  # the channel binding, before its 10 min
    client.tick(302.0)
    [rebind] = [relay.check(d) for d in drain_messages(client)[0]]
    assert rebind.method == Method.CHANNEL_BIND and rebind.channel_number() == 0x4000
    client.handle(relay.ok(rebind), 302.1)
    assert client.poll_timeout() == pytest.approx(481.1)


def test_channel_bind_refused_falls_back_to_send_indications() -> None:
    client, relay = allocated_client()
    client.send(PEER, b"x", 1.0)
    permission, bind = (relay.check(d) for d in drain_messages(client)[0])
    client.handle(relay.ok(permission), 1.1)
    client.handle(relay.error(bind, stun.BAD_REQUEST, "Bad Request"), 1.1)
    drain_messages(client)
    client.send(PEER, b"y", 1.2)
    [indication] = requests(drain_messages(client)[0])
    assert indication.cls == Class.INDICATION and indication.data() == b"y"
    assert client.channel_for(PEER) is None


def test_permission_refused_drops_the_buffered_data() -> None:
    client, relay = allocated_client()
    client.send(PEER, b"x", 1.0)
    permission, _ = (relay.check(d) for d in drain_messages(client)[0])
    client.handle(relay.error(permission, 403, "Forbidden"), 1.1)
    assert drain_messages(client) == ([], [])
    assert client.dropped["no_permission"] == 1


def test_permission_timeout_is_lost() -> None:
    client, _ = allocated_client(timings=TurnTimings(initial_rto=0.1, max_rto=0.1, max_retransmits=2))
    client.permit(PEER[0], 1.0)
    assert len(drain_messages(client)[0]) == 1
    events: list[object] = []
    while not events and (deadline := client.poll_timeout()) is not None:
        client.tick(deadline)
        _, events = drain_messages(client)
    assert deadline == pytest.approx(1.3)
    assert events == [Lost("the relay stopped answering (permission timed out)")]


def test_peer_of_the_other_family_is_not_relayed() -> None:
    client, _ = allocated_client()
    client.send(("2001:db8::5", 1), b"x", 1.0)
    client.permit("2001:db8::5", 1.0)
    client.permit("not an ip", 1.0)
    assert drain_messages(client) == ([], []) and client.dropped["family_mismatch"] == 1


def test_permits_before_the_allocation_go_out_after_it() -> None:
    relay = Relay()
    client = TurnClient(SERVER, USERNAME, PASSWORD, random_bytes=counter_random())
    client.allocate(0.0)
    client.permit(PEER[0], 0.0)
    client.send(PEER, b"dropped", 0.0)
    [first], _ = drain_messages(client)
    client.handle(relay.challenge(stun.decode(first)), 0.01)
    [second], _ = drain_messages(client)
    client.handle(relay.allocated(stun.decode(second)), 0.02)
    data, events = drain_messages(client)
    assert events == [Allocated(RELAYED, MAPPED)]
    assert [m.method for m in requests(data)] == [Method.CREATE_PERMISSION]
    assert client.dropped["not_allocated"] == 1


def test_revoke_stops_refreshing() -> None:
    client, relay = allocated_client()
    client.send(PEER, b"x", 1.0)
    for message in [relay.check(d) for d in drain_messages(client)[0]]:
        client.handle(relay.ok(message), 1.1)
    drain_messages(client)
    client.revoke(PEER[0])
    assert client.channel_for(PEER) is None
    assert client.poll_timeout() == pytest.approx(300.02)
    assert not client.handle(stun.encode_channel_data(0x4000, b"late"), 2.0)


# --- release ---------------------------------------------------------------------------


def test_release_sends_lifetime_zero_and_then_nothing() -> None:
    client, relay = allocated_client()
    client.send(PEER, b"x", 1.0)
    drain_messages(client)
    client.release(2.0)
    [release], events = drain_messages(client)
    message = relay.check(release)
    assert message.method == Method.REFRESH and message.lifetime() == 0 and events == []
    assert not client.allocated
    client.send(PEER, b"y", 2.1)
    client.permit("203.0.113.9", 2.1)
    client.refresh(2.1)
    assert drain_messages(client) == ([], [])
    client.tick(2.25)
    assert drain_messages(client)[0] == [release]  # the release itself is retransmitted
    assert client.handle(relay.ok(message, (Attr.LIFETIME, stun.encode_u32(0))), 2.3)
    assert client.poll_timeout() is None
    for now in (400.0, 1000.0):
        client.tick(now)
    assert drain_messages(client) == ([], [])
    client.release(1001.0)
    assert drain_messages(client) == ([], [])


def test_release_that_is_never_answered_is_silent() -> None:
    client, _ = allocated_client()
    client.release(1.0)
    while (deadline := client.poll_timeout()) is not None:
        client.tick(deadline)
    transmits, events = drain_messages(client)
    assert len(transmits) == 13 and events == []


def test_release_is_final() -> None:
    client = TurnClient(SERVER, USERNAME, PASSWORD)
    client.release(0.0)
    client.allocate(0.0)
    assert client.drain() == ([], []) and client.state == "released"


# --- secrets ---------------------------------------------------------------------------


def test_no_secret_in_reprs() -> None:
    client, relay = allocated_client()
    text = repr(client) + repr(vars(client))
    assert PASSWORD not in text and relay.key.hex() not in text and repr(relay.key) not in text
    assert PASSWORD not in repr(client._credentials) and repr(relay.key) not in repr(client._credentials)
    assert USERNAME in repr(client)


def test_an_ipv6_server_is_asked_for_an_ipv6_relayed_address() -> None:
    for server, family in ((SERVER, None), (("2001:db8::10", 3478), bytes([2, 0, 0, 0]))):
        client = TurnClient(server, USERNAME, PASSWORD, random_bytes=counter_random())  # type: ignore[arg-type]
        client.allocate(0.0)
        [transmit], _ = client.drain()
        assert stun.decode(transmit.data).get(Attr.REQUESTED_ADDRESS_FAMILY) == family
