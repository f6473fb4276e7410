"""Property tests: nothing a network can send makes receive_datagram raise."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_pkg.wireguard import DROP_REASONS, Dropped, HandshakeCompleted
from gateway_pkg.wireguard.primitives import LABEL_MAC1, hash_, mac

from .harness import CLIENT_ADDR, make_pair

PAIR = make_pair(seed=b"fuzz")
# The gateway's response names its receiver index for the new session (its sender index).
_RESPONSE = PAIR.handshake()[0].datagrams[0][0]
MAC1_KEY = hash_(LABEL_MAC1 + PAIR.gateway.public_key)
LIVE_INDEX = struct.unpack_from("<I", _RESPONSE, 4)[0]

addresses = st.tuples(
    st.sampled_from(["192.0.2.9", "2001:db8::1", "198.51.100.7", "fe80::1%eth0"]),
    st.integers(0, 65535),
)


def only_drops(out) -> None:  # type: ignore[no-untyped-def]
    assert out.packets == []
    for event in out.events:
        assert isinstance(event, Dropped | HandshakeCompleted)
        if isinstance(event, Dropped):
            assert event.reason in DROP_REASONS


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), addresses)
def test_arbitrary_bytes_only_produce_drops(data: bytes, source: tuple[str, int]) -> None:
    only_drops(PAIR.gateway.receive_datagram(data, source, PAIR.now))


@settings(max_examples=300)
@given(st.sampled_from([1, 2, 3, 4]), st.binary(min_size=200, max_size=200), addresses)
def test_typed_messages_with_valid_mac1_only_produce_drops(kind: int, body: bytes, source: tuple[str, int]) -> None:
    """Get past the cheap checks so the handshake and transport paths see garbage too."""
    length = {1: 148, 2: 92, 3: 64, 4: 32 + body[0]}[kind]
    message = bytearray(struct.pack("<I", kind) + body[: length - 4])
    if kind == 1:
        message[116:132] = mac(MAC1_KEY, bytes(message[:116]))
    elif kind == 2:
        message[60:76] = mac(MAC1_KEY, bytes(message[:60]))
    if kind in (2, 3, 4) and body[1] & 1:
        struct.pack_into("<I", message, 8 if kind == 2 else 4, LIVE_INDEX)
    out = PAIR.gateway.receive_datagram(bytes(message), source, PAIR.now)
    only_drops(out)
    assert out.events, "every bad message is reported"


def test_valid_traffic_still_flows_after_fuzzing() -> None:
    from .harness import sample_packet

    out = PAIR.client.send_packet(PAIR.gateway.public_key, sample_packet(), PAIR.now)
    got = PAIR.gateway.receive_datagram(bytes(out.datagrams[0][0]), CLIENT_ADDR, PAIR.now)
    assert got.packets
