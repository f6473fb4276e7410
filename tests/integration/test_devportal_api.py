"""The dev portal's admin API drives a real gateway process over the real protocol."""

from __future__ import annotations

import base64
import os

import pytest

from tests.integration.test_portal_session import TOKEN, start_gateway
from tests.procs import DevPortalProc, http, wait_for

pytestmark = pytest.mark.integration


def key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def portal(tmp_path):
    proc = DevPortalProc(tmp_path, gateway_token=TOKEN, extra=["--reply-timeout", "1"])
    yield proc
    proc.stop()


@pytest.fixture
def gateway(tmp_path, portal):
    gw = start_gateway(tmp_path, portal)
    wait_for(lambda: [g for g in portal.gateways() if g["joined"]], 15, "gateway joined")
    yield gw
    gw.stop()


def flow_body(gateway_id, protocol="1.4", resource=None):
    return {
        "gateway": gateway_id,
        "protocol": protocol,
        "client": {"public_key": key(), "preshared_key": key(), "ipv4": "100.64.0.2", "ipv6": "fd00:2021:1111::2"},
        "resource": resource or {"type": "cidr", "address": "10.9.0.0/24", "filters": [{"protocol": "icmp"}]},
    }


def test_admin_api_needs_the_admin_token(portal):
    assert http("GET", portal.url + "/v1/gateways")[0] == 401
    assert http("GET", portal.url + "/v1/gateways", token="wrong")[0] == 401


def test_flow_lifecycle_reaches_the_gateway(portal, gateway):
    gw_id = portal.gateways()[0]["id"]
    status, flow = portal.api("POST", "/v1/flows", flow_body(gw_id))
    assert status == 201, flow
    assert flow["event"] == "authorize_flow" and flow["gateway"]["port"] == 52625
    assert flow["gateway"]["public_key"] == portal.gateways()[0]["public_key"]
    assert flow["status"] == "timeout"  # the control-only gateway never replies
    assert set(flow["ice"]) == {"client", "gateway"} and flow["ice"]["gateway"]["password"]
    assert flow["relays"] == []  # no --relay, no --turn-secret-file
    wait_for(lambda: "Ignoring AuthorizeFlow" in gateway.output(), 5, "authorize_flow received")

    status, body = portal.api("PATCH", f"/v1/resources/{flow['resource_id']}", {"filters": []})
    assert status == 200 and body["gateways_notified"] == [gw_id]
    wait_for(lambda: "Ignoring ResourceUpdated" in gateway.output(), 5, "resource_updated received")

    status, body = portal.api("DELETE", f"/v1/flows/{flow['flow_id']}")
    assert status == 200 and body["sent"] == "reject_access"
    wait_for(lambda: "Ignoring RejectAccess" in gateway.output(), 5, "reject_access received")
    assert portal.api("DELETE", f"/v1/flows/{flow['flow_id']}")[0] == 404


def test_13_flow_after_the_gateway_restarted_asks_for_a_new_connection(tmp_path, portal, gateway):
    # The restarted process (same FIREZONE_ID, a new key) has no connection to the client:
    # a further 1.3 flow gets request_connection again, not allow_access for an unknown client.
    gw_id = portal.gateways()[0]["id"]
    body = flow_body(gw_id, "1.3", {"type": "cidr", "address": "10.9.0.0/24"})
    assert portal.api("POST", "/v1/flows", body)[1]["event"] == "request_connection"
    assert portal.api("POST", "/v1/flows", body)[1]["event"] == "allow_access"
    old_key = portal.gateways()[0]["public_key"]
    gateway.stop()
    restarted = start_gateway(tmp_path, portal)
    try:
        wait_for(lambda: [g for g in portal.gateways() if g["joined"] and g["public_key"] != old_key], 15,
                 "the restarted gateway joined with a new key")
        status, third = portal.api("POST", "/v1/flows", body)
        assert status == 201 and third["event"] == "request_connection", third
    finally:
        restarted.stop()


def test_13_flow_sends_request_connection_then_allow_access(portal, gateway):
    gw_id = portal.gateways()[0]["id"]
    body = flow_body(gw_id, "1.3", {"type": "dns", "address": "app.test", "proxy_ips": ["100.96.0.1"]})
    status, first = portal.api("POST", "/v1/flows", body)
    assert status == 201 and first["event"] == "request_connection", first
    body["resource"] = {"type": "cidr", "address": "10.9.0.0/24"}
    status, second = portal.api("POST", "/v1/flows", body)
    assert status == 201 and second["event"] == "allow_access" and second["status"] == "sent"
    status, again = portal.api("POST", f"/v1/flows/{first['flow_id']}/reauthorize")
    assert status == 200 and again["event"] == "allow_access"
    wait_for(lambda: gateway.output().count("Ignoring AllowAccess") >= 2, 5, "allow_access received twice")


@pytest.mark.parametrize(("patch", "message"), [
    ({"client": None}, "client is required"),
    ({"protocol": "2.0"}, "protocol"),
    ({"gateway": "nope"}, "unknown gateway"),
    ({"resource": {"type": "cidr", "address": "bad"}}, "invalid resource"),
    ({"resource": {"type": "dns", "address": "a.test"}}, "proxy_ips"),
])
def test_bad_flow_requests_are_clear_errors(portal, gateway, patch, message):
    body = flow_body(portal.gateways()[0]["id"]) | patch
    status, answer = portal.api("POST", "/v1/flows", body)
    assert status in (400, 404) and message in answer["error"]


def test_relays_need_a_turn_secret(portal):
    assert portal.api("GET", "/v1/relays") == (200, {"relays": []})
    status, answer = portal.api("POST", "/v1/relays", {"addrs": ["198.18.9.1:3478"]})
    assert status == 409 and "--turn-secret-file" in answer["error"]
    assert http("GET", portal.url + "/v1/relays")[0] == 401
    assert portal.api("GET", "/v1/flows/nope/candidates")[0] == 404


def test_flags_are_served_on_decide(portal):
    assert http("POST", portal.url + "/decide", {"api_key": "x", "distinct_id": "d"})[1]["featureFlags"] == {}
    status, _ = portal.api("PUT", "/v1/flags", {"gateway-userspace-dns-a-aaaa-records": True})
    assert status == 200
    answer = http("POST", portal.url + "/decide", {"api_key": "x", "distinct_id": "d"})[1]
    assert answer == {"featureFlags": {"gateway-userspace-dns-a-aaaa-records": True}, "featureFlagPayloads": {}}


def test_gateway_socket_rejects_bad_parameters(portal):
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    async def attempt(query, ua="Debian/12 connlib/1.4.17 (x86_64; 6)"):
        try:
            async with connect(f"ws://127.0.0.1:{portal.port}/gateway/websocket?{query}", user_agent_header=ua,
                               proxy=None):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    good_key = key().replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    assert asyncio.run(attempt(f"external_id=e&public_key={good_key}")) == 401
    assert asyncio.run(attempt(f"token=bad&external_id=e&public_key={good_key}")) == 401
    assert asyncio.run(attempt(f"token={TOKEN}&external_id=e&public_key=short")) == 422
    assert asyncio.run(attempt(f"token={TOKEN}&external_id=e&public_key={good_key}", ua="curl/8")) == 422
    assert asyncio.run(attempt(f"token={TOKEN}&external_id=e&public_key={good_key}")) == 101
