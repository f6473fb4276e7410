"""The dev portal's relays, ICE credentials and candidates, seen from a gateway's socket.

A scripted gateway (a plain WebSocket client speaking the Phoenix channel) joins the real
portal process, so every message the portal sends is checked as it arrives.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import time
import urllib.parse
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from gateway_pkg.devportal.relays import gateway_salt
from tests.coturn import Coturn
from tests.procs import DevPortalProc

pytestmark = pytest.mark.integration

TOKEN = "gw-token-for-relay-tests"
SECRET = "turn-secret-for-relay-tests"
TTL = 600
DUAL = ["198.18.9.1:3478", "[fd00:9::1]:3478"]
USER_AGENT = "Debian/12 connlib/1.4.17 (x86_64; 6)"


def key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def coturn_password(username: str) -> str:
    return base64.b64encode(hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()).decode()


def assert_minted(username: str, password: str, expires_at: int, salt: str | None = None) -> None:
    expiry, _, got_salt = username.partition(":")
    assert int(expiry) == expires_at and abs(expires_at - (time.time() + TTL)) < 30
    assert password == coturn_password(username)
    if salt is not None:
        assert got_salt == salt


class FakeGateway:
    """One gateway socket: join, read pushes in order, send events and read their replies."""

    def __init__(self, ws: ClientConnection, public_key: str) -> None:
        self.ws, self.public_key = ws, public_key
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.ref = 0
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, portal: DevPortalProc, name: str = "gw") -> FakeGateway:
        public_key = key()
        query = urllib.parse.urlencode({"token": TOKEN, "external_id": f"{name}-{os.urandom(4).hex()}",
                                        "name": name, "public_key": public_key})
        ws = await connect(f"ws://127.0.0.1:{portal.port}/gateway/websocket?{query}",
                           user_agent_header=USER_AGENT, proxy=None)
        return cls(ws, public_key)

    async def _read(self) -> None:
        async for text in self.ws:
            await self.frames.put(json.loads(text))

    async def next_frame(self, within: float = 10) -> dict[str, Any]:
        return await asyncio.wait_for(self.frames.get(), within)

    async def push(self, event: str, within: float = 10) -> Any:
        """The next frame, which must be the portal pushing `event`; its payload."""
        frame = await self.next_frame(within)
        assert frame["event"] == event, frame
        return frame["payload"]

    async def send(self, event: str, payload: Any) -> dict[str, Any]:
        self.ref += 1
        await self.ws.send(json.dumps({"topic": "gateway", "event": event, "payload": payload, "ref": self.ref}))
        frame = await self.next_frame()
        assert frame["event"] == "phx_reply" and frame["ref"] == self.ref, frame
        return frame["payload"]

    async def join(self) -> dict[str, Any]:
        assert (await self.send("phx_join", {}))["status"] == "ok"
        return await self.push("init")

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


async def api(portal: DevPortalProc, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """The admin API off the event loop, so the scripted gateway keeps reading meanwhile."""
    return await asyncio.to_thread(portal.api, method, path, body)


@pytest.fixture
def portal(tmp_path):
    (tmp_path / "turn-secret").write_text(SECRET + "\n")
    proc = DevPortalProc(tmp_path, gateway_token=TOKEN, extra=[
        "--turn-secret-file", str(tmp_path / "turn-secret"), "--relay", ",".join(DUAL),
        "--relay-ttl", str(TTL), "--reply-timeout", "3"])
    yield proc
    proc.stop()


@pytest.fixture
async def gateway(portal):
    gw = await FakeGateway.connect(portal)
    gw.init = await gw.join()
    yield gw
    await gw.close()


def flow_body(gateway: str, protocol: str = "1.4", ice: dict[str, str] | None = None) -> dict[str, Any]:
    client = {"public_key": key(), "preshared_key": key(), "ipv4": "100.64.0.2", "ipv6": "fd00:2021:1111::2"}
    return {"gateway": gateway, "protocol": protocol, "client": client | ({"ice": ice} if ice else {}),
            "resource": {"type": "cidr", "address": "10.9.0.0/24"}}


async def gateway_id(portal: DevPortalProc) -> str:
    status, gateways = await api(portal, "GET", "/v1/gateways")
    assert status == 200 and len(gateways) == 1, gateways
    return gateways[0]["id"]


def assert_secrets_not_logged(portal: DevPortalProc, *passwords: str) -> None:
    output = portal.output()
    assert SECRET not in output
    for password in passwords:
        assert password not in output


async def test_init_carries_one_entry_per_address_with_gateway_credentials(portal, gateway):
    relays = gateway.init["relays"]
    assert [r["addr"] for r in relays] == DUAL
    assert len({r["id"] for r in relays}) == 1 and all(r["type"] == "turn" for r in relays)
    for relay in relays:
        assert_minted(relay["username"], relay["password"], relay["expires_at"], gateway_salt(gateway.public_key))

    status, body = await api(portal, "GET", "/v1/relays")
    assert status == 200 and len(body["relays"]) == 1
    view = body["relays"][0]
    assert view["id"] == relays[0]["id"] and view["addrs"] == DUAL and view["realm"] == "firezone"
    assert_minted(view["username"], view["password"], view["expires_at"])
    assert view["username"] != relays[0]["username"]  # client credentials have their own salt
    assert_secrets_not_logged(portal, relays[0]["password"], view["password"])


async def test_added_and_removed_relays_reach_every_gateway(portal, gateway):
    other = await FakeGateway.connect(portal, "other")
    await other.join()
    try:
        status, added = await api(portal, "POST", "/v1/relays", {"addrs": ["198.18.9.2:3479"]})
        assert status == 201, added
        usernames = set()
        for gw in (gateway, other):
            presence = await gw.push("relays_presence")
            assert presence["disconnected_ids"] == []
            [entry] = presence["connected"]
            assert entry["id"] == added["id"] and entry["addr"] == "198.18.9.2:3479" and entry["type"] == "turn"
            assert_minted(entry["username"], entry["password"], entry["expires_at"], gateway_salt(gw.public_key))
            usernames.add(entry["username"])
        assert len(usernames) == 2  # minted per gateway

        status, body = await api(portal, "GET", "/v1/relays")
        assert [r["id"] for r in body["relays"]][1:] == [added["id"]]

        status, _ = await api(portal, "DELETE", f"/v1/relays/{added['id']}")
        assert status == 204
        for gw in (gateway, other):
            assert await gw.push("relays_presence") == {"connected": [], "disconnected_ids": [added["id"]]}
        assert (await api(portal, "DELETE", f"/v1/relays/{added['id']}"))[0] == 404

        # A reconnecting gateway's init lists what is configured now.
        late = await FakeGateway.connect(portal, "late")
        assert {r["addr"] for r in (await late.join())["relays"]} == set(DUAL)
        await late.close()
    finally:
        await other.close()


@pytest.mark.parametrize(("body", "message"), [
    ({"addrs": "198.18.9.2:3479"}, "addrs must be a list"),
    ({"addrs": []}, "at least one address"),
    ({"addrs": ["relay.test:3478"]}, "needs an IP address"),
    ({"addrs": ["198.18.9.2:3479", "198.18.9.3:3479"]}, "at most one IPv4 and one IPv6"),
])
async def test_bad_relays_are_refused_and_nothing_is_sent(portal, gateway, body, message):
    status, answer = await api(portal, "POST", "/v1/relays", body)
    assert status == 400 and message in answer["error"], answer
    assert gateway.frames.empty()


async def test_14_flow_carries_the_ice_credentials_and_candidates_reach_the_gateway(portal, gateway):
    ice = {"username": "cLnt", "password": "client+ice/password0123"}
    body = flow_body(await gateway_id(portal), ice=ice)
    answer_task = asyncio.create_task(api(portal, "POST", "/v1/flows", body))
    authorize = await gateway.push("authorize_flow")
    assert authorize["client_ice_credentials"] == ice
    assert (await gateway.send("flow_authorized", {"ref": authorize["ref"]}))["status"] == "ok"
    status, flow = await answer_task
    assert status == 201 and flow["status"] == "authorized", flow
    assert flow["ice"] == {"client": ice, "gateway": authorize["gateway_ice_credentials"]}
    [relay] = flow["relays"]
    assert relay["addrs"] == DUAL and relay["realm"] == "firezone"
    assert_minted(relay["username"], relay["password"], relay["expires_at"])

    candidates = ["candidate:1 1 UDP 2130706431 198.18.1.2 50000 typ host",
                  "candidate:2 1 UDP 1694498815 203.0.113.7 40000 typ srflx raddr 0.0.0.0 rport 0"]
    status, sent = await api(portal, "POST", f"/v1/flows/{flow['flow_id']}/candidates", {"candidates": candidates})
    assert status == 202 and sent["event"] == "ice_candidates", sent
    assert await gateway.push("ice_candidates") == {"client_id": flow["client_id"], "candidates": candidates}
    status, _ = await api(portal, "POST", f"/v1/flows/{flow['flow_id']}/candidates",
                          {"candidates": candidates[1:], "invalidate": True})
    assert status == 202
    assert await gateway.push("invalidate_ice_candidates") == {"client_id": flow["client_id"],
                                                                "candidates": candidates[1:]}
    for bad in ({"candidates": "candidate:1"}, {"candidates": [1]}, {"candidates": [], "invalidate": "yes"}):
        assert (await api(portal, "POST", f"/v1/flows/{flow['flow_id']}/candidates", bad))[0] == 400
    assert (await api(portal, "POST", "/v1/flows/nope/candidates", {"candidates": []}))[0] == 404

    # Reauthorizing re-sends the same credentials, so the gateway keeps its ICE session.
    again_task = asyncio.create_task(api(portal, "POST", f"/v1/flows/{flow['flow_id']}/reauthorize"))
    again = await gateway.push("authorize_flow")
    assert again["client_ice_credentials"] == ice
    assert again["gateway_ice_credentials"] == authorize["gateway_ice_credentials"]
    await gateway.send("flow_authorized", {"ref": again["ref"]})
    assert (await again_task)[0] == 200


async def test_ice_sessions_are_per_client_and_gateway(portal, gateway):
    body = flow_body(await gateway_id(portal)) | {"wait": False}
    status, first = await api(portal, "POST", "/v1/flows", body)
    assert status == 201
    first_push = await gateway.push("authorize_flow")
    assert first["ice"]["client"] == first_push["client_ice_credentials"]  # generated when absent

    body["resource"] = {"type": "cidr", "address": "10.9.1.0/24"}
    status, second = await api(portal, "POST", "/v1/flows", body)
    second_push = await gateway.push("authorize_flow")
    assert second["ice"] == first["ice"]  # a second resource rides the same connection
    assert second_push["gateway_ice_credentials"] == first_push["gateway_ice_credentials"]

    restarted = {"username": "rstr", "password": "restartedClientPass0022"}
    body["client"] = body["client"] | {"ice": restarted}
    status, third = await api(portal, "POST", "/v1/flows", body)
    third_push = await gateway.push("authorize_flow")
    assert third["ice"]["client"] == restarted == third_push["client_ice_credentials"]
    assert third["ice"]["gateway"] != first["ice"]["gateway"]

    bad = body | {"client": body["client"] | {"ice": {"username": "a:b", "password": "short"}}}
    status, answer = await api(portal, "POST", "/v1/flows", bad)
    assert status == 400 and "client.ice" in answer["error"]


async def test_13_flow_answer_has_the_gateways_ice_from_connection_ready(portal, gateway):
    ice = {"username": "cl13", "password": "clientIceFor13Password"}
    body = flow_body(await gateway_id(portal), "1.3", ice)
    answer_task = asyncio.create_task(api(portal, "POST", "/v1/flows", body))
    request = await gateway.push("request_connection")
    assert request["client"]["payload"]["ice_parameters"] == ice
    ours = {"username": "gw13", "password": "gatewayAnswerPassword22"}
    reply = await gateway.send("connection_ready", {
        "ref": request["ref"], "gateway_payload": {"ConnectionAccepted": {"ice_parameters": ours}}})
    assert reply["status"] == "ok"
    status, flow = await answer_task
    assert status == 201 and flow["status"] == "authorized", flow
    assert flow["ice"] == {"client": ice, "gateway": ours}
    assert [r["addrs"] for r in flow["relays"]] == [DUAL]

    # allow_access for a further resource reuses that connection and reports its credentials.
    body["resource"] = {"type": "cidr", "address": "10.9.1.0/24"}
    status, second = await api(portal, "POST", "/v1/flows", body)
    assert (await gateway.push("allow_access"))["client_id"] == flow["client_id"]
    assert status == 201 and second["event"] == "allow_access" and second["ice"] == flow["ice"]


async def test_gateway_candidates_are_recorded_per_client(portal, gateway):
    status, flow = await api(portal, "POST", "/v1/flows", flow_body(await gateway_id(portal)) | {"wait": False})
    assert status == 201
    await gateway.push("authorize_flow")
    path = f"/v1/flows/{flow['flow_id']}/candidates"
    started = time.monotonic()
    assert await api(portal, "GET", path + "?wait=0.3") == (200, {"candidates": []})
    assert time.monotonic() - started >= 0.3

    ours = ["candidate:1 1 udp 2130706431 198.18.1.1 52625 typ host",
            "candidate:2 1 udp 1694498815 203.0.113.1 52625 typ srflx raddr 198.18.1.1 rport 52625",
            "candidate:3 1 udp 16777215 198.18.9.1 49152 typ relay raddr 203.0.113.1 rport 52625"]
    waiting = asyncio.create_task(api(portal, "GET", path + "?wait=20"))
    done, _ = await asyncio.wait({waiting}, timeout=0.5)
    assert not done  # still waiting: nothing was broadcast yet
    reply = await gateway.send("broadcast_ice_candidates",
                               {"client_ids": [flow["client_id"], "someone-else"], "candidates": ours[:2]})
    assert reply == {"status": "ok", "response": {}}
    started = time.monotonic()
    assert await waiting == (200, {"candidates": ours[:2]})
    assert time.monotonic() - started < 10

    await gateway.send("broadcast_ice_candidates", {"client_ids": [flow["client_id"]], "candidates": ours[1:]})
    assert await api(portal, "GET", path) == (200, {"candidates": ours})
    reply = await gateway.send("broadcast_invalidated_ice_candidates",
                               {"client_ids": [flow["client_id"]], "candidates": [ours[0]]})
    assert reply["status"] == "ok"
    assert await api(portal, "GET", path + "?wait=5") == (200, {"candidates": ours[1:]})
    client_path = f"/v1/clients/{flow['client_id']}/candidates"
    assert await api(portal, "GET", client_path) == (200, {"candidates": ours[1:]})
    assert await api(portal, "GET", f"{client_path}?gateway={flow['gateway_id']}") == (200, {"candidates": ours[1:]})
    assert await api(portal, "GET", "/v1/clients/someone-else/candidates") == (200, {"candidates": ours[:2]})
    assert (await api(portal, "GET", path + "?wait=soon"))[0] == 400

    reply = await gateway.send("broadcast_ice_candidates", {"client_ids": "x", "candidates": ours})
    assert reply["status"] == "error"

    # The connection is gone with its last flow, and so are its candidates.
    assert (await api(portal, "DELETE", f"/v1/flows/{flow['flow_id']}"))[0] == 200
    assert await gateway.push("reject_access")
    assert await api(portal, "GET", client_path) == (200, {"candidates": []})


# --- a real coturn accepts what the portal mints ---------------------------------------------
# A hand-built Allocate (RFC 8656 §7.2, long-term credentials per RFC 8489 §9.2), independent
# of our own STUN and TURN code.

MAGIC_COOKIE = 0x2112A442
ALLOCATE, ALLOCATE_SUCCESS, ALLOCATE_ERROR = 0x0003, 0x0103, 0x0113
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE, REALM, NONCE, REQUESTED_TRANSPORT = 0x6, 0x8, 0x9, 0x14, 0x15, 0x19


def stun_message(kind: int, attributes: list[tuple[int, bytes]], key: bytes | None = None) -> bytes:
    body = b"".join(struct.pack("!HH", t, len(v)) + v + bytes(-len(v) % 4) for t, v in attributes)
    tid = os.urandom(12)
    if key is None:
        return struct.pack("!HHI12s", kind, len(body), MAGIC_COOKIE, tid) + body
    header = struct.pack("!HHI12s", kind, len(body) + 24, MAGIC_COOKIE, tid)  # length includes the MAC
    mac = hmac.new(key, header + body, hashlib.sha1).digest()
    return header + body + struct.pack("!HH", MESSAGE_INTEGRITY, 20) + mac


def stun_parse(data: bytes) -> tuple[int, dict[int, bytes]]:
    kind, length = struct.unpack("!HH", data[:4])
    attributes, at = {}, 20
    while at < 20 + length:
        attr, size = struct.unpack("!HH", data[at:at + 4])
        attributes.setdefault(attr, data[at + 4:at + 4 + size])
        at += 4 + size + (-size % 4)
    return kind, attributes


def allocate(server: tuple[str, int], username: str, password: str) -> tuple[int, bytes]:
    """Allocate with long-term credentials: the final response's type and ERROR-CODE (if any)."""
    transport = (REQUESTED_TRANSPORT, bytes([17, 0, 0, 0]))  # UDP
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(stun_message(ALLOCATE, [transport]), server)
        kind, attrs = stun_parse(sock.recv(2048))
        assert kind == ALLOCATE_ERROR and attrs[ERROR_CODE][2:4] == bytes([4, 1]), (kind, attrs)  # 401
        realm, nonce = attrs[REALM], attrs[NONCE]
        assert realm == b"firezone"
        key = hashlib.md5(f"{username}:{realm.decode()}:{password}".encode()).digest()  # RFC 8489 §9.2.2
        signed = [transport, (USERNAME, username.encode()), (REALM, realm), (NONCE, nonce)]
        sock.sendto(stun_message(ALLOCATE, signed, key), server)
        kind, attrs = stun_parse(sock.recv(2048))
        return kind, attrs.get(ERROR_CODE, b"")


async def test_a_real_coturn_accepts_the_minted_credentials(tmp_path):
    # coturn takes several static secrets: the helper's own and the one the portal is given.
    with Coturn(tmp_path, extra=[f"--static-auth-secret={SECRET}"]) as relay:
        (tmp_path / "turn-secret").write_text(SECRET + "\n")
        addr = f"{relay.address[0]}:{relay.address[1]}"
        portal = DevPortalProc(tmp_path, gateway_token=TOKEN, extra=[
            "--turn-secret-file", str(tmp_path / "turn-secret"), "--relay", addr, "--relay-ttl", str(TTL)])
        gateway = None
        try:
            gateway = await FakeGateway.connect(portal)
            [entry] = (await gateway.join())["relays"]
            assert entry["addr"] == addr
            assert await asyncio.to_thread(allocate, relay.address, entry["username"], entry["password"]) \
                == (ALLOCATE_SUCCESS, b"")
            [view] = (await api(portal, "GET", "/v1/relays"))[1]["relays"]
            assert await asyncio.to_thread(allocate, relay.address, view["username"], view["password"]) \
                == (ALLOCATE_SUCCESS, b"")
            # The control: coturn does check, a password off by one character is refused.
            wrong = ("A" if view["password"][0] != "A" else "B") + view["password"][1:]
            kind, error = await asyncio.to_thread(allocate, relay.address, view["username"], wrong)
            assert kind == ALLOCATE_ERROR and error[2:4] == bytes([4, 1]), (kind, error)
        finally:
            if gateway is not None:
                await gateway.close()
            portal.stop()
            print(relay.output()[-2000:])
