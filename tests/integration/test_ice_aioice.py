"""Our controlled IceAgent against aioice, an independent ICE implementation, as the controlling side.

Everything runs in a network namespace created (and deleted) here, with a veth pair whose
two ends carry one test address each: aioice gathers host candidates from every interface
but loopback, so in the namespace it offers exactly those two, and nothing of the host's own
network is touched. One worker thread enters the namespace (setns moves only the calling
thread) and runs an asyncio loop with both sides on it:

    netns icet-<id>, veth ice<id>a 192.0.2.1/24 ── ice<id>b 192.0.2.2/24 (both ends inside)
    aioice Connection(ice_controlling=True)  host candidates on 192.0.2.1 and 192.0.2.2
    our IceAgent, driven by `OurSide`        one UDP socket, host candidate 192.0.2.1:<port>

Candidates cross in both directions as SDP strings (our `Candidate.to_sdp`/`from_sdp`,
aioice's `Candidate.to_sdp`/`from_sdp`). aioice nominates; our agent emits `Selected`; data
then flows both ways on the pair; consent checks (aioice's interval shortened, ours through
`IceTimings`) keep both sides up, and when aioice goes away our agent reports `Disconnected`.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from gateway_pkg.ice import stun
from gateway_pkg.ice.agent import (
    Credentials,
    Disconnected,
    IceAgent,
    IceEvent,
    IceTimings,
    LocalCandidate,
    Selected,
)
from gateway_pkg.ice.candidate import Candidate, CandidateType, foundation, priority
from tests.procs import wait_for_async

aioice = pytest.importorskip("aioice")
aioice_ice = pytest.importorskip("aioice.ice")

pytestmark = [pytest.mark.integration, pytest.mark.netns]

OUR_IP, OTHER_IP = "192.0.2.1", "192.0.2.2"
CLONE_NEWNET = 0x40000000
VIA = "udp4"
# Short consent and retransmit timers so that a few seconds cover many consent rounds.
FAST = IceTimings(
    initial_rto=0.1, max_rto=0.3, idle_interval=0.3, idle_retransmits=4, consent_timeout=2.0, disconnect_timeout=1.0
)
AIOICE_CONSENT_INTERVAL = 0.2  # aioice's CONSENT_INTERVAL is 5 s
T = TypeVar("T")


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    if shutil.which("ip") is None:
        pytest.skip("ip is not installed")
    tag = secrets.token_hex(3)
    name, ends = f"icet-{tag}", (f"ice{tag}a", f"ice{tag}b")
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", name, "link", "add", ends[0], "type", "veth", "peer", "name", ends[1])
        for end, address in zip(ends, (OUR_IP, OTHER_IP), strict=True):
            run("ip", "-n", name, "addr", "add", f"{address}/24", "dev", end)
            run("ip", "-n", name, "link", "set", end, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def in_netns(name: str, scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `scenario` on a fresh event loop in a thread that has entered namespace `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: dict[str, Any] = {}

    def worker() -> None:
        try:
            with open(f"/run/netns/{name}") as ns_file:
                if libc.setns(ns_file.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            result["value"] = asyncio.run(scenario())
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=worker, name=f"ice-{name}")
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the scenario did not finish"
    if "error" in result:
        raise result["error"]
    value: T = result["value"]
    return value


class OurSide(asyncio.DatagramProtocol):
    """A tiny I/O loop for our sans-I/O agent: one UDP socket, tick() at poll_timeout()."""

    def __init__(self, agent: IceAgent) -> None:
        self.agent = agent
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.events: list[IceEvent] = []
        self.data: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.seen: Counter[str] = Counter()  # STUN seen after Selected, by class
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._task = self.loop.create_task(self._timers())

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        source = (addr[0], addr[1])
        if not stun.is_stun(data):
            self.data.put_nowait((data, source))
            return
        try:
            message = stun.decode(data)
        except stun.StunError:
            return
        if self.agent.selected is not None:
            self.seen[message.cls.name] += 1
        self.agent.handle(message, data, source, VIA, self.loop.time())
        self.flush()

    def flush(self) -> None:
        transmits, events = self.agent.drain()
        for transmit in transmits:
            assert transmit.via == VIA
            if self.transport is not None:
                self.transport.sendto(transmit.data, transmit.destination)
        self.events += events
        self._wake.set()

    async def _timers(self) -> None:
        while True:
            deadline = self.agent.poll_timeout()
            self._wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - self.loop.time())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self.agent.tick(self.loop.time())
            self.flush()

    def send(self, data: bytes, destination: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, destination)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.transport is not None:
            self.transport.close()

    def of(self, kind: type[T]) -> list[T]:
        return [e for e in self.events if isinstance(e, kind)]


async def establish() -> tuple[Any, OurSide, Selected]:
    """Both sides up, candidates exchanged as SDP, aioice connected and our agent Selected."""
    loop = asyncio.get_running_loop()
    controlling = aioice.Connection(ice_controlling=True, components=1, use_ipv4=True, use_ipv6=False)
    await controlling.gather_candidates()
    offered = {(c.host, c.port) for c in controlling.local_candidates}
    assert {host for host, _ in offered} == {OUR_IP, OTHER_IP}, offered

    local = Credentials(secrets.token_hex(2), secrets.token_hex(11))
    agent = IceAgent(
        local, Credentials(controlling.local_username, controlling.local_password), now=loop.time(), timings=FAST
    )
    transport, ours = await loop.create_datagram_endpoint(lambda: OurSide(agent), local_addr=(OUR_IP, 0))
    port = transport.get_extra_info("sockname")[1]
    host = Candidate(
        foundation(CandidateType.HOST, OUR_IP), 1, "udp", priority(CandidateType.HOST), OUR_IP, port, CandidateType.HOST
    )
    agent.add_local_candidate(host, VIA)
    controlling.remote_username, controlling.remote_password = local.ufrag, local.pwd

    # aioice → us: its SDP has no "candidate:" prefix; ours parses it either way.
    for candidate in controlling.local_candidates:
        agent.add_remote_candidate(Candidate.from_sdp(candidate.to_sdp()))
    # us → aioice: what we would broadcast, through aioice's own parser.
    ours.flush()
    broadcast = [e.candidate.to_sdp() for e in ours.of(LocalCandidate)]
    assert broadcast == [host.to_sdp()]
    for text in broadcast:
        await controlling.add_remote_candidate(aioice.Candidate.from_sdp(text.removeprefix("candidate:")))
    await controlling.add_remote_candidate(None)

    await asyncio.wait_for(controlling.connect(), 15)
    selected = await wait_for_async(lambda: agent.selected, 10, "our agent to select the nominated pair")
    assert ours.of(Selected)[-1] == selected
    assert selected.remote in offered and selected.local == host and selected.via == VIA
    assert selected.remote_candidate.type == CandidateType.HOST
    assert agent.state == "connected"
    return controlling, ours, selected


async def exchange(controlling: Any, ours: OurSide, selected: Selected, label: bytes) -> None:
    """A datagram each way over the pair: aioice send() → our socket, our sendto → aioice recv()."""
    await controlling.send(b"from aioice " + label)
    data, source = await asyncio.wait_for(ours.data.get(), 5)
    assert data == b"from aioice " + label
    assert source[0] in (OUR_IP, OTHER_IP)
    ours.send(b"from us " + label, selected.remote)
    assert await asyncio.wait_for(controlling.recv(), 5) == b"from us " + label


def test_aioice_nominates_data_flows_and_consent_keeps_the_pair(netns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice_ice, "CONSENT_INTERVAL", AIOICE_CONSENT_INTERVAL)

    async def scenario() -> tuple[Counter[str], list[IceEvent]]:
        controlling, ours, selected = await establish()
        try:
            await exchange(controlling, ours, selected, b"1")
            # Many consent rounds both ways: aioice's checks answered by us (else it closes after
            # 6 failures), ours answered by aioice (else we lose consent after 2 s).
            await wait_for_async(
                lambda: ours.seen["REQUEST"] >= 12 and ours.seen["SUCCESS"] >= 8,
                20,
                "consent checks in both directions",
            )
            assert ours.agent.state == "connected" and ours.agent.selected == selected
            assert not ours.agent.dropped  # aioice's STUN passes our integrity and fingerprint checks
            await exchange(controlling, ours, selected, b"2")
            return ours.seen, ours.events
        finally:
            ours.close()
            await controlling.close()

    seen, events = in_netns(netns, scenario)
    assert not [e for e in events if isinstance(e, Disconnected)]
    assert seen["ERROR"] == 0


def test_our_agent_notices_when_aioice_goes_away(netns: str) -> None:
    async def scenario() -> tuple[float, list[IceEvent]]:
        controlling, ours, selected = await establish()
        try:
            await exchange(controlling, ours, selected, b"1")
            loop = asyncio.get_running_loop()
            gone = loop.time()
            await controlling.close()  # its sockets close: our consent checks go unanswered
            await wait_for_async(lambda: ours.of(Disconnected), 10, "Disconnected after consent loss")
            return loop.time() - gone, ours.events
        finally:
            ours.close()

    elapsed, events = in_netns(netns, scenario)
    [disconnected] = [e for e in events if isinstance(e, Disconnected)]
    assert disconnected.reason == "consent lost and no other nominated pair"
    # idle_interval + a consent transaction (0.1+0.2+0.3+0.3+0.3) + disconnect_timeout, give or take.
    assert elapsed < FAST.idle_interval + 1.2 + FAST.disconnect_timeout + 1.0
