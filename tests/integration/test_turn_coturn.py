"""Our TURN client against a real coturn on loopback, driven by a small blocking I/O loop."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway_pkg.ice import stun
from gateway_pkg.ice.turn import Allocated, AllocationFailed, Lost, Received, TurnClient, TurnEvent, TurnTimings
from tests.coturn import Coturn
from tests.procs import wait_for

pytestmark = pytest.mark.integration


class Driver:
    """The I/O around one `TurnClient`: one UDP socket, every datagram in and out recorded."""

    def __init__(self, client: TurnClient, sock: socket.socket) -> None:
        self.client, self.sock = client, sock
        self.events: list[TurnEvent] = []
        self.sent: list[bytes] = []
        self.received: list[bytes] = []

    def flush(self) -> None:
        transmits, events = self.client.drain()
        for transmit in transmits:
            self.sent.append(transmit.data)
            self.sock.sendto(transmit.data, transmit.destination)
        self.events.extend(events)

    def pump(self, until: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            self.client.tick(now)
            self.flush()
            if until():
                return
            if now >= deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; events {self.events}")
            next_deadline = self.client.poll_timeout()
            wait = min(deadline, next_deadline if next_deadline is not None else deadline) - now
            readable, _, _ = select.select([self.sock], [], [], max(0.0, min(wait, 0.1)))
            if readable:
                data, source = self.sock.recvfrom(65535)
                if source == self.client.server:
                    self.received.append(data)
                    self.client.handle(data, time.monotonic())

    def of_type(self, kind: type) -> list[TurnEvent]:
        return [e for e in self.events if isinstance(e, kind)]

    def responses(self, method: int) -> list[stun.Message]:
        messages = [stun.decode(d) for d in self.received if stun.is_stun(d)]
        return [m for m in messages if m.method == method and m.cls in (stun.Class.SUCCESS, stun.Class.ERROR)]


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    with Coturn(tmp_path, allow_loopback_peers=True) as relay:
        yield relay
        print(relay.output()[-4000:])


@pytest.fixture
def gateway_socket() -> Iterator[socket.socket]:
    sock = udp_socket()
    yield sock
    sock.close()


@pytest.fixture
def peer() -> Iterator[socket.socket]:
    sock = udp_socket()
    sock.settimeout(5)
    yield sock
    sock.close()


def allocated(coturn: Coturn, sock: socket.socket, **kwargs: object) -> Driver:
    username, password = coturn.credentials()
    client = TurnClient(coturn.address, username, password, software="firezone-gateway-py tests",
                        **kwargs)  # type: ignore[arg-type]
    driver = Driver(client, sock)
    client.allocate(time.monotonic())
    driver.pump(lambda: driver.events, 10, "the allocation")
    [event] = driver.events
    assert isinstance(event, Allocated), event
    return driver


def test_allocate_then_relay_both_ways_with_indications_and_channel_data(coturn, gateway_socket, peer):
    driver = allocated(coturn, gateway_socket)
    client = driver.client
    [event] = driver.events
    assert isinstance(event, Allocated)
    assert event.mapped == gateway_socket.getsockname()  # no NAT on loopback
    assert event.relayed[0] == "127.0.0.1" and event.relayed == client.relayed
    # The first Allocate was challenged (401 with REALM and NONCE), the second accepted.
    [challenge, success] = driver.responses(stun.Method.ALLOCATE)
    assert challenge.error() is not None and challenge.error()[0] == 401 and challenge.realm() == "firezone"
    assert success.cls == stun.Class.SUCCESS and success.lifetime()

    peer_address = peer.getsockname()
    # Peer to us through a permission only: a Data indication.
    client.permit(peer_address[0], time.monotonic())
    driver.pump(lambda: client.permitted(peer_address[0]), 5, "the permission")
    peer.sendto(b"from the peer, indication", event.relayed)
    driver.pump(lambda: driver.of_type(Received), 5, "a Data indication")
    assert driver.of_type(Received) == [Received(peer_address, b"from the peer, indication")]
    assert stun.decode(driver.received[-1]).method == stun.Method.DATA

    # Us to the peer while the channel binding is in flight: a Send indication.
    client.send(peer_address, b"to the peer, indication", time.monotonic())
    driver.flush()
    assert any(stun.is_stun(d) and stun.decode(d).method == stun.Method.SEND for d in driver.sent)
    data, source = peer.recvfrom(2048)
    assert (data, source) == (b"to the peer, indication", event.relayed)

    # Once the channel is bound, ChannelData both ways.
    driver.pump(lambda: client.channel_for(peer_address), 5, "the channel binding")
    channel = client.channel_for(peer_address)
    assert channel is not None and stun.CHANNEL_MIN <= channel <= stun.CHANNEL_MAX
    client.send(peer_address, b"to the peer, channel", time.monotonic())
    driver.flush()
    assert stun.decode_channel_data(driver.sent[-1]) == (channel, b"to the peer, channel")
    assert peer.recvfrom(2048) == (b"to the peer, channel", event.relayed)
    peer.sendto(b"from the peer, channel", event.relayed)
    driver.pump(lambda: len(driver.of_type(Received)) == 2, 5, "ChannelData from the peer")
    assert driver.of_type(Received)[-1] == Received(peer_address, b"from the peer, channel")
    assert stun.decode_channel_data(driver.received[-1]) == (channel, b"from the peer, channel")
    # A few more in a row, with payloads of every small length and a large one.
    payloads = [bytes([n]) * n for n in range(1, 9)] + [b"\xab" * 1316]
    for payload in payloads:
        peer.sendto(payload, event.relayed)
    driver.pump(lambda: len(driver.of_type(Received)) == 2 + len(payloads), 5, "the burst")
    assert [e.payload for e in driver.of_type(Received)[2:]] == payloads  # type: ignore[union-attr]
    assert client.dropped == {}


def test_refresh_keeps_the_allocation(coturn, gateway_socket, peer):
    driver = allocated(coturn, gateway_socket)
    client = driver.client
    relayed = client.relayed
    assert relayed is not None
    before = len(driver.responses(stun.Method.REFRESH))
    client.refresh(time.monotonic())
    driver.pump(lambda: len(driver.responses(stun.Method.REFRESH)) > before, 5, "the refresh response")
    response = driver.responses(stun.Method.REFRESH)[-1]
    assert response.cls == stun.Class.SUCCESS and (response.lifetime() or 0) > 0
    assert client.allocated and client.relayed == relayed and not driver.of_type(Lost)
    # Still relaying.
    client.send(peer.getsockname(), b"after refresh", time.monotonic())
    driver.pump(lambda: client.channel_for(peer.getsockname()), 5, "the channel binding")
    assert peer.recvfrom(2048) == (b"after refresh", relayed)


def test_release_deletes_the_allocation(coturn, gateway_socket, peer):
    driver = allocated(coturn, gateway_socket)
    client = driver.client
    relayed = client.relayed
    assert relayed is not None
    peer_address = peer.getsockname()
    client.send(peer_address, b"hello", time.monotonic())
    driver.pump(lambda: client.channel_for(peer_address), 5, "the channel binding")
    assert peer.recvfrom(2048)[0] == b"hello"
    refreshes = len(driver.responses(stun.Method.REFRESH))
    client.release(time.monotonic())
    driver.pump(lambda: len(driver.responses(stun.Method.REFRESH)) > refreshes, 5, "the release response")
    assert driver.responses(stun.Method.REFRESH)[-1].cls == stun.Class.SUCCESS
    assert client.poll_timeout() is None and not client.allocated
    # coturn reaps an allocation refreshed with LIFETIME 0 on its next timer tick (about 1 s):
    # the peer's datagrams soon reach nobody.
    gateway_socket.settimeout(0.3)

    def delivered() -> bool:
        peer.sendto(b"too late?", relayed)
        try:
            gateway_socket.recvfrom(2048)
        except TimeoutError:
            return False
        return True

    wait_for(lambda: not delivered(), 5, "the released allocation to stop relaying")
    assert not delivered()
    gateway_socket.settimeout(None)
    # And a new allocation from the same 5-tuple is not refused with 437 Allocation Mismatch.
    again = allocated(coturn, gateway_socket)
    assert all(m.error() is None or m.error()[0] != 437 for m in again.responses(stun.Method.ALLOCATE))


@pytest.mark.parametrize("what", ["wrong password", "expired username"])
def test_bad_credentials_fail_the_allocation(coturn, gateway_socket, what):
    if what == "wrong password":
        username, _ = coturn.credentials()
        password = "bm90IHRoZSBwYXNzd29yZA=="
    else:
        username, password = coturn.credentials(ttl=-60)
    client = TurnClient(coturn.address, username, password)
    driver = Driver(client, gateway_socket)
    client.allocate(time.monotonic())
    driver.pump(lambda: driver.events, 10, "the allocation result")
    [event] = driver.events
    assert isinstance(event, AllocationFailed) and "401" in event.reason, event
    assert password not in event.reason
    assert client.poll_timeout() is None


def test_a_dead_relay_is_lost_within_the_retransmit_budget(coturn, gateway_socket):
    timings = TurnTimings(initial_rto=0.05, max_rto=0.2, max_retransmits=6)
    driver = allocated(coturn, gateway_socket, timings=timings)
    coturn.stop()
    start = time.monotonic()
    driver.client.refresh(start)
    budget = sum(min(timings.initial_rto * 2**n, timings.max_rto) for n in range(timings.max_retransmits + 1))
    driver.pump(lambda: driver.of_type(Lost), budget + 5, "Lost")
    elapsed = time.monotonic() - start
    assert budget - 0.01 <= elapsed <= budget + 1.0, (elapsed, budget)
    assert driver.of_type(Lost) == [Lost("the relay stopped answering (refresh timed out)")]
    assert not driver.client.allocated


def test_stale_nonce_is_renewed_transparently(tmp_path, gateway_socket):
    with Coturn(tmp_path, allow_loopback_peers=True, extra=["--stale-nonce=1"]) as relay:
        driver = allocated(relay, gateway_socket)
        first_nonce = driver.responses(stun.Method.ALLOCATE)[0].nonce()

        def stale_then_success() -> bool:
            codes = [(m.error() or (200, ""))[0] for m in driver.responses(stun.Method.REFRESH)]
            if stun.STALE_NONCE in codes and 200 in codes[codes.index(stun.STALE_NONCE) + 1:]:
                return True
            driver.client.refresh(time.monotonic())  # a no-op while a Refresh is in flight
            return False

        driver.pump(stale_then_success, 10, "a Refresh meeting a stale nonce, then its retry succeeding")
        stale = next(m for m in driver.responses(stun.Method.REFRESH) if m.error())
        assert stale.nonce() not in (None, first_nonce)
        assert driver.client.allocated and not driver.of_type(Lost)
