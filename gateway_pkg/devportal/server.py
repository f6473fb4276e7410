"""The development portal's server: the gateway WebSocket, the admin API, /decide, /healthz.

One aiohttp application on one port. It speaks the portal side of the Phoenix channel,
so a gateway cannot tell it from the hosted portal for the messages it implements.
Query strings are never logged: gateways send their token in them.
"""

from __future__ import annotations

import asyncio
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

from gateway_pkg.devportal.state import Flow, GatewayRecord, PortalState, RequestError, valid_key
from gateway_pkg.portal.messages import MalformedMessage, parse_resource

log = logging.getLogger("gateway_pkg.devportal")

GATEWAY_UDP_PORT = 52625
FLAG_USERSPACE_DNS = "gateway-userspace-dns-a-aaaa-records"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Settings:
    gateway_tokens: list[str]
    admin_token: str
    reply_timeout: float = 15.0
    gateway_udp_port: int = GATEWAY_UDP_PORT


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


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class DevPortal:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = PortalState()
        self.sessions: dict[str, _Session] = {}  # by gateway id

    # --- application ---------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.router.add_get("/gateway/websocket", self.gateway_socket)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_post("/decide", self.decide)
        app.router.add_get("/v1/gateways", self._admin(self.list_gateways))
        app.router.add_post("/v1/gateways/{gateway}/disconnect", self._admin(self.disconnect_gateway))
        app.router.add_get("/v1/flows", self._admin(self.list_flows))
        app.router.add_post("/v1/flows", self._admin(self.create_flow))
        app.router.add_delete("/v1/flows/{flow}", self._admin(self.delete_flow))
        app.router.add_post("/v1/flows/{flow}/reauthorize", self._admin(self.reauthorize_flow))
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
            await session.push("init", self.state.init_payload(session.gateway))
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
            if waiter is not None and not waiter.done():
                waiter.set_result({"event": event, "payload": payload})
            await self._reply(session, topic, ref, "ok", {})
            return
        if event in ("broadcast_ice_candidates", "broadcast_invalidated_ice_candidates"):
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

    def _session_for(self, gateway: GatewayRecord) -> _Session:
        session = self.sessions.get(gateway.id)
        if session is None or not session.joined:
            raise RequestError(409, f"gateway {gateway.name} is not connected")
        return session

    # --- admin API: flows ------------------------------------------------------------------

    def _parse_flow_request(self, body: dict[str, Any]) -> tuple[GatewayRecord, dict[str, Any], dict[str, Any],
                                                                  dict[str, Any] | None, int | None, str]:
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
        return gateway, clean_client, resource, domain, expires_at, protocol

    async def create_flow(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        gateway, client, resource, domain, expires_at, protocol = self._parse_flow_request(body)
        session = self._session_for(gateway)
        flow = Flow(id=str(uuid.uuid4()), gateway_id=gateway.id, protocol=protocol, client=client,
                    resource=resource, domain=domain, expires_at=expires_at, ref=secrets.token_urlsafe(24))
        existing = self.state.client_flows(gateway.id, client["id"])
        self.state.flows[flow.id] = flow
        wait = body.get("wait", True) is not False
        if protocol == "1.4":
            event, payload = "authorize_flow", self._authorize_flow_payload(flow)
        elif existing:
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
                "ipv6": str(gateway.ipv6), "port": self.settings.gateway_udp_port,
            },
        }
        return web.json_response(answer, status=201)

    async def _send_and_wait(self, session: _Session, flow: Flow, event: str, payload: dict[str, Any],
                             *, wait: bool) -> None:
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if wait:
            session.waiters[flow.ref] = waiter
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
            "gateway_ice_credentials": {"username": secrets.token_hex(4), "password": secrets.token_hex(11)},
            "client": flow.client,
            "client_ice_credentials": {"username": secrets.token_hex(4), "password": secrets.token_hex(11)},
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
                    "ice_parameters": {"username": secrets.token_hex(4), "password": secrets.token_hex(11)},
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


async def serve(portal: DevPortal, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(portal.make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner


async def run_forever(portal: DevPortal, host: str, port: int, ready: Callable[[], None] | None = None) -> None:
    runner = await serve(portal, host, port)
    log.info("Development portal listening on %s:%d", host, port)
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
