"""Two in-memory WireGuard devices wired together by hand, with a controllable clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway_pkg.wireguard import (
    DeviceOutput,
    HandshakeCompleted,
    TimerConfig,
    WireGuardDevice,
    WireGuardEvent,
)
from gateway_pkg.wireguard.keys import generate_private_key
from tests.wireguard_support import SeededRng, icmp_echo

GATEWAY_ADDR = ("192.0.2.1", 52625)
CLIENT_ADDR = ("198.51.100.7", 40000)


@dataclass
class Pair:
    """`gateway` is the responder the portal configured; `client` initiates by default."""

    gateway: WireGuardDevice
    client: WireGuardDevice
    psk: bytes
    now: float = 1000.0
    client_addr: tuple[str, int] = CLIENT_ADDR
    gateway_load: list[bool] = field(default_factory=lambda: [False])

    def to_gateway(self, out: DeviceOutput) -> DeviceOutput:
        result = DeviceOutput()
        for datagram, destination in out.datagrams:
            assert destination == GATEWAY_ADDR
            result.extend(self.gateway.receive_datagram(bytes(datagram), self.client_addr, self.now))
        return result

    def to_client(self, out: DeviceOutput) -> DeviceOutput:
        result = DeviceOutput()
        for datagram, destination in out.datagrams:
            assert destination == self.client_addr
            result.extend(self.client.receive_datagram(bytes(datagram), GATEWAY_ADDR, self.now))
        return result

    def converge(self, out: DeviceOutput, *, towards_gateway: bool) -> list[DeviceOutput]:
        """Bounce datagrams back and forth until nobody has anything to send."""
        outputs = []
        to_gateway = towards_gateway
        while out.datagrams:
            out = self.to_gateway(out) if to_gateway else self.to_client(out)
            outputs.append(out)
            to_gateway = not to_gateway
        return outputs

    def handshake(self) -> list[DeviceOutput]:
        """Client initiates, gateway answers, client confirms with a keepalive."""
        init = self.client.initiate_handshake(self.gateway.public_key, self.now)
        assert len(init.datagrams) == 1
        return self.converge(init, towards_gateway=True)


def make_pair(
    *,
    timers: TimerConfig | None = None,
    client_timers: TimerConfig | None = None,
    seed: bytes = b"pair",
    gateway_psk: bytes | None = None,
    under_load: Callable[[], bool] | None = None,
) -> Pair:
    rng_g, rng_c = SeededRng(seed + b"g"), SeededRng(seed + b"c")
    psk = SeededRng(seed + b"psk")(32)
    load = [False]
    gateway = WireGuardDevice(
        generate_private_key(rng_g),
        timers=timers,
        rng=rng_g,
        under_load=under_load or (lambda: load[0]),
        wall_clock=lambda: 1_700_000_000.0 + pair.now,
    )
    client = WireGuardDevice(
        generate_private_key(rng_c),
        timers=client_timers or timers,
        rng=rng_c,
        under_load=lambda: False,
        wall_clock=lambda: 1_700_000_000.0 + pair.now,
    )
    gateway.add_peer(client.public_key, gateway_psk if gateway_psk is not None else psk)
    client.add_peer(gateway.public_key, psk)
    client.set_peer_endpoint(gateway.public_key, GATEWAY_ADDR)
    pair = Pair(gateway, client, psk, gateway_load=load)
    return pair


def completed(out: DeviceOutput) -> list[HandshakeCompleted]:
    return [e for e in out.events if isinstance(e, HandshakeCompleted)]


def all_events(outputs: list[DeviceOutput]) -> list[WireGuardEvent]:
    return [e for out in outputs for e in out.events]


def sample_packet(sequence: int = 1, *, size: int = 84) -> bytes:
    """An IPv4 ICMP echo request of `size` bytes from the client's tunnel address."""
    return icmp_echo("100.64.0.2", "10.1.2.3", identifier=42, sequence=sequence, payload=bytes(size - 28))
