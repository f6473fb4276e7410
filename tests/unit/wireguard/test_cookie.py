"""MAC2 and cookie replies under load (whitepaper §5.4.7)."""

from __future__ import annotations

import struct

from gateway_pkg.wireguard import HandshakeCompleted, WireGuardDevice, keys
from gateway_pkg.wireguard.messages import (
    COOKIE_REPLY_LEN,
    INITIATION_MAC2_OFFSET,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_HANDSHAKE_INITIATION,
    MESSAGE_HANDSHAKE_RESPONSE,
)
from gateway_pkg.wireguard.primitives import LABEL_MAC1, hash_, mac

from .harness import GATEWAY_ADDR, Pair, all_events, make_pair


def test_under_load_initiation_gets_cookie_reply_then_retry_with_mac2_is_accepted(
    pair: Pair,
) -> None:
    pair.gateway_load[0] = True
    initiation = pair.client.initiate_handshake(pair.gateway.public_key, pair.now)
    assert bytes(initiation.datagrams[0][0])[INITIATION_MAC2_OFFSET:] == bytes(16)
    reply = pair.to_gateway(initiation)
    assert reply.dropped() == ["cookie_required"]
    [(cookie_reply, destination)] = reply.datagrams
    assert destination == pair.client_addr
    assert len(cookie_reply) == COOKIE_REPLY_LEN and cookie_reply[0] == MESSAGE_COOKIE_REPLY
    stored = pair.to_client(reply)
    assert stored.events == [] and stored.datagrams == []
    # The client retries on its retransmit timer, now with mac2 from the cookie.
    pair.now += 5.34
    retry = pair.client.tick(pair.now)
    [(datagram, _)] = retry.datagrams
    assert datagram[0] == MESSAGE_HANDSHAKE_INITIATION
    assert bytes(datagram)[INITIATION_MAC2_OFFSET:] != bytes(16)
    response = pair.to_gateway(retry)
    assert response.events == [] and bytes(response.datagrams[0][0])[0] == (MESSAGE_HANDSHAKE_RESPONSE)
    events = all_events(pair.converge(response, towards_gateway=False))
    assert HandshakeCompleted(pair.gateway.public_key, True) in events
    assert HandshakeCompleted(pair.client.public_key, False) in events


def test_cookie_is_bound_to_the_source_address(pair: Pair) -> None:
    pair.gateway_load[0] = True
    pair.to_client(pair.to_gateway(pair.client.initiate_handshake(pair.gateway.public_key, pair.now)))
    pair.now += 5.34
    retry = pair.client.tick(pair.now)
    pair.client_addr = ("203.0.113.50", 9999)  # someone replaying the retry from elsewhere
    out = pair.to_gateway(retry)
    assert out.dropped() == ["cookie_required"]


def test_cookie_reply_not_answering_our_message_is_dropped(pair: Pair) -> None:
    pair.gateway_load[0] = True
    reply = pair.to_gateway(pair.client.initiate_handshake(pair.gateway.public_key, pair.now))
    tampered = bytearray(reply.datagrams[0][0])
    tampered[-1] ^= 1
    assert pair.client.receive_datagram(bytes(tampered), GATEWAY_ADDR, pair.now).dropped() == ["cookie"]
    # A genuine reply is accepted once; the same reply again is not.
    assert pair.to_client(reply).events == []
    assert pair.to_client(reply).dropped() == ["cookie"]


def test_response_under_load_also_needs_mac2() -> None:
    pair = make_pair()
    pair.gateway.set_peer_endpoint(pair.client.public_key, pair.client_addr)
    initiation = pair.gateway.initiate_handshake(pair.client.public_key, pair.now)
    response = pair.to_client(initiation)
    pair.gateway_load[0] = True  # the gateway is now loaded when the response arrives
    out = pair.to_gateway(response)
    assert out.dropped() == ["cookie_required"]


def test_default_load_detection_at_100_handshakes_per_second() -> None:
    gateway = WireGuardDevice(keys.generate_private_key())  # no under_load: built-in meter
    mac1_key = hash_(LABEL_MAC1 + gateway.public_key)
    reasons = []
    for n in range(101):
        # Initiations with a valid mac1 and a garbage body: they count as handshake load.
        message = bytearray(struct.pack("<II", 1, n) + bytes(140))
        message[116:132] = mac(mac1_key, bytes(message[:116]))
        result = gateway.receive_datagram(bytes(message), ("198.51.100.1", 1), 5000.0 + n / 1000)
        reasons.append(result.dropped())
    assert reasons[:100] == [["decrypt"]] * 100
    assert reasons[100] == ["cookie_required"]
    # A new second starts a new budget.
    message[116:132] = mac(mac1_key, bytes(message[:116]))
    assert gateway.receive_datagram(bytes(message), ("198.51.100.1", 1), 5001.0).dropped() == ["decrypt"]


def _junk_initiation(gateway: WireGuardDevice, n: int) -> bytes:
    """A valid mac1 and a garbage body: handshake load that costs the responder its DH."""
    message = bytearray(struct.pack("<II", 1, n) + bytes(140))
    message[116:132] = mac(hash_(LABEL_MAC1 + gateway.public_key), bytes(message[:116]))
    return bytes(message)


def test_a_flood_from_one_source_does_not_make_a_new_source_wait_for_a_cookie() -> None:
    gateway = WireGuardDevice(keys.generate_private_key())
    for n in range(500):  # one flooding address: cookies once past the budget
        gateway.receive_datagram(_junk_initiation(gateway, n), ("198.51.100.1", 1), 5000.0 + n / 10_000)
    assert gateway.receive_datagram(_junk_initiation(gateway, 500), ("198.51.100.1", 1), 5000.06).dropped() \
        == ["cookie_required"]
    # A client contacting us for the first time, in the same second, even from the flood's
    # address (behind the same NAT): Diffie-Hellman at once.
    assert gateway.receive_datagram(_junk_initiation(gateway, 501), ("198.51.100.1", 2), 5000.07).dropped() \
        == ["decrypt"]
    assert gateway.receive_datagram(_junk_initiation(gateway, 510), ("203.0.113.9", 1), 5000.07).dropped() \
        == ["decrypt"]
    # Its third message in that second is treated like the flood's.
    gateway.receive_datagram(_junk_initiation(gateway, 502), ("203.0.113.9", 1), 5000.08)
    assert gateway.receive_datagram(_junk_initiation(gateway, 503), ("203.0.113.9", 1), 5000.09).dropped() \
        == ["cookie_required"]


def test_a_flood_from_spoofed_addresses_gets_at_most_twice_the_budget_of_work() -> None:
    gateway = WireGuardDevice(keys.generate_private_key())
    worked = 0
    for n in range(2000):  # every message from another address, within one second
        reasons = gateway.receive_datagram(_junk_initiation(gateway, n), (f"10.{n >> 8}.{n & 255}.1", 1),
                                           7000.0 + n / 10_000).dropped()
        worked += reasons == ["decrypt"]
    assert worked == 200
