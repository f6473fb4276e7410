"""The development portal's server: the gateway WebSocket, the admin API, /decide, /healthz.

One aiohttp application on one port. It speaks the portal side of the Phoenix channel,
so a gateway cannot tell it from the hosted portal for the messages it implements: flows,
TURN relays (`init`, `relays_presence`) and ICE candidates both ways. Query strings, the
TURN secret and relay passwords are never logged. See docs/devportal.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from gateway_pkg.devportal.relays import GATEWAY_TTL, InvalidRelay, Relay, RelayBook, parse_addrs
from gateway_pkg.devportal.state import (
    Flow,
    GatewayRecord,
    IceSession,
    PortalState,
    RequestError,
    new_ice_credentials,
    parse_ice_credentials,
    valid_key,
)
from gateway_pkg.portal.messages import MalformedMessage, parse_resource

log = logging.getLogger("gateway_pkg.devportal")

GATEWAY_UDP_PORT = 52625
FLAG_USERSPACE_DNS = "gateway-userspace-dns-a-aaaa-records"
MAX_CANDIDATE_WAIT = 30.0
# How long a flow answer waits for the gateway's host candidates, which carry its UDP port.
CANDIDATE_PORT_WAIT = 2.0
# Fault injection (POST /v1/gateways/{id}/inject): bounds of what one call may send.
MAX_INJECT_COUNT = 100
MAX_INJECT_BYTES = 64 * 1024 * 1024
MIN_OVERSIZED_BYTES = 128
INJECT_PADDING_EVENT = "fault_injection_padding"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Settings:
    gateway_tokens: list[str]
    admin_token: str
    reply_timeout: float = 15.0
    gateway_udp_port: int = GATEWAY_UDP_PORT
    turn_secret: str | None = field(default=None, repr=False)
    relays: list[tuple[str, ...]] = field(default_factory=list)
    relay_ttl: int = GATEWAY_TTL


@dataclass
class _Session:
    """One connected gateway socket."""

    gateway: GatewayRecord
    ws: web.WebSocketResponse
    joined: bool = False
    next_ref: int = 0
    waiters: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)

    async def push(self, event: str, payload: Any) -> None:
        await self.ws.send_str(json.dumps({"topic": "gateway", "event": event, "payload": payload, "ref": None}))


def _host_port(candidates: list[str]) -> int | None:
    """The port of the first host candidate (`candidate:<f> <c> udp <prio> <addr> <port> typ host`)."""
    for text in candidates:
        words = text.split()
        if len(words) >= 8 and words[6:8] == ["typ", "host"] and words[5].isdigit():
            return int(words[5])
    return None


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@dataclass(frozen=True)
class Injection:
    """What one `POST /v1/gateways/{id}/inject` sends: a raw frame, `count` times.

    `replay` ("init" or "flow") is resolved against the portal's state when sent: the frame
    is then the `init` the portal would send now, or the flow's last message verbatim.
    """

    kind: str  # "text", "binary", "oversized" or "replay"
    data: str | bytes = ""
    replay_flow: str | None = None
    count: int = 1


def oversized_frame(size: int) -> str:
    """A well-formed Phoenix push on topic `gateway` of exactly `size` bytes (ASCII)."""
    head = json.dumps({"topic": "gateway", "event": INJECT_PADDING_EVENT, "ref": None,
                       "payload": {"padding": ""}}, separators=(",", ":"))
    missing = size - len(head)
    if missing < 0:
        raise ValueError(f"an oversized frame needs at least {len(head)} bytes")
    return head.replace('"padding":""', '"padding":"' + "x" * missing + '"')


def parse_injection(body: dict[str, Any]) -> Injection:
    """Validate an inject body: exactly one of `text`, `binary` (base64), `oversized`
    (bytes) or `replay` ("init", or "flow" with `flow`), and an optional `count`."""
    kinds = [k for k in ("text", "binary", "oversized", "replay") if k in body]
    if len(kinds) != 1:
        raise RequestError(400, "give exactly one of text, binary (base64), oversized (bytes) or replay")
    count = body.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_INJECT_COUNT:
        raise RequestError(400, f"count must be an integer from 1 to {MAX_INJECT_COUNT}")
    kind, value = kinds[0], body[kinds[0]]
    if kind == "text":
        if not isinstance(value, str):
            raise RequestError(400, "text must be a string (sent as one text frame)")
        return Injection("text", value, count=count)
    if kind == "binary":
        try:
            raw = base64.b64decode(value, validate=True) if isinstance(value, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None:
            raise RequestError(400, "binary must be base64 (sent as one binary frame)")
        return Injection("binary", raw, count=count)
    if kind == "oversized":
        if isinstance(value, bool) or not isinstance(value, int) \
                or not MIN_OVERSIZED_BYTES <= value <= MAX_INJECT_BYTES:
            raise RequestError(400, f"oversized must be a size in bytes from {MIN_OVERSIZED_BYTES} "
                                    f"to {MAX_INJECT_BYTES}")
        return Injection("oversized", oversized_frame(value), count=count)
    if value == "init":
        return Injection("replay", count=count)
    if value == "flow":
        flow = body.get("flow")
        if not isinstance(flow, str):
            raise RequestError(400, 'replay "flow" needs flow: the flow_id whose last message to send again')
        return Injection("replay", replay_flow=flow, count=count)
    raise RequestError(400, 'replay must be "init" or "flow"')


class DevPortal:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = PortalState()
        self.sessions: dict[str, _Session] = {}  # by gateway id
        self.relays = RelayBook(settings.turn_secret, settings.relay_ttl)
        for addrs in settings.relays:
            self.relays.add(addrs)
        self._candidates_changed = asyncio.Event()

    # --- application ---------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.router.add_get("/gateway/websocket", self.gateway_socket)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_post("/decide", self.decide)
        app.router.add_get("/v1/gateways", self._admin(self.list_gateways))
        app.router.add_post("/v1/gateways/{gateway}/disconnect", self._admin(self.disconnect_gateway))
        app.router.add_post("/v1/gateways/{gateway}/inject", self._admin(self.inject_frames))
        app.router.add_get("/v1/flows", self._admin(self.list_flows))
        app.router.add_post("/v1/flows", self._admin(self.create_flow))
        app.router.add_delete("/v1/flows/{flow}", self._admin(self.delete_flow))
        app.router.add_post("/v1/flows/{flow}/reauthorize", self._admin(self.reauthorize_flow))
        app.router.add_post("/v1/flows/{flow}/candidates", self._admin(self.post_candidates))
        app.router.add_get("/v1/flows/{flow}/candidates", self._admin(self.flow_candidates))
        app.router.add_get("/v1/clients/{client}/candidates", self._admin(self.client_candidates))
        app.router.add_get("/v1/relays", self._admin(self.list_relays))
        app.router.add_post("/v1/relays", self._admin(self.add_relay))
        app.router.add_delete("/v1/relays/{relay}", self._admin(self.delete_relay))
        app.router.add_patch("/v1/resources/{resource}", self._admin(self.update_resource))
        app.router.add_get("/v1/flags", self._admin(self.get_flags))
        app.router.add_put("/v1/flags", self._admin(self.put_flags))
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except RequestError as exc:
            response = _json_error(exc.status, str(exc))
        except web.HTTPException as exc:
            response = exc
        # Path only: the gateway socket's query string carries its token.
        log.info("%s %s %s", request.method, request.path, response.status)
        return response

    def _admin(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            header = request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            expected = self.settings.admin_token.encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected):
                return _json_error(401, "admin API needs Authorization: Bearer <admin token>")
            return await handler(request)

        return guarded

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise RequestError(400, "body must be JSON") from None
        if not isinstance(body, dict):
            raise RequestError(400, "body must be a JSON object")
        return body

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "gateways_connected": len(self.sessions)})

    # --- feature flags (PostHog-compatible /decide) ----------------------------------------

    async def decide(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not isinstance(body.get("distinct_id"), str):
            raise RequestError(400, "distinct_id is required")
        return web.json_response({"featureFlags": dict(self.state.flags), "featureFlagPayloads": {}})

    async def get_flags(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.flags)

    async def put_flags(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        flags = body.get("flags", body)
        if not isinstance(flags, dict) or not all(isinstance(k, str) for k in flags):
            raise RequestError(400, "flags must be an object of flag key → value")
        self.state.flags = dict(flags)
        return web.json_response(self.state.flags)

    # --- the gateway socket ----------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> None:
        token = request.query.get("token")
        header = request.headers.get("x-authorization", "")
        if token is None and header.lower().startswith("bearer "):
            token = header[7:]
        if not token:
            raise web.HTTPUnauthorized(text="Missing token")
        if not any(hmac.compare_digest(token.encode(), t.encode()) for t in self.settings.gateway_tokens):
            raise web.HTTPUnauthorized(text="Invalid token")

    async def gateway_socket(self, request: web.Request) -> web.StreamResponse:
        self._authenticate(request)
        query = request.query
        try:
            gateway = self.state.upsert_gateway(
                external_id=query.get("external_id", ""),
                name=query.get("name", ""),
                public_key=query.get("public_key", ""),
                user_agent=request.headers.get("User-Agent", ""),
            )
        except RequestError as exc:
            raise web.HTTPUnprocessableEntity(text=str(exc)) from None
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        old = self.sessions.get(gateway.id)
        if old is not None:
            await old.ws.close()
        session = _Session(gateway, ws)
        self.sessions[gateway.id] = session
        gateway.connected = True
        gateway.connects += 1
        log.info("Gateway %s (%s) connected", gateway.name, gateway.id)
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await self._on_frame(session, message.data)
                elif message.type == WSMsgType.ERROR:
                    break
        finally:
            if self.sessions.get(gateway.id) is session:
                del self.sessions[gateway.id]
                gateway.connected = gateway.joined = False
            gateway.last_seen = time.time()
            for waiter in session.waiters.values():
                if not waiter.done():
                    waiter.set_exception(RequestError(502, "gateway disconnected before replying"))
            log.info("Gateway %s disconnected", gateway.name)
        return ws

    async def _reply(self, session: _Session, topic: str, ref: Any, status: str, response: Any) -> None:
        await session.ws.send_str(json.dumps({
            "topic": topic, "event": "phx_reply", "ref": ref,
            "payload": {"status": status, "response": response},
        }))

    async def _on_frame(self, session: _Session, text: str) -> None:
        session.gateway.last_seen = time.time()
        try:
            frame = json.loads(text)
            topic, event, ref, payload = frame["topic"], frame["event"], frame.get("ref"), frame.get("payload")
        except (ValueError, KeyError, TypeError):
            log.warning("Malformed frame from gateway %s", session.gateway.name)
            return
        if topic == "phoenix" and event == "heartbeat":
            session.gateway.heartbeats += 1
            await self._reply(session, topic, ref, "ok", {})
            return
        if topic != "gateway":
            await self._reply(session, topic, ref, "error", {"reason": "unmatched topic"})
            return
        if event == "phx_join":
            session.joined = session.gateway.joined = True
            await self._reply(session, topic, ref, "ok", {})
            relays = self.relays.gateway_entries(session.gateway.public_key)
            await session.push("init", self.state.init_payload(session.gateway, relays))
            return
        if not session.joined:
            await self._reply(session, topic, ref, "error", {"reason": "unmatched topic"})
            return
        if event == "phx_leave":
            session.joined = session.gateway.joined = False
            await self._reply(session, topic, ref, "ok", {})
            return
        if event in ("flow_authorized", "connection_ready") and isinstance(payload, dict):
            flow_ref = payload.get("ref")
            waiter = session.waiters.pop(flow_ref, None) if isinstance(flow_ref, str) else None
            flow = self.state.flow_by_ref(flow_ref) if isinstance(flow_ref, str) else None
            if flow is not None:
                flow.status = "authorized"
                flow.reply = {"event": event, "payload": payload}
                if event == "connection_ready":
                    flow.ice.gateway = _accepted_ice(payload) or flow.ice.gateway
            if waiter is not None and not waiter.done():
                waiter.set_result({"event": event, "payload": payload})
            await self._reply(session, topic, ref, "ok", {})
            return
        if event in ("broadcast_ice_candidates", "broadcast_invalidated_ice_candidates"):
            client_ids = payload.get("client_ids") if isinstance(payload, dict) else None
            candidates = payload.get("candidates") if isinstance(payload, dict) else None
            if not _strings(client_ids) or not _strings(candidates):
                log.warning("Malformed %s from gateway %s", event, session.gateway.name)
                await self._reply(session, topic, ref, "error", {"reason": "invalid_payload"})
                return
            assert isinstance(client_ids, list) and isinstance(candidates, list)
            if event == "broadcast_ice_candidates":
                self.state.add_candidates(session.gateway.id, client_ids, candidates)
            else:
                self.state.invalidate_candidates(session.gateway.id, client_ids, candidates)
            self._signal_candidates()
            await self._reply(session, topic, ref, "ok", {})
            return
        await self._reply(session, topic, ref, "error", {"reason": "unknown_message"})

    # --- admin API: gateways -------------------------------------------------------------

    async def list_gateways(self, request: web.Request) -> web.Response:
        return web.json_response([g.view() for g in self.state.gateways.values()])

    async def disconnect_gateway(self, request: web.Request) -> web.Response:
        gateway = self.state.find_gateway(request.match_info["gateway"])
        session = self.sessions.get(gateway.id)
        if session is None:
            raise RequestError(409, "gateway is not connected")
        await session.ws.close()
        return web.json_response({"disconnected": gateway.id})

    async def inject_frames(self, request: web.Request) -> web.Response:
        """Test-only fault injection: send raw frames on a gateway's socket."""
        gateway = self.state.find_gateway(request.match_info["gateway"])
        injection = parse_injection(await self._body(request))
        session = self.sessions.get(gateway.id)
        if session is None:
            raise RequestError(409, f"gateway {gateway.name} is not connected")
        data: str | bytes = injection.data
        if injection.kind == "replay" and injection.replay_flow is None:
            relays = self.relays.gateway_entries(gateway.public_key)
            data = json.dumps({"topic": "gateway", "event": "init", "ref": None,
                               "payload": self.state.init_payload(gateway, relays)})
        elif injection.kind == "replay":
            flow = self.state.flows.get(injection.replay_flow or "")
            if flow is None or flow.gateway_id != gateway.id:
                raise RequestError(404, "unknown flow for this gateway")
            if flow.sent is None:
                raise RequestError(409, "nothing was sent for that flow yet")
            event, payload = flow.sent
            data = json.dumps({"topic": "gateway", "event": event, "payload": payload, "ref": None})
        sent, disconnected = 0, False
        try:
            for _ in range(injection.count):
                if isinstance(data, bytes):
                    await session.ws.send_bytes(data)
                else:
                    await session.ws.send_str(data)
                sent += 1
        except ConnectionError:
            # The gateway dropped the socket, possibly because of this very frame (one over
            # its size limit): that is an outcome to report, not an error of the request.
            disconnected = True
        size = len(data) if isinstance(data, bytes) else len(data.encode())
        log.info("Injected %d of %d %s frame(s) of %d bytes to gateway %s%s", sent, injection.count, injection.kind,
                 size, gateway.name, " (it disconnected)" if disconnected else "")
        return web.json_response({"gateway_id": gateway.id, "kind": injection.kind, "count": sent, "bytes": size,
                                  "disconnected": disconnected}, status=202)

    def _session_for(self, gateway: GatewayRecord) -> _Session:
        session = self.sessions.get(gateway.id)
        if session is None or not session.joined:
            raise RequestError(409, f"gateway {gateway.name} is not connected")
        return session

    # --- admin API: flows ------------------------------------------------------------------

    def _parse_flow_request(self, body: dict[str, Any]) -> tuple[GatewayRecord, dict[str, Any], dict[str, Any],
                                                                  dict[str, Any] | None, int | None, str,
                                                                  dict[str, str] | None]:
        gateway_ref = body.get("gateway")
        if not isinstance(gateway_ref, str):
            raise RequestError(400, "gateway (id or external_id) is required")
        gateway = self.state.find_gateway(gateway_ref)
        protocol = body.get("protocol", "1.4")
        if protocol not in ("1.3", "1.4"):
            raise RequestError(400, 'protocol must be "1.3" or "1.4"')
        client = body.get("client")
        if not isinstance(client, dict):
            raise RequestError(400, "client is required")
        for key in ("public_key", "preshared_key"):
            if not valid_key(client.get(key)):
                raise RequestError(400, f"client.{key} must be base64 of 32 bytes (e.g. from `wg genkey`/`wg genpsk`)")
        try:
            ipv4 = ipaddress.IPv4Address(client.get("ipv4"))
            ipv6 = ipaddress.IPv6Address(client.get("ipv6"))
        except (ValueError, TypeError):
            raise RequestError(400, "client.ipv4 and client.ipv6 must be tunnel addresses") from None
        client_id = client.get("id") or str(uuid.uuid5(uuid.NAMESPACE_URL, f"client:{client['public_key']}"))
        clean_client = {"id": str(client_id), "public_key": client["public_key"],
                        "preshared_key": client["preshared_key"], "ipv4": str(ipv4), "ipv6": str(ipv6)}
        ice = None if client.get("ice") is None else parse_ice_credentials(client["ice"], "client.ice")
        resource = body.get("resource")
        if not isinstance(resource, dict):
            raise RequestError(400, "resource is required")
        resource = dict(resource)
        resource.setdefault("id", str(uuid.uuid4()))
        resource.setdefault("filters", [])
        if resource.get("type") != "internet":
            resource.setdefault("name", resource.get("address", ""))
        domain = None
        proxy_ips = resource.pop("proxy_ips", None)
        name = resource.pop("domain", None)
        try:
            parse_resource(resource)
        except MalformedMessage as exc:
            raise RequestError(400, f"invalid resource: {exc}") from None
        if resource.get("type") == "dns":
            if not isinstance(proxy_ips, list) or not proxy_ips:
                raise RequestError(
                    400, "a dns resource needs resource.proxy_ips (from 100.96.0.0/11 and fd00:2021:1111:8000::/107)"
                )
            try:
                ips = [str(ipaddress.ip_address(ip)) for ip in proxy_ips]
            except (ValueError, TypeError):
                raise RequestError(400, "resource.proxy_ips must be IP addresses") from None
            name = name or resource["address"]
            if "*" in name or "?" in name:
                raise RequestError(400, "a wildcard dns resource needs resource.domain: the concrete name to resolve")
            domain = {"name": name, "proxy_ips": ips}
        expires_at = body.get("expires_at")
        if expires_at is not None and (isinstance(expires_at, bool) or not isinstance(expires_at, int)):
            raise RequestError(400, "expires_at must be a unix timestamp in seconds")
        return gateway, clean_client, resource, domain, expires_at, protocol, ice

    def _ice_session_for(self, gateway: GatewayRecord, client_id: str, protocol: str,
                         given: dict[str, str] | None) -> tuple[IceSession, bool]:
        """The client's ICE session on that gateway, and whether it is a new one.

        Flows of one client on one gateway share it (so a second flow or a reauthorization
        does not restart ICE); a different `client.ice` starts a new one, as a restarted
        client would, and so does a gateway that restarted since (a new public key: the
        process that had the connection is gone, so a 1.3 request gets `request_connection`,
        not `allow_access`). The gateway's side is picked here for 1.4 and comes with
        `connection_ready` for 1.3.
        """
        current = self.state.ice_session(gateway.id, client_id)
        if current is not None and (given is None or given == current.client) \
                and current.gateway_key == gateway.public_key \
                and (protocol == "1.3" or current.gateway is not None):
            return current, False
        self.state.forget_candidates(gateway.id, client_id)
        return IceSession(client=given or new_ice_credentials(),
                          gateway=new_ice_credentials() if protocol == "1.4" else None,
                          gateway_key=gateway.public_key), True

    async def create_flow(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        gateway, client, resource, domain, expires_at, protocol, given_ice = self._parse_flow_request(body)
        session = self._session_for(gateway)
        ice, fresh = self._ice_session_for(gateway, client["id"], protocol, given_ice)
        flow = Flow(id=str(uuid.uuid4()), gateway_id=gateway.id, protocol=protocol, client=client,
                    resource=resource, domain=domain, expires_at=expires_at, ref=secrets.token_urlsafe(24), ice=ice)
        self.state.flows[flow.id] = flow
        wait = body.get("wait", True) is not False
        if protocol == "1.4":
            event, payload = "authorize_flow", self._authorize_flow_payload(flow)
        elif not fresh:
            event, payload = "allow_access", self._allow_access_payload(flow)
        else:
            event, payload = "request_connection", self._request_connection_payload(flow)
        await self._send_and_wait(session, flow, event, payload, wait=wait and event != "allow_access")
        if event == "allow_access":
            flow.status = "sent"  # 1.3 allow_access has no reply by design
        answer = flow.view() | {
            "event": event,
            "gateway": {
                "id": gateway.id, "public_key": gateway.public_key, "ipv4": str(gateway.ipv4),
                "ipv6": str(gateway.ipv6), "port": await self._advertised_port(gateway.id, flow),
            },
            "relays": self.relays.client_views(),
        }
        return web.json_response(answer, status=201)

    async def _send_and_wait(self, session: _Session, flow: Flow, event: str, payload: dict[str, Any],
                             *, wait: bool) -> None:
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if wait:
            session.waiters[flow.ref] = waiter
        flow.sent = (event, payload)
        await session.push(event, payload)
        if not wait:
            return
        try:
            await asyncio.wait_for(waiter, timeout=self.settings.reply_timeout)
        except TimeoutError:
            session.waiters.pop(flow.ref, None)
            flow.status = "timeout"

    def _authorize_flow_payload(self, flow: Flow) -> dict[str, Any]:
        return {
            "ref": flow.ref,
            "flow_id": flow.id,
            "resource": flow.resource,
            "gateway_ice_credentials": flow.ice.gateway,
            "client": flow.client,
            "client_ice_credentials": flow.ice.client,
            "expires_at": flow.expires_at,
        }

    def _request_connection_payload(self, flow: Flow) -> dict[str, Any]:
        client = flow.client
        return {
            "ref": flow.ref,
            "flow_id": flow.id,
            "resource": flow.resource,
            "client": {
                "id": client["id"],
                "payload": {
                    "ice_parameters": flow.ice.client,
                    **({"domain": flow.domain} if flow.domain else {}),
                },
                "peer": {"persistent_keepalive": 25, "public_key": client["public_key"],
                         "preshared_key": client["preshared_key"], "ipv4": client["ipv4"], "ipv6": client["ipv6"]},
            },
            "expires_at": flow.expires_at,
        }

    def _allow_access_payload(self, flow: Flow) -> dict[str, Any]:
        return {
            "ref": flow.ref,
            "flow_id": flow.id,
            "client_id": flow.client["id"],
            "resource": flow.resource,
            "expires_at": flow.expires_at,
            "payload": flow.domain,
            "client_ipv4": flow.client["ipv4"],
            "client_ipv6": flow.client["ipv6"],
        }

    async def list_flows(self, request: web.Request) -> web.Response:
        return web.json_response([f.view() for f in self.state.flows.values()])

    def _flow(self, request: web.Request) -> Flow:
        flow = self.state.flows.get(request.match_info["flow"])
        if flow is None:
            raise RequestError(404, "unknown flow")
        return flow

    async def delete_flow(self, request: web.Request) -> web.Response:
        flow = self._flow(request)
        del self.state.flows[flow.id]
        others = self.state.others_covering(flow)
        session = self.sessions.get(flow.gateway_id)
        sent = None
        if session is not None and session.joined:
            if others:
                expiries = [f.expires_at for f in others]
                if all(e is not None for e in expiries):
                    sent = "access_authorization_expiry_updated"
                    await session.push(sent, {"client_id": flow.client["id"], "resource_id": flow.resource["id"],
                                              "expires_at": max(e for e in expiries if e is not None)})
            else:
                sent = "reject_access"
                await session.push(sent, {"client_id": flow.client["id"], "resource_id": flow.resource["id"]})
        if not self.state.client_flows(flow.gateway_id, flow.client["id"]):
            self.state.forget_candidates(flow.gateway_id, flow.client["id"])  # the connection is gone
        return web.json_response({"deleted": flow.id, "sent": sent})

    async def reauthorize_flow(self, request: web.Request) -> web.Response:
        flow = self._flow(request)
        gateway = next((g for g in self.state.gateways.values() if g.id == flow.gateway_id), None)
        if gateway is None:
            raise RequestError(404, "gateway of the flow is gone")
        session = self._session_for(gateway)
        flow.ref = secrets.token_urlsafe(24)
        if flow.protocol == "1.3":
            event, payload = "allow_access", self._allow_access_payload(flow)
            flow.sent = (event, payload)
            await session.push(event, payload)
            flow.status = "sent"
        else:
            event, payload = "authorize_flow", self._authorize_flow_payload(flow)
            await self._send_and_wait(session, flow, event, payload, wait=True)
        return web.json_response(flow.view() | {"event": event})

    async def update_resource(self, request: web.Request) -> web.Response:
        resource_id = request.match_info["resource"]
        body = await self._body(request)
        flows = [f for f in self.state.flows.values() if f.resource["id"] == resource_id]
        if not flows:
            raise RequestError(404, "no flow uses that resource")
        updated = dict(flows[0].resource)
        for key in ("filters", "name"):
            if key in body:
                updated[key] = body[key]
        try:
            parse_resource(updated)
        except MalformedMessage as exc:
            raise RequestError(400, f"invalid resource: {exc}") from None
        notified = set()
        for flow in flows:
            flow.resource = updated
            session = self.sessions.get(flow.gateway_id)
            if session is not None and session.joined and flow.gateway_id not in notified:
                notified.add(flow.gateway_id)
                await session.push("resource_updated", updated)
        return web.json_response({"resource": updated, "gateways_notified": sorted(notified)})

    # --- admin API: ICE candidates ---------------------------------------------------------

    async def post_candidates(self, request: web.Request) -> web.Response:
        """A client's candidates (or their invalidation) to the flow's gateway."""
        flow = self._flow(request)
        body = await self._body(request)
        candidates, invalidate = body.get("candidates"), body.get("invalidate", False)
        if not _strings(candidates):
            raise RequestError(400, 'candidates must be a list of SDP candidate strings ("candidate:...")')
        if not isinstance(invalidate, bool):
            raise RequestError(400, "invalidate must be true or false")
        session = self._session_for(self.state.find_gateway(flow.gateway_id))
        event = "invalidate_ice_candidates" if invalidate else "ice_candidates"
        await session.push(event, {"client_id": flow.client["id"], "candidates": candidates})
        return web.json_response({"event": event, "client_id": flow.client["id"], "gateway_id": flow.gateway_id,
                                  "count": len(candidates or [])}, status=202)

    async def flow_candidates(self, request: web.Request) -> web.Response:
        flow = self._flow(request)
        return await self._candidates_answer(request, flow.client["id"], flow.gateway_id)

    async def client_candidates(self, request: web.Request) -> web.Response:
        ident = request.query.get("gateway")
        gateway_id = None if ident is None else self.state.find_gateway(ident).id
        return await self._candidates_answer(request, request.match_info["client"], gateway_id)

    async def _candidates_answer(self, request: web.Request, client_id: str, gateway_id: str | None) -> web.Response:
        """What the gateway(s) broadcast for the client, waiting up to `?wait=` s for one."""
        raw = request.query.get("wait", "0")
        try:
            wait = min(float(raw), MAX_CANDIDATE_WAIT)
        except ValueError:
            raise RequestError(400, f"wait must be seconds (at most {MAX_CANDIDATE_WAIT:g}), got {raw!r}") from None
        if not wait >= 0:
            raise RequestError(400, f"wait must be seconds (at most {MAX_CANDIDATE_WAIT:g}), got {raw!r}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            found = self.state.candidates_for(client_id, gateway_id)
            remaining = deadline - loop.time()
            if found or remaining <= 0:
                return web.json_response({"candidates": found})
            changed = self._candidates_changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    async def _advertised_port(self, gateway_id: str, flow: Flow) -> int:
        """The gateway's UDP port as the gateway advertises it: the port of its host candidates
        for this client (its bound port: an ephemeral one when 52625 was taken), waiting a
        little for them after the reply; else --gateway-udp-port."""
        port = None
        if flow.status == "authorized":
            loop = asyncio.get_running_loop()
            deadline = loop.time() + CANDIDATE_PORT_WAIT
            while (port := _host_port(self.state.candidates_for(flow.client["id"], gateway_id))) is None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                changed = self._candidates_changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        return self.settings.gateway_udp_port if port is None else port

    def _signal_candidates(self) -> None:
        changed, self._candidates_changed = self._candidates_changed, asyncio.Event()
        changed.set()

    # --- admin API: relays -----------------------------------------------------------------

    async def list_relays(self, request: web.Request) -> web.Response:
        return web.json_response({"relays": self.relays.client_views()})

    async def add_relay(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not self.relays.enabled:
            raise RequestError(409, "no TURN secret: start the portal with --turn-secret-file")
        addrs = body.get("addrs")
        if not isinstance(addrs, list):
            raise RequestError(400, 'addrs must be a list of "ip:port" / "[v6]:port"')
        try:
            relay = self.relays.add(parse_addrs(addrs))
        except InvalidRelay as exc:
            raise RequestError(400, str(exc)) from None
        log.info("Relay %s added (%s)", relay.id, ", ".join(relay.addrs))
        notified = await self._relays_presence(connected=[relay], disconnected_ids=[])
        return web.json_response({"id": relay.id, "addrs": list(relay.addrs), "gateways_notified": notified},
                                 status=201)

    async def delete_relay(self, request: web.Request) -> web.Response:
        relay = self.relays.remove(request.match_info["relay"])
        if relay is None:
            raise RequestError(404, "unknown relay")
        log.info("Relay %s removed", relay.id)
        await self._relays_presence(connected=[], disconnected_ids=[relay.id])
        return web.Response(status=204)

    async def _relays_presence(self, *, connected: list[Relay], disconnected_ids: list[str]) -> list[str]:
        """`relays_presence` to every joined gateway, each with its own credentials."""
        notified = []
        for session in list(self.sessions.values()):
            if not session.joined:
                continue
            entries = self.relays.gateway_entries(session.gateway.public_key, connected) if connected else []
            try:
                await session.push("relays_presence", {"connected": entries, "disconnected_ids": disconnected_ids})
            except ConnectionError:
                continue  # closing: it gets the relays with its next `init`
            notified.append(session.gateway.id)
        return notified


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _accepted_ice(payload: dict[str, Any]) -> dict[str, str] | None:
    """The gateway's ICE credentials in a 1.3 `connection_ready`, if well-formed."""
    accepted = payload.get("gateway_payload")
    params = accepted.get("ConnectionAccepted") if isinstance(accepted, dict) else None
    ice = params.get("ice_parameters") if isinstance(params, dict) else None
    if isinstance(ice, dict) and isinstance(ice.get("username"), str) and isinstance(ice.get("password"), str):
        return {"username": ice["username"], "password": ice["password"]}
    return None


async def serve(portal: DevPortal, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(portal.make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner


async def run_forever(portal: DevPortal, host: str, port: int, ready: Callable[[], None] | None = None) -> None:
    runner = await serve(portal, host, port)
    log.info("Development portal listening on %s:%d", host, port)
    for relay in portal.relays.relays.values():
        log.info("Relay %s: %s", relay.id, ", ".join(relay.addrs))
    if ready is not None:
        ready()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for session in list(portal.sessions.values()):
        with contextlib.suppress(Exception):
            await session.ws.close()
    await runner.cleanup()
    log.info("Development portal stopped")
