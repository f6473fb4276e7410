"""The dev portal's fault injection (POST /v1/gateways/{id}/inject) and superseded sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway_pkg.devportal.server import (
    MAX_INJECT_COUNT,
    DevPortal,
    Injection,
    RequestError,
    Settings,
    oversized_frame,
    parse_injection,
)

ADMIN = {"Authorization": "Bearer admin-token-for-unit-tests"}
UA = {"User-Agent": "Linux/6.1 connlib/1.4.17 (x86_64; 6.1.0)"}
PUBLIC_KEY = base64.b64encode(os.urandom(32)).decode()


def socket_path(external_id: str = "gw-ext-1") -> str:
    key = PUBLIC_KEY.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    return f"/gateway/websocket?token=gw-token&external_id={external_id}&name=unit&public_key={key}"


@pytest.mark.parametrize("size", [128, 1000, 5 * 1024 * 1024 + 3])
def test_oversized_frame_is_a_phoenix_push_of_exactly_that_size(size):
    frame = oversized_frame(size)
    assert len(frame.encode()) == size
    doc = json.loads(frame)
    assert doc["topic"] == "gateway" and doc["ref"] is None and set(doc["payload"]) == {"padding"}


def test_parse_injection_accepts_each_kind():
    assert parse_injection({"text": "x", "count": 3}) == Injection("text", "x", count=3)
    assert parse_injection({"binary": base64.b64encode(b"\xff\x00").decode()}) == Injection("binary", b"\xff\x00")
    assert parse_injection({"oversized": 200}).data == oversized_frame(200)
    assert parse_injection({"replay": "init"}) == Injection("replay")
    assert parse_injection({"replay": "flow", "flow": "f1"}) == Injection("replay", replay_flow="f1")


@pytest.mark.parametrize("body", [
    {}, {"text": "a", "binary": ""}, {"text": 1}, {"binary": "not base64!"}, {"binary": 5},
    {"oversized": 10}, {"oversized": True}, {"oversized": 1 << 40}, {"replay": "everything"},
    {"replay": "flow"}, {"text": "a", "count": 0}, {"text": "a", "count": MAX_INJECT_COUNT + 1},
    {"text": "a", "count": "2"},
])
def test_parse_injection_refuses_bad_bodies_with_400(body):
    with pytest.raises(RequestError) as info:
        parse_injection(body)
    assert info.value.status == 400


@pytest.fixture
async def portal() -> AsyncIterator[tuple[DevPortal, TestClient]]:
    dev = DevPortal(Settings(gateway_tokens=["gw-token"], admin_token="admin-token-for-unit-tests"))
    client = TestClient(TestServer(dev.make_app()))
    await client.start_server()
    try:
        yield dev, client
    finally:
        await client.close()


async def join(client: TestClient, external_id: str = "gw-ext-1") -> aiohttp.ClientWebSocketResponse:
    ws = await client.ws_connect(socket_path(external_id), headers=UA)
    await ws.send_str(json.dumps({"topic": "gateway", "event": "phx_join", "payload": None, "ref": 0}))
    assert json.loads((await ws.receive(2)).data)["event"] == "phx_reply"
    assert json.loads((await ws.receive(2)).data)["event"] == "init"
    return ws


async def test_inject_sends_the_frames_on_the_gateways_socket(portal):
    dev, client = portal
    ws = await join(client)
    [gateway] = dev.state.gateways.values()
    url = f"/v1/gateways/{gateway.id}/inject"

    response = await client.post(url, json={"text": "not json {", "count": 2}, headers=ADMIN)
    assert response.status == 202
    assert await response.json() == {"gateway_id": gateway.id, "kind": "text", "count": 2, "bytes": 10,
                                     "disconnected": False}
    assert [(await ws.receive(2)).data for _ in range(2)] == ["not json {", "not json {"]

    response = await client.post(url, json={"binary": base64.b64encode(b"\xff\x01").decode()}, headers=ADMIN)
    assert response.status == 202
    message = await ws.receive(2)
    assert message.type == aiohttp.WSMsgType.BINARY and message.data == b"\xff\x01"

    response = await client.post(url, json={"replay": "init"}, headers=ADMIN)
    assert response.status == 202
    init = json.loads((await ws.receive(2)).data)
    assert init["event"] == "init" and init["payload"]["interface"]["ipv4"] == str(gateway.ipv4)

    response = await client.post(url, json={"oversized": 5000}, headers=ADMIN)
    assert response.status == 202 and len((await ws.receive(2)).data) == 5000

    # external_id works as well as id; errors in the admin API's shape.
    response = await client.post(f"/v1/gateways/{gateway.external_id}/inject", json={"text": "x"}, headers=ADMIN)
    assert response.status == 202 and (await ws.receive(2)).data == "x"
    assert (await client.post(url, json={"text": "x"})).status == 401
    assert (await client.post("/v1/gateways/nobody/inject", json={"text": "x"}, headers=ADMIN)).status == 404
    response = await client.post(url, json={"replay": "flow", "flow": "nope"}, headers=ADMIN)
    assert response.status == 404
    assert (await client.post(url, json={"text": 3}, headers=ADMIN)).status == 400
    await ws.close()
    for _ in range(100):  # the portal notices the close
        if not dev.sessions:
            break
        await asyncio.sleep(0.01)
    response = await client.post(url, json={"text": "x"}, headers=ADMIN)
    assert response.status == 409 and "not connected" in (await response.json())["error"]


async def test_replay_flow_sends_its_last_message_verbatim(portal):
    dev, client = portal
    ws = await join(client)
    [gateway] = dev.state.gateways.values()
    flow = {"gateway": gateway.id, "wait": False,
            "client": {"public_key": PUBLIC_KEY, "preshared_key": base64.b64encode(os.urandom(32)).decode(),
                       "ipv4": "100.64.0.2", "ipv6": "fd00:2021:1111::2"},
            "resource": {"type": "cidr", "address": "198.18.2.0/24"}}
    response = await client.post("/v1/flows", json=flow, headers=ADMIN)
    assert response.status == 201
    flow_id = (await response.json())["flow_id"]
    first = json.loads((await ws.receive(2)).data)
    assert first["event"] == "authorize_flow"
    response = await client.post(f"/v1/gateways/{gateway.id}/inject",
                                 json={"replay": "flow", "flow": flow_id, "count": 2}, headers=ADMIN)
    assert response.status == 202
    assert [json.loads((await ws.receive(2)).data) for _ in range(2)] == [first, first]
    await ws.close()


async def test_a_reconnecting_gateway_is_served_while_the_old_socket_closes(portal):
    dev, client = portal
    # The old socket's peer is gone: it never reads, so it never answers the closing
    # handshake. The new join must be answered at once, well within the gateway's 5 s join
    # timeout, and the portal keeps one record for the gateway.
    old = await join(client)
    new = await client.ws_connect(socket_path(), headers=UA)
    await new.send_str(json.dumps({"topic": "gateway", "event": "phx_join", "payload": None, "ref": 7}))
    answer = json.loads((await new.receive(1.0)).data)
    assert answer["event"] == "phx_reply" and answer["ref"] == 7
    assert json.loads((await new.receive(1.0)).data)["event"] == "init"
    [gateway] = dev.state.gateways.values()
    assert gateway.connects == 2 and gateway.connected and gateway.joined
    assert dev.sessions[gateway.id].ws is not None and len(dev.state.gateways) == 1
    await old.close()
    await new.close()
