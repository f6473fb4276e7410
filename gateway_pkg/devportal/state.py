"""What the development portal knows: gateways, flows, ICE sessions and candidates, feature
flags. No I/O here."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

# Gateways get addresses from the top /16 of the device range so that clients can pick
# theirs anywhere else in 100.64.0.0/11 (documented in docs/devportal.md).
GATEWAY_V4_BASE = ipaddress.IPv4Address("100.95.0.0")
GATEWAY_V6_BASE = ipaddress.IPv6Address("fd00:2021:1111::1f:0")
GATEWAY_SLOTS = 65534
_VERSION = re.compile(r"(?:connlib|gateway)/(\d+)\.(\d+)\.(\d+)")
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")  # RFC 8445 §5.3 ice-char


class RequestError(ValueError):
    """An admin or socket request the portal refuses; carries the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class GatewayRecord:
    id: str
    external_id: str
    name: str
    public_key: str
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address
    version: str
    connected: bool = False
    joined: bool = False
    last_seen: float = 0.0
    heartbeats: int = 0
    connects: int = 0

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "external_id": self.external_id,
            "name": self.name,
            "public_key": self.public_key,
            "ipv4": str(self.ipv4),
            "ipv6": str(self.ipv6),
            "version": self.version,
            "connected": self.connected,
            "joined": self.joined,
            "last_seen": int(self.last_seen) if self.last_seen else None,
            "heartbeats": self.heartbeats,
            "connects": self.connects,
        }


@dataclass
class IceSession:
    """One client's ICE connection to one gateway: both sides' credentials.

    `gateway` is None for a 1.3 connection until `connection_ready` brings it. `gateway_key`
    is the gateway's public key when the session began: a gateway that restarted (a new
    key) has no connections, so its old sessions are not reused.
    """

    client: dict[str, str]
    gateway: dict[str, str] | None
    gateway_key: str = ""

    def view(self) -> dict[str, Any]:
        return {"client": self.client, "gateway": self.gateway}


def new_ice_credentials() -> dict[str, str]:
    return {"username": secrets.token_hex(4), "password": secrets.token_hex(11)}


def parse_ice_credentials(value: Any, where: str) -> dict[str, str]:
    """`{"username","password"}` of ice-chars, RFC 8445 lengths (4+ and 22+, at most 256)."""
    if not isinstance(value, dict):
        raise RequestError(400, f'{where} must be {{"username": ..., "password": ...}}')
    username, password = value.get("username"), value.get("password")
    for name, text, least in (("username", username, 4), ("password", password, 22)):
        if not isinstance(text, str) or not least <= len(text) <= 256 or not _ICE_CHARS.fullmatch(text):
            raise RequestError(400, f"{where}.{name} must be {least}-256 ICE characters (A-Z a-z 0-9 + /)")
    assert isinstance(username, str) and isinstance(password, str)
    return {"username": username, "password": password}


@dataclass
class Flow:
    id: str
    gateway_id: str
    protocol: str
    client: dict[str, Any]
    resource: dict[str, Any]
    domain: dict[str, Any] | None
    expires_at: int | None
    ref: str
    ice: IceSession
    status: str = "pending"
    reply: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    # The last message sent for this flow (event, payload), so a test can send it again
    # verbatim (POST /v1/gateways/{id}/inject with "replay": "flow").
    sent: tuple[str, dict[str, Any]] | None = field(default=None, repr=False)

    def view(self) -> dict[str, Any]:
        return {
            "flow_id": self.id,
            "gateway_id": self.gateway_id,
            "protocol": self.protocol,
            "client_id": self.client["id"],
            "resource_id": self.resource["id"],
            "resource": self.resource,
            "expires_at": self.expires_at,
            "status": self.status,
            "reply": self.reply,
            "ice": self.ice.view(),
        }


def parse_version(user_agent: str) -> str:
    match = _VERSION.search(user_agent)
    if match is None:
        raise RequestError(422, "invalid version: User-Agent carries no connlib/<x.y.z>")
    return ".".join(match.groups())


def valid_key(text: Any) -> bool:
    if not isinstance(text, str) or len(text) != 44:
        return False
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


class PortalState:
    def __init__(self) -> None:
        self.gateways: dict[str, GatewayRecord] = {}  # by external_id
        self.flows: dict[str, Flow] = {}
        self.flags: dict[str, Any] = {}
        # What each gateway broadcast for each client: (gateway id, client id) -> candidates.
        self.candidates: dict[tuple[str, str], list[str]] = {}
        self._taken: dict[int, str] = {}

    # --- gateways ------------------------------------------------------------------------

    def _slot_for(self, external_id: str) -> int:
        # Deterministic so a gateway keeps its tunnel addresses across portal restarts.
        start = int.from_bytes(hashlib.sha256(external_id.encode()).digest()[:4], "big") % GATEWAY_SLOTS
        for step in range(GATEWAY_SLOTS):
            slot = (start + step) % GATEWAY_SLOTS + 1
            owner = self._taken.get(slot)
            if owner is None or owner == external_id:
                self._taken[slot] = external_id
                return slot
        raise RequestError(503, "no tunnel addresses left for gateways")

    def upsert_gateway(self, *, external_id: str, name: str, public_key: str, user_agent: str) -> GatewayRecord:
        """Upsert on external_id, as the real portal does; name and key replaced on reconnect."""
        if not external_id or len(external_id) > 255:
            raise RequestError(422, "invalid external_id")
        if not valid_key(public_key):
            raise RequestError(422, "invalid public_key: base64 of 32 bytes expected")
        version = parse_version(user_agent)
        name = (name or "")[:255] or f"gw-{uuid.uuid4().hex[:5]}"
        record = self.gateways.get(external_id)
        if record is None:
            slot = self._slot_for(external_id)
            record = GatewayRecord(
                id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"gateway:{external_id}")),
                external_id=external_id,
                name=name,
                public_key=public_key,
                ipv4=GATEWAY_V4_BASE + slot,
                ipv6=GATEWAY_V6_BASE + slot,
                version=version,
            )
            self.gateways[external_id] = record
        record.name, record.public_key, record.version = name, public_key, version
        record.last_seen = time.time()
        return record

    def find_gateway(self, ident: str) -> GatewayRecord:
        for record in self.gateways.values():
            if ident in (record.id, record.external_id):
                return record
        raise RequestError(404, f"unknown gateway {ident!r}")

    def authorizations_for(self, gateway: GatewayRecord, now: float) -> list[dict[str, Any]]:
        """Longest expiry per (client, resource), as the portal computes for `init`."""
        best: dict[tuple[str, str], int | None] = {}
        for flow in self.flows.values():
            if flow.gateway_id != gateway.id or (flow.expires_at is not None and flow.expires_at <= now):
                continue
            key = (flow.client["id"], flow.resource["id"])
            if key in best:
                old = best[key]
                best[key] = None if old is None or flow.expires_at is None else max(old, flow.expires_at)
            else:
                best[key] = flow.expires_at
        return [{"client_id": c, "resource_id": r, "expires_at": e} for (c, r), e in best.items()]

    def init_payload(self, gateway: GatewayRecord, relays: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "interface": {"ipv4": str(gateway.ipv4), "ipv6": str(gateway.ipv6)},
            # Sent as true "for API compatibility", like the real portal; unused by gateways.
            "config": {"ipv4_masquerade_enabled": True, "ipv6_masquerade_enabled": True},
            "account_slug": "dev",
            "relays": relays,
            "authorizations": self.authorizations_for(gateway, time.time()),
        }

    # --- flows ---------------------------------------------------------------------------

    def client_flows(self, gateway_id: str, client_id: str) -> list[Flow]:
        return [f for f in self.flows.values() if f.gateway_id == gateway_id and f.client["id"] == client_id]

    def others_covering(self, flow: Flow) -> list[Flow]:
        return [
            f for f in self.flows.values()
            if f.id != flow.id and f.gateway_id == flow.gateway_id
            and f.client["id"] == flow.client["id"] and f.resource["id"] == flow.resource["id"]
        ]

    def flow_by_ref(self, ref: str) -> Flow | None:
        for flow in self.flows.values():
            if flow.ref == ref:
                return flow
        return None

    def ice_session(self, gateway_id: str, client_id: str) -> IceSession | None:
        """The ICE session of the client's newest flow on that gateway, if any."""
        flows = self.client_flows(gateway_id, client_id)
        return flows[-1].ice if flows else None

    # --- candidates the gateways broadcast ------------------------------------------------

    def add_candidates(self, gateway_id: str, client_ids: list[str], candidates: list[str]) -> None:
        for client_id in client_ids:
            known = self.candidates.setdefault((gateway_id, client_id), [])
            known.extend(c for c in dict.fromkeys(candidates) if c not in known)

    def invalidate_candidates(self, gateway_id: str, client_ids: list[str], candidates: list[str]) -> None:
        gone = set(candidates)
        for client_id in client_ids:
            key = (gateway_id, client_id)
            if key in self.candidates:
                self.candidates[key] = [c for c in self.candidates[key] if c not in gone]

    def forget_candidates(self, gateway_id: str, client_id: str) -> None:
        self.candidates.pop((gateway_id, client_id), None)

    def candidates_for(self, client_id: str, gateway_id: str | None = None) -> list[str]:
        """A client's candidates from one gateway, or from every gateway in turn."""
        return [c for (gw, cl), found in self.candidates.items()
                if cl == client_id and gateway_id in (None, gw) for c in found]
