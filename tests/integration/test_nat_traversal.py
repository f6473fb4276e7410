"""Our gateway behind a NAT, reached by an independent client (aioice + wireguard-go) through
ICE and, where no direct path exists, through a real TURN relay (coturn).

The topology is tests/natlab.py's (drawn in docs/testing.md): a public segment with coturn, the
gateway behind its own NAT (nothing forwarded inbound), the client behind another. The dev
portal in the root namespace mints the relay credentials and carries candidates both ways.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway_pkg.ice import stun
from gateway_pkg.ice.candidate import Candidate, CandidateType
from tests import natlab
from tests.coturn import Coturn
from tests.iceclient import IceWireGuardClient, ice_credentials, new_wireguard
from tests.lab import LAB_TOKEN, Lab
from tests.natlab import NatLab
from tests.procs import VENV_BIN, DevPortalProc, base_env, free_port, http, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]

TURN_SECRET = "nat-traversal-turn-secret"
RESOURCE = NatLab.RESOURCE
ALLOWED_PORT, FILTERED_PORT = 8080, 8081


class NatScenario:
    """A NAT lab with coturn, the dev portal (relays on), our gateway and HTTP resources."""

    def __init__(self, tmp: Path, *, gateway_nat: str, client_nat: str, relay: bool = True,
                 relay_addrs: list[str] | None = None) -> None:
        self.tmp = tmp
        self.net = NatLab(tmp, gateway_nat=gateway_nat, client_nat=client_nat).up()
        self.clients: list[IceWireGuardClient] = []
        self.relay = relay
        try:
            (tmp / "turn-secret").write_text(TURN_SECRET + "\n")
            extra: list[str] = []
            if relay:
                self.net.start_coturn(extra=[f"--static-auth-secret={TURN_SECRET}"])
                relay_addrs = relay_addrs or [",".join(self.net.relay_addrs())]
            for addrs in relay_addrs or []:
                extra += ["--relay", addrs]
            if extra:
                extra += ["--turn-secret-file", str(tmp / "turn-secret")]
            self.portal = DevPortalProc(tmp, host=self.net.MGMT_ROOT, gateway_token=LAB_TOKEN, extra=extra)
            self.lab = Lab(self.net, self.portal)
        except BaseException:
            self.net.down()
            raise

    def start_gateway(self, wait_ready: bool = True, env: dict[str, str] | None = None) -> None:
        if wait_ready:
            self.lab.start_gateway(env or {})
            return
        # Not ready is what the test looks at: start it and wait for its health endpoint only.
        lab = self.lab
        lab.health = f"http://{self.net.MGMT_GATEWAY}:8080"
        env = {"FIREZONE_TOKEN": LAB_TOKEN, "FIREZONE_ID": "b" * 64, "FIREZONE_API_URL": self.portal.url,
               "HEALTH_CHECK_ADDR": f"{self.net.MGMT_GATEWAY}:8080", "FIREZONE_NO_TELEMETRY": "true"}
        init = self.net.spawn("gateway", [str(VENV_BIN / "firezone-gateway-init"), "--egress-interface",
                                          f"fr{self.net.tag}g"], base_env(), "gateway-init")
        assert init.popen.wait(30) == 0, init.output()
        lab.gateway = self.net.spawn("gateway", [str(VENV_BIN / "firezone-gateway")], base_env() | env, "gateway")
        wait_for(lambda: lab.readyz() is not None, 20, "gateway health endpoint")

    def flow(self, wg: Any, protocol: str = "1.4",
             port: int | None = None) -> tuple[dict[str, Any], Callable[[], dict[str, Any]]]:
        filters = [{"protocol": "tcp", "port_range_start": port, "port_range_end": port},
                   {"protocol": "icmp"}] if port else []
        body: dict[str, Any] = {"gateway": self.lab.gateway_record()["id"], "protocol": protocol,
                                "client": wg.flow_client() | {"ice": ice_credentials()},
                                "resource": {"type": "cidr", "address": "198.18.2.0/24", "filters": filters}}

        def new_flow() -> dict[str, Any]:
            body["client"]["ice"] = ice_credentials()  # a restarted client: a new ICE session
            status, answer = self.portal.api("POST", "/v1/flows", body)
            assert status == 201, answer
            return answer

        return new_flow(), new_flow

    def client(self, protocol: str = "1.4", port: int | None = ALLOWED_PORT, relay: bool = True,
               family: int = 4, watchdog: float = 3.0, ipv4: bool = True) -> tuple[IceWireGuardClient, dict[str, Any]]:
        wg = new_wireguard(self.net, "client")
        flow, renew = self.flow(wg, protocol, port)
        client = IceWireGuardClient(self.net, flow, self.portal, relay=relay, wg=wg, renew=renew,
                                    routes=["198.18.2.0/24"], watchdog=watchdog, family=family,
                                    ipv4=ipv4).start()
        self.clients.append(client)
        return client, flow

    def metric(self, name: str, **labels: str) -> float:
        text = self.lab.metrics()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            match = re.match(r"^(\w+)(\{[^}]*\})?\s+(\S+)$", line)
            if match is None or match.group(1) != name:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(match.group(3))
        return total

    def curl(self, client: IceWireGuardClient, port: int, timeout: float = 3) -> tuple[int, str]:
        return self.lab.client_sh("curl", "-sS", "--max-time", str(timeout), f"http://{RESOURCE}:{port}/",
                                  timeout=timeout + 5)

    def close(self) -> None:
        for client in self.clients:
            client.stop()
        self.portal.stop()
        self.net.down()


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Callable[..., NatScenario]]:
    reason = natlab.available()
    if reason:
        pytest.skip(reason)
    made: list[NatScenario] = []

    def make(**kwargs: Any) -> NatScenario:
        made.append(NatScenario(tmp_path, **kwargs))
        return made[-1]

    yield make
    for each in made:
        each.close()
    for log in sorted(tmp_path.rglob("*.log")):
        print(f"===== {log.name} (last 40 lines)")
        print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))
    left = [name for each in made for name in each.net.leftovers()]
    assert not left, f"left behind: {left}"


def relayed(pair: dict[str, Any]) -> bool:
    return "relay" in (pair["local"]["type"], pair["remote"]["type"])


def serve(s: NatScenario) -> None:
    s.lab.serve_http(RESOURCE, ALLOWED_PORT, "allowed")
    s.lab.serve_http(RESOURCE, FILTERED_PORT, "filtered")


def test_two_symmetric_nats_go_through_the_relay_and_policy_still_holds(scenario):
    s = scenario(gateway_nat="symmetric", client_nat="symmetric")
    s.start_gateway(env={"FIREZONE_METRICS_PER_CLIENT": "true"})  # the per-client path series below
    serve(s)
    client, flow = s.client()
    pair = client.wait_connected(30)
    assert relayed(pair), pair
    assert wait_for(lambda: client.ping(RESOURCE, wait=1), 20, "ping the resource through the relay")
    assert s.curl(client, ALLOWED_PORT) == (0, "allowed")
    code, _ = s.curl(client, FILTERED_PORT, timeout=2)
    assert code != 0  # the filter allows only port 8080 and ICMP
    assert s.metric("firezone_gateway_ice_connections", path="relay") == 1
    assert s.metric("firezone_gateway_ice_client_path", client_id=flow["client_id"], path="relay") == 1
    assert s.metric("firezone_gateway_relay_bytes_total", direction="in") > 0
    assert s.metric("firezone_gateway_relay_bytes_total", direction="out") > 0
    assert s.metric("firezone_gateway_relays_allocated") >= 1
    # Host candidates come from the uplink only: no tunnel, resource or management address leaks.
    status, body = s.portal.api("GET", f"/v1/flows/{flow['flow_id']}/candidates")
    assert status == 200, body
    hosts = {c.address for c in map(Candidate.from_sdp, body["candidates"]) if c.type == CandidateType.HOST}
    assert hosts == {NatLab.GATEWAY.inside, NatLab.GATEWAY.inside6}, hosts


def test_a_reachable_gateway_takes_the_direct_path_and_no_relay_traffic(scenario):
    s = scenario(gateway_nat="none", client_nat="symmetric")
    s.start_gateway()
    serve(s)
    client, _ = s.client()
    pair = client.wait_connected(30)
    assert not relayed(pair), pair
    assert wait_for(lambda: client.ping(RESOURCE, wait=1), 20, "ping the resource directly")
    assert s.curl(client, ALLOWED_PORT) == (0, "allowed")
    assert s.metric("firezone_gateway_relay_bytes_total", direction="in") == 0
    assert s.metric("firezone_gateway_relay_bytes_total", direction="out") == 0
    assert s.metric("firezone_gateway_ice_connections", path="relay") == 0


def test_a_1_3_connection_over_ice(scenario):
    s = scenario(gateway_nat="symmetric", client_nat="symmetric")
    s.start_gateway()
    serve(s)
    client, flow = s.client(protocol="1.3")
    assert flow["ice"]["gateway"], flow  # from connection_ready
    assert relayed(client.wait_connected(30))
    assert wait_for(lambda: client.ping(RESOURCE, wait=1), 20, "ping over a 1.3 connection")


def test_ipv6_host_srflx_and_relay_candidates_and_an_ipv6_relayed_tunnel(scenario):
    s = scenario(gateway_nat="symmetric", client_nat="symmetric")
    s.start_gateway()
    client, flow = s.client(family=6, ipv4=False)
    pair = client.wait_connected(30)
    assert relayed(pair), pair
    assert ":" in pair["remote"]["host"] and ":" in pair["local"]["host"], pair
    assert wait_for(lambda: client.ping(RESOURCE, wait=1), 20, "ping through the IPv6 relay")
    status, body = s.portal.api("GET", f"/v1/flows/{flow['flow_id']}/candidates")
    assert status == 200, body
    ours = {(c.type, c.version) for c in map(Candidate.from_sdp, body["candidates"])}
    assert {(CandidateType.HOST, 6), (CandidateType.SRFLX, 6), (CandidateType.RELAY, 6)} <= ours, ours


def test_relay_loss_mid_session_recovers_within_15_s(scenario):
    s = scenario(gateway_nat="symmetric", client_nat="symmetric")
    s.start_gateway()
    client, _ = s.client(watchdog=2.0)
    assert relayed(client.wait_connected(30))
    assert wait_for(lambda: client.ping(RESOURCE, wait=1), 20, "ping before the relay dies")
    lost = time.monotonic()
    s.net.kill_relay()
    s.net.start_coturn(extra=[f"--static-auth-secret={TURN_SECRET}"])
    wait_for(lambda: client.ping(RESOURCE, wait=1), 30, "ping after the relay came back")
    gap = time.monotonic() - lost
    print(f"relay lost mid-session: traffic again after {gap:.1f} s")
    assert gap < 15, f"traffic resumed only after {gap:.1f} s"


def test_the_client_nat_rebinds_and_traffic_follows(scenario):
    s = scenario(gateway_nat="none", client_nat="cone")
    s.start_gateway()
    client, _ = s.client()
    assert not relayed(client.wait_connected(30))
    assert wait_for(lambda: client.ping(RESOURCE, wait=1), 20, "ping before rebinding")
    s.net.rebind_client_nat()
    started = time.monotonic()
    wait_for(lambda: client.ping(RESOURCE, wait=1), 30, "ping after the client's NAT rebound")
    print(f"client NAT rebinding: traffic again after {time.monotonic() - started:.1f} s")


def test_relays_configured_but_none_allocated_is_not_ready(scenario):
    dead = f"{NatLab.RELAY}:{free_port(socket.SOCK_DGRAM)}"  # nothing listens there
    s = scenario(gateway_nat="symmetric", client_nat="symmetric", relay=False, relay_addrs=[dead])
    s.start_gateway(wait_ready=False)

    def reason() -> str | None:
        status, body = http("GET", s.lab.health + "/readyz", timeout=2)
        return str(body) if status == 503 and "none allocated" in str(body) else None

    assert wait_for(reason, 20, "/readyz naming the missing allocation")


def test_malformed_stun_is_dropped_and_counted(scenario):
    s = scenario(gateway_nat="symmetric", client_nat="symmetric")
    s.start_gateway()
    good = stun.encode(stun.request(stun.Method.BINDING, bytes(12),
                                    (stun.Attr.USERNAME, b"nobody:else")))
    bad_fingerprint = bytearray(good)
    bad_fingerprint[-1] ^= 0xFF
    truncated = good[:-3]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in (good, bytes(bad_fingerprint), truncated):
            sock.sendto(datagram, (s.net.MGMT_GATEWAY, 52625))
    assert wait_for(lambda: s.metric("firezone_gateway_stun_dropped_total") >= 3, 10, "STUN drops counted")
    assert s.lab.gateway.running()


SECOND_RELAY = "198.18.100.11"


def test_a_relay_dropped_from_presence_is_released_and_traffic_carries_on(scenario, tmp_path):
    s = scenario(gateway_nat="symmetric", client_nat="symmetric")
    # A second relay, so that a path remains between two symmetric NATs when the first leaves.
    natlab.sh("ip", "addr", "add", f"{SECOND_RELAY}/24", "dev", NatLab.PUB_BRIDGE, ns=s.net.ns["pub"])
    second = Coturn(tmp_path, listening_ip=SECOND_RELAY, relay_ip=SECOND_RELAY, port=NatLab.RELAY_PORT,
                    ns=s.net.ns["pub"], extra=[f"--static-auth-secret={TURN_SECRET}"])
    s.net.coturns.append(second)
    s.start_gateway()
    client, _ = s.client(watchdog=2.0)
    assert relayed(client.wait_connected(30))
    assert wait_for(lambda: client.ping(RESOURCE, wait=1), 20, "ping before the relay leaves")
    status, body = s.portal.api("POST", "/v1/relays", {"addrs": [f"{SECOND_RELAY}:{NatLab.RELAY_PORT}"]})
    assert status == 201, body
    assert wait_for(lambda: s.metric("firezone_gateway_relays_allocated") == 3, 10, "the second relay allocated")
    first = next(r for r in s.portal.api("GET", "/v1/relays")[1]["relays"] if r["id"] != body["id"])
    lost = time.monotonic()
    assert s.portal.api("DELETE", f"/v1/relays/{first['id']}")[0] == 204

    def first_relay_candidates_gone() -> bool:
        body = s.portal.api("GET", f"/v1/flows/{client.flow['flow_id']}/candidates")[1]
        candidates = [Candidate.from_sdp(c) for c in body["candidates"]]
        return not any(c.type == CandidateType.RELAY and c.address in (NatLab.RELAY, NatLab.RELAY6)
                       for c in candidates)

    assert wait_for(first_relay_candidates_gone, 10, "the gateway invalidating the first relay's candidates")
    assert wait_for(lambda: s.metric("firezone_gateway_relays_allocated") == 1, 10, "its allocations released")
    wait_for(lambda: client.ping(RESOURCE, wait=1), 30, "ping after the relay left")
    gap = time.monotonic() - lost
    print(f"relay left relays_presence: traffic after {gap:.1f} s")
    assert gap < 15, f"traffic resumed only after {gap:.1f} s"
