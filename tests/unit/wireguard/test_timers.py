"""Timers with injected constants: rekey, reject, retransmit, keepalives, zeroing."""

from __future__ import annotations

import struct

from gateway_pkg.wireguard import (
    HandshakeCompleted,
    HandshakeFailed,
    PeerSessionExpired,
    TimerConfig,
)
from gateway_pkg.wireguard.messages import MESSAGE_HANDSHAKE_INITIATION, MESSAGE_TRANSPORT_DATA

from .harness import Pair, all_events, completed, make_pair, sample_packet

JITTER = 0.334  # just above the maximum retransmit jitter


def kinds(out_datagrams: list[tuple[bytes, tuple[str, int]]]) -> list[int]:
    return [bytes(d)[0] for d, _ in out_datagrams]


def test_whitepaper_defaults_with_firezone_rekey_attempt_time() -> None:
    config = TimerConfig()
    assert config.rekey_after_messages == 2**60
    assert config.reject_after_messages == 2**64 - 2**13 - 1
    assert (config.rekey_after_time, config.reject_after_time) == (120.0, 180.0)
    assert (config.rekey_timeout, config.keepalive_timeout) == (5.0, 10.0)
    assert config.rekey_attempt_time == 15.0


def test_initiator_rekeys_after_rekey_after_time_and_traffic_continues() -> None:
    pair = make_pair(timers=TimerConfig(rekey_after_time=30, reject_after_time=60))
    pair.handshake()
    pair.now += 29
    out = pair.client.send_packet(pair.gateway.public_key, sample_packet(), pair.now)
    assert kinds(out.datagrams) == [MESSAGE_TRANSPORT_DATA]
    pair.now += 1.5
    out = pair.client.send_packet(pair.gateway.public_key, sample_packet(2), pair.now)
    assert kinds(out.datagrams) == [MESSAGE_TRANSPORT_DATA, MESSAGE_HANDSHAKE_INITIATION]
    outputs = pair.converge(out, towards_gateway=True)
    assert [p for o in outputs for _, p in o.packets] == [sample_packet(2)]
    events = all_events(outputs)
    assert HandshakeCompleted(pair.gateway.public_key, True) in events
    assert HandshakeCompleted(pair.client.public_key, False) in events
    # Past the old session's reject time, traffic flows on the new one in both directions.
    pair.now += 40
    out = pair.to_gateway(pair.client.send_packet(pair.gateway.public_key, sample_packet(3), pair.now))
    assert out.packets == [(pair.client.public_key, sample_packet(3))]
    back = pair.to_client(pair.gateway.send_packet(pair.client.public_key, sample_packet(4), pair.now))
    assert back.packets == [(pair.gateway.public_key, sample_packet(4))]


def test_responder_leaves_rekeying_to_a_conforming_initiator() -> None:
    pair = make_pair(timers=TimerConfig(rekey_after_time=30, reject_after_time=60))
    pair.handshake()
    pair.now += 31
    out = pair.gateway.send_packet(pair.client.public_key, sample_packet(), pair.now)
    assert kinds(out.datagrams) == [MESSAGE_TRANSPORT_DATA]
    # The initiator's deadlines (30 s on send, 45 s on receive) both come before the
    # responder's own (REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT = 50 s).
    pair.now += 18  # 49 s
    out = pair.gateway.send_packet(pair.client.public_key, sample_packet(), pair.now)
    assert kinds(out.datagrams) == [MESSAGE_TRANSPORT_DATA]


def test_responder_rekeys_itself_when_the_initiator_does_not() -> None:
    """A client with default timers never rekeys within a gateway's shorter lifetime."""
    pair = make_pair(
        timers=TimerConfig(rekey_after_time=30, reject_after_time=60),  # the gateway
        client_timers=TimerConfig(),
    )
    pair.handshake()
    pair.now += 50
    out = pair.gateway.send_packet(pair.client.public_key, sample_packet(), pair.now)
    assert kinds(out.datagrams) == [MESSAGE_TRANSPORT_DATA, MESSAGE_HANDSHAKE_INITIATION]
    events = all_events(pair.converge(out, towards_gateway=False))
    assert HandshakeCompleted(pair.client.public_key, True) in events
    pair.now += 15  # past the old session's 60 s: traffic flows on the new one
    out = pair.to_gateway(pair.client.send_packet(pair.gateway.public_key, sample_packet(2), pair.now))
    assert out.packets == [(pair.client.public_key, sample_packet(2))]


def test_data_on_an_expired_session_makes_the_receiver_offer_a_new_one() -> None:
    pair = make_pair(
        timers=TimerConfig(rekey_after_time=30, reject_after_time=60),
        client_timers=TimerConfig(),
    )
    pair.handshake()
    pair.now += 61  # the gateway never sent, so it never rekeyed; the client still may send
    out = pair.to_gateway(pair.client.send_packet(pair.gateway.public_key, sample_packet(1), pair.now))
    assert out.dropped() == ["expired"]
    assert kinds(out.datagrams) == [MESSAGE_HANDSHAKE_INITIATION]
    pair.converge(out, towards_gateway=False)
    again = pair.to_gateway(pair.client.send_packet(pair.gateway.public_key, sample_packet(2), pair.now))
    assert again.packets == [(pair.client.public_key, sample_packet(2))]


def test_initiator_that_only_receives_rekeys_before_reject_after_time() -> None:
    config = TimerConfig(rekey_after_time=30, reject_after_time=60)
    pair = make_pair(timers=config)
    pair.handshake()
    pair.now += 60 - 10 - 5  # REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
    out = pair.to_client(pair.gateway.send_packet(pair.client.public_key, sample_packet(), pair.now))
    assert out.packets and MESSAGE_HANDSHAKE_INITIATION in kinds(out.datagrams)


def test_session_rejected_after_reject_after_time() -> None:
    pair = make_pair(timers=TimerConfig(rekey_after_time=30, reject_after_time=60))
    pair.handshake()
    stale = pair.client.send_packet(pair.gateway.public_key, sample_packet(), pair.now)
    pair.now += 60
    assert pair.to_gateway(stale).dropped() == ["expired"]
    expiry = pair.gateway.tick(pair.now)
    assert PeerSessionExpired(pair.client.public_key) in expiry.events
    assert pair.gateway.tick(pair.now + 1).events == []  # reported once
    # Sending now needs a new session: the packet waits and a handshake starts.
    out = pair.client.send_packet(pair.gateway.public_key, sample_packet(), pair.now)
    assert kinds(out.datagrams) == [MESSAGE_HANDSHAKE_INITIATION]
    outputs = pair.converge(out, towards_gateway=True)
    assert [p for o in outputs for _, p in o.packets] == [sample_packet()]


def test_counter_exhaustion_rekeys_then_rejects() -> None:
    config = TimerConfig(rekey_after_messages=5, reject_after_messages=8)
    pair = make_pair(timers=config)
    pair.handshake()  # the confirming keepalive used counter 0
    pair.now += 6  # past REKEY_TIMEOUT, which spaces initiations
    sent = []
    for n in range(1, 8):
        out = pair.client.send_packet(pair.gateway.public_key, sample_packet(n), pair.now)
        sent.append(out)
    assert [kinds(o.datagrams) for o in sent[:4]] == [[MESSAGE_TRANSPORT_DATA]] * 3 + [
        [MESSAGE_TRANSPORT_DATA, MESSAGE_HANDSHAKE_INITIATION]
    ]
    assert all(kinds(o.datagrams) == [MESSAGE_TRANSPORT_DATA] for o in sent[4:])  # counters 5..7
    # Counter 8 reached REJECT_AFTER_MESSAGES: the packet is queued, not sent.
    out = pair.client.send_packet(pair.gateway.public_key, sample_packet(8), pair.now)
    assert MESSAGE_TRANSPORT_DATA not in kinds(out.datagrams)
    for n, o in enumerate(sent, start=1):
        assert pair.to_gateway(o).packets[0][1] == sample_packet(n)


def test_receiver_rejects_counters_at_reject_after_messages() -> None:
    # A sender that ignores the limit: the client's own limits are far away.
    pair = make_pair(
        timers=TimerConfig(rekey_after_messages=5, reject_after_messages=8),
        client_timers=TimerConfig(rekey_after_messages=1000, reject_after_messages=1000),
    )
    pair.handshake()  # the confirming keepalive used counter 0
    sent = [pair.client.send_packet(pair.gateway.public_key, sample_packet(n), pair.now) for n in range(1, 9)]
    [(datagram, _)] = sent[-1].datagrams
    assert struct.unpack_from("<Q", datagram, 8)[0] == 8
    out = pair.gateway.receive_datagram(bytes(datagram), pair.client_addr, pair.now)
    assert out.dropped() == ["expired"]


def test_handshake_retransmits_until_rekey_attempt_time_then_gives_up() -> None:
    pair = make_pair()  # REKEY_TIMEOUT 5 s, REKEY_ATTEMPT_TIME 15 s
    start = pair.now
    out = pair.client.send_packet(pair.gateway.public_key, sample_packet(), start)
    initiations = [o for o in [out] if o.datagrams]
    for step in range(1, 40):
        pair.now = start + step * 0.5
        tick = pair.client.tick(pair.now)
        if tick.datagrams:
            assert kinds(tick.datagrams) == [MESSAGE_HANDSHAKE_INITIATION]
            initiations.append(tick)
        if any(isinstance(e, HandshakeFailed) for e in tick.events):
            break
    else:
        raise AssertionError("never gave up")
    assert 15.0 <= pair.now - start < 15.0 + 5 + JITTER
    assert len(initiations) == 3  # at 0 s, ~5 s, ~10 s
    assert tick.dropped() == ["handshake_timeout"]  # the queued packet is discarded
    # Each retransmission is a fresh initiation (new ephemeral, new sender index).
    assert len({bytes(o.datagrams[0][0])[4:40] for o in initiations}) == 3
    assert pair.client.tick(pair.now + 100).datagrams == []


def test_keepalive_after_keepalive_timeout_when_we_have_nothing_to_send(pair: Pair) -> None:
    pair.handshake()
    out = pair.client.send_packet(pair.gateway.public_key, sample_packet(), pair.now)
    assert pair.to_gateway(out).packets
    assert pair.gateway.tick(pair.now + 9.9).datagrams == []
    keepalive = pair.gateway.tick(pair.now + 10)
    [(datagram, _)] = keepalive.datagrams
    assert len(datagram) == 32
    received = pair.to_client(keepalive)
    assert received.packets == [] and received.events == []
    assert pair.gateway.tick(pair.now + 30).datagrams == []  # only one per received packet


def test_no_keepalive_when_we_answered(pair: Pair) -> None:
    pair.handshake()
    pair.to_gateway(pair.client.send_packet(pair.gateway.public_key, sample_packet(), pair.now))
    pair.gateway.send_packet(pair.client.public_key, sample_packet(), pair.now + 1)
    assert pair.gateway.tick(pair.now + 11).datagrams == []


def test_new_handshake_when_data_gets_no_answer() -> None:
    pair = make_pair()
    pair.handshake()
    pair.client.send_packet(pair.gateway.public_key, sample_packet(), pair.now)
    assert pair.client.tick(pair.now + 14.9).datagrams == []
    out = pair.client.tick(pair.now + 15 + JITTER)
    assert kinds(out.datagrams) == [MESSAGE_HANDSHAKE_INITIATION]


def test_persistent_keepalive() -> None:
    pair = make_pair()
    pair.client.add_peer(pair.gateway.public_key, pair.psk, persistent_keepalive=25)
    pair.handshake()
    assert pair.client.tick(pair.now + 24).datagrams == []
    out = pair.client.tick(pair.now + 25)
    assert [len(d) for d, _ in out.datagrams] == [32]
    assert pair.client.next_deadline() == pair.now + 50


def test_key_material_is_zeroed_after_three_reject_after_times(pair: Pair) -> None:
    pair.handshake()
    stale = pair.client.send_packet(pair.gateway.public_key, sample_packet(), pair.now)
    pair.gateway.tick(pair.now + 3 * 180)
    assert pair.gateway.session_count == 0
    assert pair.to_gateway(stale).dropped() == ["unknown_index"]


def test_next_deadline_reports_the_earliest_timer(pair: Pair) -> None:
    assert pair.client.next_deadline() is None
    pair.client.initiate_handshake(pair.gateway.public_key, pair.now)
    deadline = pair.client.next_deadline()
    assert deadline is not None and pair.now + 5 <= deadline <= pair.now + 5 + JITTER


def test_rekey_is_not_started_twice_while_one_is_in_flight() -> None:
    pair = make_pair(timers=TimerConfig(rekey_after_time=30, reject_after_time=60))
    pair.handshake()
    pair.now += 31
    first = pair.client.send_packet(pair.gateway.public_key, sample_packet(), pair.now)
    second = pair.client.send_packet(pair.gateway.public_key, sample_packet(), pair.now + 1)
    assert kinds(first.datagrams).count(MESSAGE_HANDSHAKE_INITIATION) == 1
    assert kinds(second.datagrams) == [MESSAGE_TRANSPORT_DATA]
    assert completed(first) == []
