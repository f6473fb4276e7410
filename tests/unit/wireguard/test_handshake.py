"""Handshakes and transport between two in-memory devices, and every way they are refused."""

from __future__ import annotations

import pytest

from gateway_pkg.wireguard import DeviceOutput, Dropped, HandshakeCompleted, HandshakeFailed, WireGuardDevice, keys
from gateway_pkg.wireguard.messages import (
    HANDSHAKE_INITIATION_LEN,
    HANDSHAKE_RESPONSE_LEN,
    TRANSPORT_HEADER,
)
from tests.wireguard_support import (
    VECTOR_PRESHARED_KEY,
    VECTOR_RESPONDER_PRIVATE,
    vector_initiator,
)

from .harness import CLIENT_ADDR, GATEWAY_ADDR, Pair, completed, make_pair, sample_packet

KNOWN_INITIATION = (
    "010000008be80e2c95857087ac1b1f3e4c7905b023d7a01f08b8639a3148008a19099efea1e42b4ef08e3077"
    "3f24ab820e0e20ab412611943a032133fb49a218f58f706750f7e17243cfca59d1baf0cdfb7e9620213e0e0f"
    "b2a62bf30f90e968d3c47e7c7ccef191c3aa4d32eae69dbe1d49af67e0e89c8498a20a13d5591163860c76a6"
    "00000000000000000000000000000000"
)


def test_client_initiates_and_both_sides_complete(pair: Pair) -> None:
    initiation = pair.client.initiate_handshake(pair.gateway.public_key, pair.now)
    assert len(initiation.datagrams[0][0]) == HANDSHAKE_INITIATION_LEN
    response = pair.to_gateway(initiation)
    assert len(response.datagrams[0][0]) == HANDSHAKE_RESPONSE_LEN
    assert completed(response) == []  # the responder waits for confirmation
    confirmation = pair.to_client(response)
    assert completed(confirmation) == [HandshakeCompleted(pair.gateway.public_key, True)]
    assert len(confirmation.datagrams) == 1  # keepalive confirming the session
    confirmed = pair.to_gateway(confirmation)
    assert completed(confirmed) == [HandshakeCompleted(pair.client.public_key, False)]
    assert confirmed.packets == [] and confirmed.events == completed(confirmed)


def test_gateway_can_initiate_too(pair: Pair) -> None:
    pair.gateway.set_peer_endpoint(pair.client.public_key, CLIENT_ADDR)
    initiation = pair.gateway.initiate_handshake(pair.client.public_key, pair.now)
    response = pair.to_client(initiation)
    confirmation = pair.to_gateway(response)
    assert completed(confirmation) == [HandshakeCompleted(pair.client.public_key, True)]
    done = pair.to_client(confirmation)
    assert completed(done) == [HandshakeCompleted(pair.gateway.public_key, False)]


@pytest.mark.parametrize("size", [28, 29, 84, 1000, 1279, 1280, 1420])
def test_transport_roundtrip_both_ways_with_padding(pair: Pair, size: int) -> None:
    pair.handshake()
    packet = sample_packet(size=size)
    out = pair.client.send_packet(pair.gateway.public_key, packet, pair.now)
    [(datagram, destination)] = out.datagrams
    assert destination == GATEWAY_ADDR
    assert len(datagram) == 32 + -(-size // 16) * 16
    received = pair.to_gateway(out)
    assert received.packets == [(pair.client.public_key, packet)]
    back = pair.to_client(pair.gateway.send_packet(pair.client.public_key, packet, pair.now))
    assert back.packets == [(pair.gateway.public_key, packet)]


def test_packets_sent_before_the_handshake_are_queued_then_delivered(pair: Pair) -> None:
    first = pair.client.send_packet(pair.gateway.public_key, sample_packet(sequence=1), pair.now)
    second = pair.client.send_packet(pair.gateway.public_key, sample_packet(sequence=2), pair.now)
    assert len(first.datagrams) == 1 and second.datagrams == []  # one initiation only
    outputs = pair.converge(first, towards_gateway=True)
    delivered = [p for out in outputs for _, p in out.packets]
    assert delivered == [sample_packet(sequence=1), sample_packet(sequence=2)]


def test_psk_mismatch_fails_the_handshake() -> None:
    pair = make_pair(gateway_psk=bytes(32))
    response = pair.to_gateway(pair.client.initiate_handshake(pair.gateway.public_key, pair.now))
    result = pair.to_client(response)
    assert result.dropped() == ["decrypt"] and completed(result) == []
    assert result.datagrams == []


def test_unknown_peer_is_dropped(pair: Pair) -> None:
    pair.gateway.remove_peer(pair.client.public_key)
    assert not pair.gateway.has_peer(pair.client.public_key)
    out = pair.to_gateway(pair.client.initiate_handshake(pair.gateway.public_key, pair.now))
    assert out.dropped() == ["unknown_peer"] and out.datagrams == []


def test_initiation_for_another_key_fails_mac1(pair: Pair) -> None:
    stranger = keys.public_key(keys.generate_private_key())
    pair.client.add_peer(stranger, pair.psk)
    pair.client.set_peer_endpoint(stranger, GATEWAY_ADDR)
    out = pair.to_gateway(pair.client.initiate_handshake(stranger, pair.now))
    assert out.dropped() == ["mac1"]


def test_wrong_static_key_with_valid_mac1_is_refused() -> None:
    """A device that knows the gateway's public key but is not its peer: unknown_peer."""
    pair = make_pair()
    intruder = WireGuardDevice(keys.generate_private_key(), under_load=lambda: False)
    intruder.add_peer(pair.gateway.public_key, pair.psk)
    intruder.set_peer_endpoint(pair.gateway.public_key, GATEWAY_ADDR)
    out = pair.to_gateway(intruder.initiate_handshake(pair.gateway.public_key, pair.now))
    assert out.dropped() == ["unknown_peer"]


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "malformed"),
        (b"\x01\x00\x00", "malformed"),
        (b"\x01\x00\x00\x00" + bytes(100), "malformed"),
        (b"\x02\x00\x00\x00" + bytes(87), "malformed"),
        (b"\x03\x00\x00\x00" + bytes(59), "malformed"),
        (b"\x04\x00\x00\x00" + bytes(12), "malformed"),
        (b"\x04\x00\x00\x00" + bytes(27), "malformed"),
        (b"\x05\x00\x00\x00" + bytes(60), "malformed"),
        (b"\x01\x01\x00\x00" + bytes(144), "malformed"),  # reserved bytes must be zero
        (b"\x01\x00\x00\x00" + bytes(144), "mac1"),
        (b"\x02\x00\x00\x00" + bytes(88), "mac1"),
        (b"\x03\x00\x00\x00" + bytes(60), "unknown_index"),
        (b"\x04\x00\x00\x00" + bytes(28), "unknown_index"),
    ],
)
def test_bad_datagrams_are_dropped_with_reason(pair: Pair, datagram: bytes, reason: str) -> None:
    out = pair.gateway.receive_datagram(datagram, CLIENT_ADDR, pair.now)
    assert out.dropped() == [reason]
    assert out.datagrams == [] and out.packets == []


def test_truncated_handshake_messages_are_malformed(pair: Pair) -> None:
    initiation = bytes(pair.client.initiate_handshake(pair.gateway.public_key, pair.now).datagrams[0][0])
    for cut in (4, 32, 116, 147):
        out = pair.gateway.receive_datagram(initiation[:cut], CLIENT_ADDR, pair.now)
        assert out.dropped() == ["malformed"]
    assert pair.gateway.receive_datagram(initiation + b"\x00", CLIENT_ADDR, pair.now).dropped() == ["malformed"]


def test_replayed_transport_and_tampered_transport(pair: Pair) -> None:
    pair.handshake()
    out = pair.client.send_packet(pair.gateway.public_key, sample_packet(), pair.now)
    datagram = bytes(out.datagrams[0][0])
    assert pair.gateway.receive_datagram(datagram, CLIENT_ADDR, pair.now).packets
    assert pair.gateway.receive_datagram(datagram, CLIENT_ADDR, pair.now).dropped() == ["replay"]
    tampered = bytearray(pair.client.send_packet(pair.gateway.public_key, sample_packet(), pair.now).datagrams[0][0])
    tampered[-1] ^= 1
    out = pair.gateway.receive_datagram(bytes(tampered), CLIENT_ADDR, pair.now)
    assert out.dropped() == ["decrypt"]
    # A forged packet must not consume its counter: the genuine one still gets through.
    tampered[-1] ^= 1
    assert pair.gateway.receive_datagram(bytes(tampered), CLIENT_ADDR, pair.now).packets


def test_transport_to_unknown_index_is_dropped(pair: Pair) -> None:
    pair.handshake()
    datagram = bytearray(pair.client.send_packet(pair.gateway.public_key, sample_packet(), pair.now).datagrams[0][0])
    _, receiver, counter = TRANSPORT_HEADER.unpack_from(datagram)
    TRANSPORT_HEADER.pack_into(datagram, 0, 4, receiver ^ 0xFFFF, counter)
    out = pair.gateway.receive_datagram(bytes(datagram), CLIENT_ADDR, pair.now)
    assert out.dropped() == ["unknown_index"]


def test_replayed_initiation_is_refused_by_timestamp(pair: Pair) -> None:
    initiation = pair.client.initiate_handshake(pair.gateway.public_key, pair.now)
    assert pair.to_gateway(initiation).datagrams
    pair.now += 1
    assert pair.to_gateway(initiation).dropped() == ["replay"]


def test_initiation_flood_from_one_peer_is_rate_limited() -> None:
    pair = make_pair()
    first = pair.client.initiate_handshake(pair.gateway.public_key, pair.now)
    assert pair.to_gateway(first).datagrams
    # A second instance with the same identity sends a fresher initiation 1 ms later; its own
    # clock runs a second ahead so only the rate limit, not the timestamp, can refuse it.
    other = make_pair(seed=b"pair")
    other.now = pair.now + 1
    second = other.client.initiate_handshake(pair.gateway.public_key, other.now)
    pair.now += 0.001
    assert pair.to_gateway(second).dropped() == ["rate_limited"]


def test_data_before_any_handshake_is_not_accepted(pair: Pair) -> None:
    out = pair.gateway.send_packet(pair.client.public_key, sample_packet(), pair.now)
    assert out.dropped() == ["no_endpoint"]
    assert pair.gateway.send_packet(b"\x01" * 32, b"", pair.now).dropped() == ["unknown_peer"]


def test_roaming_follows_the_latest_authenticated_packet(pair: Pair) -> None:
    pair.handshake()
    assert pair.gateway.peer_endpoint(pair.client.public_key) == CLIENT_ADDR
    roamed = ("203.0.113.9", 51000)
    out = pair.client.send_packet(pair.gateway.public_key, sample_packet(), pair.now)
    assert pair.gateway.receive_datagram(bytes(out.datagrams[0][0]), roamed, pair.now).packets
    assert pair.gateway.peer_endpoint(pair.client.public_key) == roamed
    reply = pair.gateway.send_packet(pair.client.public_key, sample_packet(), pair.now)
    assert reply.datagrams[0][1] == roamed
    # An unauthenticated packet from elsewhere does not move the endpoint.
    forged = bytearray(pair.client.send_packet(pair.gateway.public_key, sample_packet(), pair.now).datagrams[0][0])
    forged[20] ^= 0xFF
    pair.gateway.receive_datagram(bytes(forged), ("192.0.2.66", 1), pair.now)
    assert pair.gateway.peer_endpoint(pair.client.public_key) == roamed


def test_add_peer_is_idempotent_and_a_new_psk_resets_the_session(pair: Pair) -> None:
    pair.handshake()
    pair.gateway.add_peer(pair.client.public_key, pair.psk)
    out = pair.client.send_packet(pair.gateway.public_key, sample_packet(), pair.now)
    assert pair.to_gateway(out).packets  # session kept
    pair.gateway.add_peer(pair.client.public_key, bytes(32))
    out = pair.client.send_packet(pair.gateway.public_key, sample_packet(), pair.now)
    assert pair.to_gateway(out).dropped() == ["unknown_index"]


def test_add_peer_validates_keys(pair: Pair) -> None:
    with pytest.raises(keys.InvalidKey):
        pair.gateway.add_peer(b"short", pair.psk)
    with pytest.raises(keys.InvalidKey):
        pair.gateway.add_peer(pair.gateway.public_key, pair.psk)


def test_inner_packet_that_is_not_ip_is_dropped(pair: Pair) -> None:
    pair.handshake()
    out = pair.client.send_packet(pair.gateway.public_key, b"\x00" * 40, pair.now)
    assert pair.to_gateway(out).dropped() == ["inner_malformed"]


def test_known_answer_initiation_bytes() -> None:
    """Pinned once from this implementation; the interop test proves wireguard-go accepts it."""
    _, initiation = vector_initiator()
    assert initiation.hex() == KNOWN_INITIATION
    responder = WireGuardDevice(VECTOR_RESPONDER_PRIVATE, under_load=lambda: False)
    initiator_key = keys.public_key(bytes.fromhex("c8d5a95c5d6a7f1d2b0e3e4a0f3b2c1d4e5f60718293a4b5c6d7e8f90a1b2c5d"))
    responder.add_peer(initiator_key, VECTOR_PRESHARED_KEY)
    out = responder.receive_datagram(initiation, CLIENT_ADDR, 0.0)
    assert len(out.datagrams) == 1 and not [e for e in out.events if isinstance(e, Dropped)]


def test_simultaneous_initiations_both_complete_and_traffic_flows(pair: Pair) -> None:
    pair.gateway.set_peer_endpoint(pair.client.public_key, CLIENT_ADDR)
    from_client = pair.client.initiate_handshake(pair.gateway.public_key, pair.now)
    from_gateway = pair.gateway.initiate_handshake(pair.client.public_key, pair.now)
    pair.now += 0.05
    response_to_client = pair.to_gateway(from_client)
    response_to_gateway = pair.to_client(from_gateway)
    pair.converge(response_to_client, towards_gateway=False)
    pair.converge(response_to_gateway, towards_gateway=True)
    for n in range(3):
        out = pair.to_gateway(pair.client.send_packet(pair.gateway.public_key, sample_packet(n), pair.now))
        assert out.packets == [(pair.client.public_key, sample_packet(n))]
        back = pair.to_client(pair.gateway.send_packet(pair.client.public_key, sample_packet(n), pair.now))
        assert back.packets == [(pair.gateway.public_key, sample_packet(n))]


def test_packets_in_flight_on_the_old_session_survive_a_rekey(pair: Pair) -> None:
    pair.handshake()
    in_flight = pair.client.send_packet(pair.gateway.public_key, sample_packet(1), pair.now)
    pair.now += 6
    pair.handshake()  # a new session replaces the current one on both sides
    assert pair.to_gateway(in_flight).packets == [(pair.client.public_key, sample_packet(1))]


def test_ipv6_inner_packets_are_trimmed_by_payload_length(pair: Pair) -> None:
    pair.handshake()
    payload = b"\x00" * 13
    header = bytes([0x60, 0, 0, 0]) + len(payload).to_bytes(2, "big") + bytes([17, 64])
    packet = header + bytes(16) + bytes(15) + b"\x01" + payload
    out = pair.to_gateway(pair.client.send_packet(pair.gateway.public_key, packet, pair.now))
    assert out.packets == [(pair.client.public_key, packet)]


def test_ipv6_endpoints_work(pair: Pair) -> None:
    pair.client_addr = ("2001:db8::7", 40000)
    pair.gateway_load[0] = True  # the cookie binds to the IPv6 address too
    reply = pair.to_gateway(pair.client.initiate_handshake(pair.gateway.public_key, pair.now))
    assert reply.dropped() == ["cookie_required"]
    pair.to_client(reply)
    pair.now += 5.34
    pair.converge(pair.client.tick(pair.now), towards_gateway=True)
    assert pair.gateway.peer_endpoint(pair.client.public_key) == ("2001:db8::7", 40000)


def test_views_of_reused_buffers_are_accepted_everywhere(pair: Pair) -> None:
    """The data plane may pass memoryviews into recv_into/readv buffers it reuses."""
    initiation = pair.client.initiate_handshake(pair.gateway.public_key, pair.now)
    buffer = bytearray(2048)
    datagram = initiation.datagrams[0][0]
    buffer[: len(datagram)] = datagram
    response = pair.gateway.receive_datagram(memoryview(buffer)[: len(datagram)], CLIENT_ADDR, pair.now)  # type: ignore[arg-type]
    pair.converge(response, towards_gateway=False)
    packet = bytearray(sample_packet(size=1001))
    staged_first = pair.gateway.send_packet(pair.client.public_key, memoryview(packet), pair.now)  # type: ignore[arg-type]
    sent = pair.client.send_packet(pair.gateway.public_key, memoryview(packet), pair.now)  # type: ignore[arg-type]
    [(datagram, _)] = sent.datagrams
    buffer[: len(datagram)] = datagram
    out = pair.gateway.receive_datagram(memoryview(buffer)[: len(datagram)], CLIENT_ADDR, pair.now)  # type: ignore[arg-type]
    assert out.packets == [(pair.client.public_key, bytes(packet))]
    assert staged_first.datagrams  # the gateway's packet went out (it has a session now)


def test_staged_packets_are_copied_from_the_callers_buffer(pair: Pair) -> None:
    buffer = bytearray(sample_packet(1))
    first = pair.client.send_packet(pair.gateway.public_key, memoryview(buffer), pair.now)  # type: ignore[arg-type]
    buffer[:] = sample_packet(2)  # the caller reuses its buffer before the handshake completes
    outputs = pair.converge(first, towards_gateway=True)
    assert [p for out in outputs for _, p in out.packets] == [sample_packet(1)]


def test_batch_entry_points_match_single_calls(pair: Pair) -> None:
    pair.handshake()
    packets = [sample_packet(n) for n in range(5)]
    sent = pair.client.send_packets(pair.gateway.public_key, packets, pair.now)
    assert len(sent.datagrams) == 5
    batch = [(d, CLIENT_ADDR) for d, _ in sent.datagrams] + [(b"junk", CLIENT_ADDR)]
    received = pair.gateway.receive_datagrams(batch, pair.now)
    assert [p for _, p in received.packets] == packets
    assert received.dropped() == ["malformed"]


def failures(out: DeviceOutput) -> list[str]:
    return [e.reason for e in out.events if isinstance(e, HandshakeFailed)]


def test_a_session_the_client_never_uses_is_an_unconfirmed_handshake_failure() -> None:
    # A preshared key that differs: the client cannot read our response and initiates again.
    pair = make_pair(gateway_psk=bytes(32))
    first = pair.to_gateway(pair.client.initiate_handshake(pair.gateway.public_key, pair.now))
    assert first.datagrams and failures(first) == []
    pair.now += 6  # past REKEY_TIMEOUT: the client retransmits its initiation
    retry = pair.client.tick(pair.now)
    assert retry.datagrams
    assert failures(pair.to_gateway(retry)) == ["unconfirmed"]


def test_replayed_and_too_frequent_initiations_are_handshake_failures_of_that_peer(pair: Pair) -> None:
    initiation = pair.client.initiate_handshake(pair.gateway.public_key, pair.now)
    assert failures(pair.to_gateway(initiation)) == []
    pair.now += 1
    replay = pair.to_gateway(initiation)
    assert failures(replay) == ["replay"]
    assert [e.peer for e in replay.events if isinstance(e, HandshakeFailed)] == [pair.client.public_key]


def test_a_completed_handshake_is_no_failure(pair: Pair) -> None:
    assert all(failures(out) == [] for out in pair.handshake())
