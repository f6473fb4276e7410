"""Model-based test: two devices over a network that loses, reorders and duplicates.

Whatever happens, a device only delivers packets its peer really sent, never twice, never
raises; and once the network behaves, traffic flows again.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gateway_pkg.wireguard import DeviceOutput, TimerConfig

from .harness import CLIENT_ADDR, GATEWAY_ADDR, make_pair, sample_packet

TIMERS = TimerConfig(
    rekey_after_time=20,
    reject_after_time=40,
    rekey_timeout=2,
    keepalive_timeout=4,
    rekey_attempt_time=6,
    rekey_after_messages=12,
    reject_after_messages=16,
)


class LossyNetwork(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pair = make_pair(timers=TIMERS, seed=b"stateful")
        self.in_flight: list[tuple[bool, bytes]] = []  # (towards gateway?, datagram)
        self.sent = {True: set(), False: set()}  # by direction: sequence numbers sent
        self.delivered = {True: [], False: []}
        self.sequence = 0

    def _queue(self, out: DeviceOutput, towards_gateway: bool) -> None:
        for datagram, destination in out.datagrams:
            assert destination == (GATEWAY_ADDR if towards_gateway else CLIENT_ADDR)
            self.in_flight.append((towards_gateway, bytes(datagram)))
        for event in out.events:
            assert type(event).__name__ in {
                "Dropped", "HandshakeCompleted", "HandshakeFailed", "PeerSessionExpired"
            }  # fmt: skip

    def _record(self, out: DeviceOutput, at_gateway: bool) -> None:
        for _, packet in out.packets:
            self.delivered[at_gateway].append(int.from_bytes(packet[26:28], "big"))
        # Replies produced while receiving travel the other way.
        self._queue(out, towards_gateway=not at_gateway)

    @rule(from_client=st.booleans())
    def send(self, from_client: bool) -> None:
        self.sequence += 1
        packet = sample_packet(self.sequence)
        pair = self.pair
        if from_client:
            out = pair.client.send_packet(pair.gateway.public_key, packet, pair.now)
        else:
            out = pair.gateway.send_packet(pair.client.public_key, packet, pair.now)
        self.sent[from_client].add(self.sequence)
        self._queue(out, towards_gateway=from_client)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), keep_copy=st.booleans())
    def deliver(self, data: st.DataObject, keep_copy: bool) -> None:
        index = data.draw(st.integers(0, len(self.in_flight) - 1))
        towards_gateway, datagram = self.in_flight[index]
        if not keep_copy:
            del self.in_flight[index]
        pair = self.pair
        if towards_gateway:
            self._record(pair.gateway.receive_datagram(datagram, CLIENT_ADDR, pair.now), True)
        else:
            self._record(pair.client.receive_datagram(datagram, GATEWAY_ADDR, pair.now), False)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        del self.in_flight[data.draw(st.integers(0, len(self.in_flight) - 1))]

    @rule(seconds=st.sampled_from([0.01, 0.5, 2.5, 5.0, 21.0, 45.0]))
    def advance(self, seconds: float) -> None:
        pair = self.pair
        pair.now += seconds
        self._queue(pair.client.tick(pair.now), towards_gateway=True)
        self._queue(pair.gateway.tick(pair.now), towards_gateway=False)

    @invariant()
    def only_sent_packets_arrive_and_never_twice(self) -> None:
        for at_gateway, received in self.delivered.items():
            assert set(received) <= self.sent[at_gateway]
            assert len(received) == len(set(received))

    def teardown(self) -> None:
        """Liveness: with a perfect network, traffic from the client gets through.

        Packets queued behind a handshake that gave up are discarded (as in WireGuard), so
        the "application" re-sends once a second with a fresh marker until one arrives.
        """
        pair = self.pair
        self.in_flight.clear()
        markers: set[int] = set()
        for _ in range(30):
            self.sequence += 1
            markers.add(self.sequence)
            self.sent[True].add(self.sequence)
            packet = sample_packet(self.sequence)
            self._queue(pair.client.send_packet(pair.gateway.public_key, packet, pair.now), True)
            while self.in_flight:
                towards_gateway, datagram = self.in_flight.pop(0)
                if towards_gateway:
                    out = pair.gateway.receive_datagram(datagram, CLIENT_ADDR, pair.now)
                else:
                    out = pair.client.receive_datagram(datagram, GATEWAY_ADDR, pair.now)
                self._record(out, towards_gateway)
            if markers & set(self.delivered[True]):
                break
            self.advance(1.0)
        assert markers & set(self.delivered[True]), "no traffic after the network healed"
        self.only_sent_packets_arrive_and_never_twice()


LossyNetwork.TestCase.settings = settings(
    max_examples=50, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
test_lossy_network = LossyNetwork.TestCase


class AsymmetricLossyNetwork(LossyNetwork):
    """The same, with a client whose timers are the (much longer) defaults."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = make_pair(timers=TIMERS, client_timers=TimerConfig(), seed=b"asymmetric")


AsymmetricLossyNetwork.TestCase.settings = LossyNetwork.TestCase.settings
test_lossy_network_with_asymmetric_timers = AsymmetricLossyNetwork.TestCase
