"""The NAT lab and the independent ICE client proven on their own, without our gateway.

The NATs behave as declared (public address, cone vs symmetric mappings, nothing inbound,
rebinding), and two aioice agents with a stock wireguard-go each, one behind each NAT,
find the path the topology allows: the relay across two symmetric NATs, a direct pair
across two cone NATs, over IPv4 and IPv6, and a fresh ICE session after the path dies.
Every test ends with no namespace or link of its lab left.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests import natlab
from tests.iceclient import IceAgent, IceWireGuardClient, StockWireGuard, ice_credentials, new_wireguard
from tests.natlab import NatLab
from tests.procs import DevPortalProc, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]

GW = NatLab.GATEWAY
CL = NatLab.CLIENT


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., NatLab]]:
    reason = natlab.available()
    if reason:
        pytest.skip(reason)
    labs: list[NatLab] = []

    def make(**kwargs: Any) -> NatLab:
        lab = NatLab(tmp_path, **kwargs)
        labs.append(lab)
        return lab.up()

    yield make
    for lab in labs:
        lab.down()
    for log in sorted(tmp_path.rglob("*.log")):
        print(f"===== {log.name} (last 30 lines)")
        print("\n".join(log.read_text(errors="replace").splitlines()[-30:]))
    left = [name for lab in labs for name in lab.leftovers()]
    assert not left, f"left behind: {left}"


def reflectors(lab: NatLab, family: int) -> list[tuple[str, int]]:
    addrs = lab.REFLECTORS if family == 4 else lab.REFLECTORS6
    return [(a, lab.REFLECTOR_PORT) for a in addrs]


def inside(site: natlab.Site, family: int) -> str:
    return site.inside if family == 4 else site.inside6


def public(site: natlab.Site, family: int) -> str:
    return site.public if family == 4 else site.public6


# -- the NATs ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", [4, 6])
def test_nats_map_as_declared(make_lab, family):
    lab = make_lab(gateway_nat="symmetric", client_nat="cone", clients=2)
    lab.start_reflector()
    targets = reflectors(lab, family)

    # cone: one inside port, one outside port whatever the destination, on the NAT's address.
    cone = lab.probe("client", targets, bind=(inside(CL, family), 40001))
    assert cone[0][0] == cone[1][0] == public(CL, family), cone
    assert cone[0][1] == cone[1][1], f"a cone NAT kept one mapping: {cone}"
    second = lab.probe("client2", targets[:1], bind=(inside(NatLab.CLIENT2, family), 40001))
    assert second == [[public(NatLab.CLIENT2, family), 40001]], second  # the second client, its own NAT

    # symmetric: a new random outside port for each destination.
    sym = lab.probe("gateway", targets, bind=(inside(GW, family), 40001))
    assert sym[0][0] == sym[1][0] == public(GW, family), sym
    assert sym[0][1] != sym[1][1], f"a symmetric NAT maps per destination: {sym}"

    # Switched at run time: the client's NAT becomes symmetric, then goes away.
    lab.nat_mode("client", "symmetric")
    now = lab.probe("client", targets, bind=(inside(CL, family), 40002))
    assert now[0][0] == public(CL, family) and now[0][1] != now[1][1], now
    lab.nat_mode("client", "none")
    routed = lab.probe("client", targets, bind=(inside(CL, family), 40003))
    assert routed == [[inside(CL, family), 40003]] * 2, routed


@pytest.mark.parametrize("family", [4, 6])
def test_rebinding_moves_the_client_to_a_new_port(make_lab, family):
    lab = make_lab(gateway_nat="symmetric", client_nat="cone")
    lab.start_reflector()
    target = reflectors(lab, family)[:1]
    bind = (inside(CL, family), 40001)
    before = lab.probe("client", target, bind=bind)[0]
    assert before == [public(CL, family), 40001], before  # plain MASQUERADE keeps the port
    lab.rebind_client_nat()
    after = lab.probe("client", target, bind=bind)[0]
    assert after[0] == public(CL, family) and after[1] != before[1], (before, after)
    lab.rebind_client_nat()
    again = lab.probe("client", target, bind=bind)[0]
    assert again[0] == public(CL, family) and again[1] != after[1], (before, after, again)


@pytest.mark.parametrize("family", [4, 6])
def test_nothing_unsolicited_gets_in(make_lab, family):
    lab = make_lab(gateway_nat="cone", client_nat="cone")
    lab.start_reflector()
    v6 = family == 6
    drops = lab.nat_drops("gateway", ipv6=v6)
    # Straight at the gateway (pub routes the inside network to its NAT) and at the NAT's
    # own address: both die in the NAT, counted by its DROP rules.
    lab.probe("pub", [(inside(GW, family), 7000), (public(GW, family), 7000)], timeout=0)
    wait_for(lambda: lab.nat_drops("gateway", ipv6=v6) >= drops + 2, 5, "both probes dropped by the NAT")

    # After the gateway sent out, the answer comes back in, from that peer only:
    # the same outside port from another address is dropped too.
    seen = lab.probe("gateway", reflectors(lab, family)[:1], bind=(inside(GW, family), 40001))[0]
    assert seen == [public(GW, family), 40001], seen
    drops = lab.nat_drops("gateway", ipv6=v6)
    lab.probe("pub", [(public(GW, family), 40001)], timeout=0)
    wait_for(lambda: lab.nat_drops("gateway", ipv6=v6) > drops, 5, "a stranger's packet to a mapped port dropped")

    # "none": routed, so the inside address answers from outside.
    lab.nat_mode("gateway", "none")
    echo = lab.spawn("gateway", [natlab.PYTHON, "-m", "tests.natlab", "reflect",
                                 natlab._join(inside(GW, family), 7001)], natlab.child_env(), "gw-reflector")
    wait_for(lambda: "ready" in echo.output(), 10, "reflector in the gateway namespace")
    answer = lab.probe("pub", [(inside(GW, family), 7001)])[0]
    assert isinstance(answer, list), answer
    assert ipaddress.ip_address(answer[0]) in ipaddress.ip_network(
        lab.PUB_SUBNET if family == 4 else lab.PUB_SUBNET6), answer


# -- two aioice agents with wireguard-go, one behind each NAT --------------------------------

@dataclass
class Side:
    agent: IceAgent
    wg: StockWireGuard
    creds: dict[str, str]


class Peers:
    """The client (controlling) and a stand-in gateway (controlled): aioice + shim + wireguard-go."""

    def __init__(self, lab: NatLab, relay: Any, family: int = 4, watchdog: float = 0.0) -> None:
        self.lab, self.relay, self.family = lab, relay, family
        host = lab.RELAY if family == 4 else lab.RELAY6
        self.turn_addr = natlab._join(host, lab.RELAY_PORT)
        wc = new_wireguard(lab, "client", "100.64.0.2", "fd00:2021:1111::2")
        wg = new_wireguard(lab, "gateway", "100.64.0.1", "fd00:2021:1111::1")
        wg.preshared_key = wc.preshared_key
        for wg_ in (wc, wg):
            wg_.start()
        v4 = family == 4  # IPv6 only: no IPv4 host candidates, TURN over IPv6
        self.client = Side(IceAgent(lab, "client", "controlling", wg_port=wc.listen_port, watchdog=watchdog,
                                    ipv4=v4), wc, ice_credentials())
        self.gateway = Side(IceAgent(lab, "gateway", "controlled", wg_port=wg.listen_port, watchdog=watchdog,
                                     ipv4=v4), wg, ice_credentials())
        wc.connect(wg.public_key, f"127.0.0.1:{self.client.agent.shim_port}", ["100.64.0.1/32"], keepalive=1)
        # Only the client initiates, as with a real gateway (two initiations crossing make
        # wireguard-go wait for its 5 s retry).
        wg.connect(wc.public_key, f"127.0.0.1:{self.gateway.agent.shim_port}", ["100.64.0.2/32"], keepalive=0)

    def turn(self) -> dict[str, str] | None:
        if self.relay is None:
            return None
        username, password = self.relay.credentials()
        return {"server": self.turn_addr, "username": username, "password": password}

    def connect(self, direct_grace: float = 0.0, fresh: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
        """One ICE session on both sides (fresh credentials if asked); both selected pairs."""
        if fresh:
            self.client.creds, self.gateway.creds = ice_credentials(), ice_credentials()
        v4_relay = self.relay is not None and self.family == 4
        stun = natlab._join(self.lab.RELAY, self.lab.RELAY_PORT) if v4_relay else None
        c, g = self.client, self.gateway
        sc = c.agent.session(c.creds, g.creds, self.turn(), stun, direct_grace=direct_grace)
        sg = g.agent.session(g.creds, c.creds, self.turn(), stun)
        mine, theirs = c.agent.gathered(sc), g.agent.gathered(sg)
        c.agent.add_remote(theirs)
        g.agent.add_remote(mine)
        return c.agent.wait_connected(20, sc), g.agent.wait_connected(20, sg)

    def ping(self) -> bool:
        return self.client.wg.ping("100.64.0.1", wait=1)


def relayed(pair: dict[str, Any]) -> bool:
    return "relay" in (pair["local"]["type"], pair["remote"]["type"])


@pytest.mark.parametrize("family", [4, 6])
def test_relay_carries_wireguard_across_two_symmetric_nats(make_lab, family):
    lab = make_lab(gateway_nat="symmetric", client_nat="symmetric")
    relay = lab.start_coturn()
    peers = Peers(lab, relay, family)
    gathered_types = set()
    mine, theirs = peers.connect()
    for side in (peers.client, peers.gateway):
        gathered_types |= set(side.agent.wait_event("gathered", 0, session=1)["types"])
    assert "relay" in gathered_types and "host" in gathered_types, gathered_types
    if family == 4:
        assert "srflx" in gathered_types, gathered_types  # aioice asks STUN over IPv4 only
    # Two symmetric NATs: no direct pair can work, whatever aioice tried first.
    assert relayed(mine) and relayed(theirs), (mine, theirs)
    relay_host = lab.RELAY if family == 4 else lab.RELAY6  # an IPv6 relayed address over IPv6
    for pair in (mine, theirs):
        assert relay_host in {pair["local"]["host"], pair["remote"]["host"]}, pair
    assert wait_for(peers.ping, 20, "ping through wireguard-go over the relay")
    assert peers.client.wg.latest_handshake() > 0


def test_cone_nats_take_the_direct_path(make_lab):
    lab = make_lab(gateway_nat="cone", client_nat="cone")
    relay = lab.start_coturn()
    peers = Peers(lab, relay)
    # aioice nominates the first check that succeeds; the grace lets the hole punching win.
    mine, theirs = peers.connect(direct_grace=1.5)
    assert not relayed(mine) and not relayed(theirs), (mine, theirs)
    assert mine["remote"]["host"] == GW.public and theirs["remote"]["host"] == CL.public, (mine, theirs)
    assert wait_for(peers.ping, 20, "ping through wireguard-go on the direct path")


@pytest.mark.parametrize("cause", ["relay-lost", "client-nat-rebinds"])
def test_watchdog_and_a_fresh_session_recover_a_dead_path(make_lab, cause):
    nat = "symmetric" if cause == "relay-lost" else "cone"
    lab = make_lab(gateway_nat=nat, client_nat=nat)
    relay = lab.start_coturn()
    peers = Peers(lab, relay, watchdog=2.0)
    mine, _ = peers.connect(direct_grace=0.0 if cause == "relay-lost" else 1.5)
    assert relayed(mine) == (cause == "relay-lost"), mine
    assert wait_for(peers.ping, 20, "ping on the first path")

    # The path dies: the relay goes dark, or the client's NAT gives it a new port (the
    # gateway's NAT drops what comes from that port). aioice alone would notice after
    # ~30 s (consent); the watchdog reports it within its 2 s (+ one probe) and closes.
    lost = time.monotonic()
    if cause == "relay-lost":
        lab.block_relay()
    else:
        lab.rebind_client_nat()
    stale = peers.client.agent.wait_event("stale", 10, session=1)
    detected = time.monotonic() - lost
    assert 2.0 <= stale["idle"] < 5.0 and detected < 6.0, (stale, detected)
    if cause == "relay-lost":
        # No relay and no STUN any more: the gateway becomes reachable as it is instead.
        peers.gateway.agent.wait_event("stale", 10, session=1)
        lab.nat_mode("gateway", "none")
        peers.relay = None

    # A fresh ICE session (new credentials, new candidates) finds the path there is now.
    mine, _ = peers.connect(direct_grace=1.5, fresh=True)
    assert not relayed(mine), mine
    if cause == "relay-lost":
        assert mine["remote"] == {"type": "host", "host": GW.inside, "port": mine["remote"]["port"]}, mine
    assert wait_for(peers.ping, 20, "ping on the new path")
    gap = time.monotonic() - lost
    print(f"{cause}: stale after {detected:.2f} s, traffic again after {gap:.2f} s")
    assert gap < 15, gap


# -- IceWireGuardClient through the dev portal, against a stand-in gateway -------------------

TOKEN = "natlab-gateway-token"
TURN_SECRET = "natlab-turn-secret"
USER_AGENT = "Debian/12 connlib/1.4.17 (x86_64; 6)"


class StandInGateway:
    """A gateway made of independent parts, to prove the client's signalling end to end.

    A WebSocket speaking the portal protocol (this process, its own thread and event loop),
    a controlled aioice agent and a wireguard-go in the gateway namespace. Each
    authorize_flow with new ICE credentials starts a fresh agent session, whose candidates
    go out as broadcast_ice_candidates; ice_candidates pushes feed the agent.
    """

    def __init__(self, lab: NatLab, portal: DevPortalProc) -> None:
        self.lab, self.portal = lab, portal
        self.external_id = f"standin-{os.urandom(4).hex()}"
        self.wg: StockWireGuard | None = None
        self.agent: IceAgent | None = None
        self.init: dict[str, Any] = {}
        self.sessions: list[tuple[str, str]] = []  # (client ufrag, gateway ufrag) per agent session
        self.errors: list[str] = []
        self._joined = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> StandInGateway:
        # wireguard-go first: its key is the gateway's public key at join.
        self.wg = new_wireguard(self.lab, "gateway", "100.64.0.1", "fd00:2021:1111::1")
        self.agent = IceAgent(self.lab, "gateway", "controlled", wg_port=self.wg.listen_port, label="standin-gateway")
        self._thread.start()
        wait_for(lambda: self._joined.is_set() or self.errors, 15, "stand-in gateway joined")
        assert not self.errors, self.errors
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        assert self.wg is not None
        query = urllib.parse.urlencode({"token": TOKEN, "external_id": self.external_id, "name": "standin",
                                        "public_key": self.wg.public_key})
        try:
            async with connect(f"ws://{self.portal.host}:{self.portal.port}/gateway/websocket?{query}",
                               user_agent_header=USER_AGENT, proxy=None) as ws:
                self.ws, self.ref = ws, 0
                await self._send("phx_join", {})
                reader = asyncio.create_task(self._read())
                await self._stop.wait()
                reader.cancel()
        except Exception as exc:  # the test reads them
            self.errors.append(f"{type(exc).__name__}: {exc}")

    async def _send(self, event: str, payload: Any) -> None:
        self.ref += 1
        await self.ws.send(json.dumps({"topic": "gateway", "event": event, "payload": payload, "ref": self.ref}))

    async def _read(self) -> None:
        async for text in self.ws:
            frame = json.loads(text)
            event, payload = frame["event"], frame["payload"]
            try:
                if event == "init":
                    await asyncio.to_thread(self._on_init, payload)
                elif event == "authorize_flow":
                    await asyncio.to_thread(self._on_authorize, payload)
                    await self._send("flow_authorized", {"ref": payload["ref"]})
                elif event == "ice_candidates":
                    assert self.agent is not None
                    self.agent.add_remote(payload["candidates"])
            except Exception as exc:
                self.errors.append(f"{event}: {type(exc).__name__}: {exc}")

    def _on_init(self, payload: dict[str, Any]) -> None:
        assert self.wg is not None
        self.init = payload
        self.wg.ipv4, self.wg.ipv6 = payload["interface"]["ipv4"], payload["interface"]["ipv6"]
        self.wg.start()
        self._joined.set()

    def _on_authorize(self, payload: dict[str, Any]) -> None:
        assert self.wg is not None and self.agent is not None
        client, ours, theirs = payload["client"], payload["gateway_ice_credentials"], payload["client_ice_credentials"]
        if self.sessions and self.sessions[-1] == (theirs["username"], ours["username"]):
            return  # the same connection: keep the session
        self.wg.preshared_key = client["preshared_key"]
        self.wg.connect(client["public_key"], f"127.0.0.1:{self.agent.shim_port}",
                        [f"{client['ipv4']}/32", f"{client['ipv6']}/128"], keepalive=0)
        v4 = next(r for r in self.init["relays"] if not r["addr"].startswith("["))
        turn = {"server": v4["addr"], "username": v4["username"], "password": v4["password"]}
        number = self.agent.session(ours, theirs, turn, v4["addr"])
        self.sessions.append((theirs["username"], ours["username"]))
        threading.Thread(target=self._broadcast, args=(number, client["id"]), daemon=True).start()

    def _broadcast(self, number: int, client_id: str) -> None:
        assert self.agent is not None and self._loop is not None
        candidates = self.agent.gathered(number)
        payload = {"client_ids": [client_id], "candidates": candidates}
        asyncio.run_coroutine_threadsafe(self._send("broadcast_ice_candidates", payload), self._loop).result(10)


def test_ice_wireguard_client_signals_through_the_dev_portal(make_lab, tmp_path):
    """IceWireGuardClient end to end: flow answer, candidates both ways through the portal,
    TURN with the credentials the portal minted, and a renewed flow when the path dies."""
    lab = make_lab(gateway_nat="symmetric", client_nat="symmetric")
    # The portal mints coturn REST credentials from this secret; coturn accepts any of its
    # static-auth-secret values, so this one is added to the helper's own.
    (tmp_path / "turn-secret").write_text(TURN_SECRET + "\n")
    lab.start_coturn(extra=[f"--static-auth-secret={TURN_SECRET}"])
    portal = DevPortalProc(tmp_path, gateway_token=TOKEN, extra=[
        "--turn-secret-file", str(tmp_path / "turn-secret"), "--relay", ",".join(lab.relay_addrs())])
    lab.procs.append(portal)
    gateway = StandInGateway(lab, portal).start()
    client = None
    try:
        wg = new_wireguard(lab, "client")
        body: dict[str, Any] = {"gateway": gateway.external_id, "protocol": "1.4",
                                "client": wg.flow_client() | {"ice": ice_credentials()},
                                "resource": {"type": "cidr", "address": "198.18.2.0/24"}}

        def new_flow() -> dict[str, Any]:
            body["client"]["ice"] = ice_credentials()  # a new ICE session, as a restarted client
            status, flow = portal.api("POST", "/v1/flows", body)
            assert status == 201 and flow["status"] == "authorized", flow
            return flow

        flow = new_flow()
        assert flow["relays"] and flow["ice"]["gateway"], flow
        client = IceWireGuardClient(lab, flow, portal, relay=True, wg=wg, renew=new_flow, watchdog=2.0).start()
        pair = client.wait_connected(20)
        assert relayed(pair), pair  # two symmetric NATs
        tunnel_ip = flow["gateway"]["ipv4"]
        assert wait_for(lambda: client.ping(tunnel_ip, wait=1), 20, "ping the stand-in gateway's tunnel address")

        # The relay restarts and forgets every allocation. The watchdog notices, the client
        # asks the portal for a new flow (new ICE credentials) and runs ICE again, with a
        # fresh allocation on either side. (A NAT rebinding would not do: coturn's
        # permissions are per peer address, so a relayed path survives a new client port.)
        lost = time.monotonic()
        lab.kill_relay()
        lab.start_coturn(extra=[f"--static-auth-secret={TURN_SECRET}"])
        again = client.wait_connected(20, session=2)
        assert client.restarts == 1 and client.flow["flow_id"] != flow["flow_id"], client.flow
        assert len(gateway.sessions) == 2, gateway.sessions
        assert relayed(again), again
        assert wait_for(lambda: client.ping(tunnel_ip, wait=1), 20, "ping after the new session")
        print(f"relay restarted: traffic again after {time.monotonic() - lost:.2f} s")
        assert not client.errors and not gateway.errors, (client.errors, gateway.errors)
    finally:
        if client is not None:
            client.stop()
        gateway.stop()
