"""Typed portal messages on the `gateway` topic: parsers for what the portal sends,
builders for what the gateway sends (upstream `messages/gateway.rs`,
../shared/reference/firezone-gateway-facts.md §2.4-§2.5).

`parse_ingress` raises `MalformedMessage` (bad shape) or `UnknownEvent` (forward
compatibility: skipped by the caller) and nothing else, whatever the payload.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway_pkg.resources import (
    CidrResource,
    DnsResource,
    Filter,
    InternetResource,
    IPAddress,
    Resource,
)


class MalformedMessage(ValueError):
    """A known event whose payload does not have the documented shape."""


class UnknownEvent(ValueError):
    """An event this gateway does not know; skipped, as upstream does."""


# --- value types ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IceCredentials:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Relay:
    id: str
    type: str
    addr: str
    username: str | None
    password: str | None = field(repr=False)
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class Authorization:
    client_id: str
    resource_id: str
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class DomainPayload:
    """1.3 clients: the concrete name to resolve and the client-side proxy IPs for it."""

    name: str
    proxy_ips: tuple[IPAddress, ...]


@dataclass(frozen=True, slots=True)
class Interface:
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address


# --- inbound messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Init:
    interface: Interface
    account_slug: str | None
    relays: tuple[Relay, ...]
    authorizations: tuple[Authorization, ...]


@dataclass(frozen=True, slots=True)
class RelaysPresence:
    disconnected_ids: tuple[str, ...]
    connected: tuple[Relay, ...]


@dataclass(frozen=True, slots=True)
class FlowClient:
    id: str
    public_key: bytes
    preshared_key: bytes
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class AuthorizeFlow:
    """1.4+ clients: the portal picks keys and ICE credentials; accept immediately."""

    ref: str
    resource: Resource
    client: FlowClient
    gateway_ice_credentials: IceCredentials | None
    client_ice_credentials: IceCredentials | None
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class RequestConnection:
    """Deprecated 1.3 path: resolve `domain` (if any) before accepting."""

    ref: str
    resource: Resource
    client: FlowClient
    client_ice_credentials: IceCredentials | None
    domain: DomainPayload | None
    persistent_keepalive: int | None
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class AllowAccess:
    """Deprecated 1.3 path: another resource on an existing connection; no reply."""

    ref: str
    client_id: str
    resource: Resource
    expires_at: int | None
    domain: DomainPayload | None
    client_ipv4: ipaddress.IPv4Address | None
    client_ipv6: ipaddress.IPv6Address | None


@dataclass(frozen=True, slots=True)
class RejectAccess:
    client_id: str
    resource_id: str


@dataclass(frozen=True, slots=True)
class ResourceUpdated:
    resource: Resource


@dataclass(frozen=True, slots=True)
class AccessAuthorizationExpiryUpdated:
    client_id: str
    resource_id: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class IceCandidates:
    client_id: str
    candidates: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InvalidateIceCandidates:
    client_id: str
    candidates: tuple[str, ...]


IngressMessage = (
    Init
    | RelaysPresence
    | AuthorizeFlow
    | RequestConnection
    | AllowAccess
    | RejectAccess
    | ResourceUpdated
    | AccessAuthorizationExpiryUpdated
    | IceCandidates
    | InvalidateIceCandidates
)


# --- field readers: each raises MalformedMessage with the field's path -----------------


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedMessage(f"{path} must be an object")
    return value


def _str(doc: dict[str, Any], key: str, path: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise MalformedMessage(f"{path}.{key} must be a string")
    return value


def _opt_str(doc: dict[str, Any], key: str, path: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedMessage(f"{path}.{key} must be a string or null")
    return value


def _opt_timestamp(doc: dict[str, Any], key: str, path: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise MalformedMessage(f"{path}.{key} must be a unix timestamp or null")
    if not 0 <= value < 2**63:
        raise MalformedMessage(f"{path}.{key} is out of range")
    return int(value)


def _key(doc: dict[str, Any], key: str, path: str) -> bytes:
    text = _str(doc, key, path)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage(f"{path}.{key} is not base64") from None
    if len(raw) != 32:
        raise MalformedMessage(f"{path}.{key} must be 32 bytes")
    return raw


def _ip(value: Any, path: str) -> IPAddress:
    if not isinstance(value, str):
        raise MalformedMessage(f"{path} must be an IP address string")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise MalformedMessage(f"{path} is not an IP address") from None


def _ipv4(value: Any, path: str) -> ipaddress.IPv4Address:
    ip = _ip(value, path)
    if not isinstance(ip, ipaddress.IPv4Address):
        raise MalformedMessage(f"{path} must be IPv4")
    return ip


def _ipv6(value: Any, path: str) -> ipaddress.IPv6Address:
    ip = _ip(value, path)
    if not isinstance(ip, ipaddress.IPv6Address):
        raise MalformedMessage(f"{path} must be IPv6")
    return ip


def _list(value: Any, path: str, *, default_empty: bool = True) -> list[Any]:
    if value is None and default_empty:
        return []
    if not isinstance(value, list):
        raise MalformedMessage(f"{path} must be a list")
    return value


def _ice(value: Any, path: str) -> IceCredentials | None:
    if value is None:
        return None
    doc = _obj(value, path)
    return IceCredentials(_str(doc, "username", path), _str(doc, "password", path))


def parse_filter(value: Any, path: str) -> Filter:
    doc = _obj(value, path)
    protocol = doc.get("protocol")
    if protocol == "icmp":
        return Filter("icmp")
    if protocol not in ("tcp", "udp"):
        raise MalformedMessage(f"{path}.protocol must be tcp, udp or icmp")
    start = doc.get("port_range_start", 0)
    end = doc.get("port_range_end", 65535)
    for name, port in (("port_range_start", start), ("port_range_end", end)):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise MalformedMessage(f"{path}.{name} must be a port number")
    if start > end:
        raise MalformedMessage(f"{path} has port_range_start > port_range_end")
    return Filter(protocol, start, end)


def parse_resource(value: Any, path: str = "resource") -> Resource:
    doc = _obj(value, path)
    kind = doc.get("type")
    rid = _str(doc, "id", path)
    filters = tuple(
        parse_filter(f, f"{path}.filters[{i}]")
        for i, f in enumerate(_list(doc.get("filters"), f"{path}.filters"))
    )
    if kind == "internet":
        return InternetResource(rid, filters)
    name = _opt_str(doc, "name", path) or ""
    address = _str(doc, "address", path)
    if kind == "cidr":
        try:
            network = ipaddress.ip_network(address, strict=False)
        except ValueError:
            raise MalformedMessage(f"{path}.address is not a CIDR") from None
        return CidrResource(rid, network, name, filters)
    if kind == "dns":
        if not address or len(address) > 253:
            raise MalformedMessage(f"{path}.address must be a DNS name pattern")
        return DnsResource(rid, address, name, filters)
    raise MalformedMessage(f"{path}.type must be cidr, dns or internet")


def _relay(value: Any, path: str) -> Relay:
    doc = _obj(value, path)
    kind = _str(doc, "type", path)
    if kind not in ("turn", "stun"):
        raise MalformedMessage(f"{path}.type must be turn or stun")
    return Relay(
        id=_str(doc, "id", path),
        type=kind,
        addr=_str(doc, "addr", path),
        username=_opt_str(doc, "username", path),
        password=_opt_str(doc, "password", path),
        expires_at=_opt_timestamp(doc, "expires_at", path),
    )


def _domain(value: Any, path: str) -> DomainPayload | None:
    if value is None:
        return None
    doc = _obj(value, path)
    ips = tuple(
        _ip(ip, f"{path}.proxy_ips[{i}]")
        for i, ip in enumerate(_list(doc.get("proxy_ips"), f"{path}.proxy_ips"))
    )
    return DomainPayload(_str(doc, "name", path), ips)


def _candidates(doc: dict[str, Any], path: str) -> tuple[str, ...]:
    # Unparsable entries are skipped rather than failing the message, as upstream does.
    return tuple(c for c in _list(doc.get("candidates"), f"{path}.candidates") if isinstance(c, str))


# --- per-event parsers ------------------------------------------------------------------


def _init(p: dict[str, Any]) -> Init:
    iface = _obj(p.get("interface"), "interface")
    _obj(p.get("config"), "config")  # required by upstream, values unused
    return Init(
        interface=Interface(_ipv4(iface.get("ipv4"), "interface.ipv4"),
                            _ipv6(iface.get("ipv6"), "interface.ipv6")),
        account_slug=_opt_str(p, "account_slug", "init"),
        relays=tuple(_relay(r, f"relays[{i}]") for i, r in enumerate(_list(p.get("relays"), "relays"))),
        authorizations=tuple(
            Authorization(
                _str(_obj(a, f"authorizations[{i}]"), "client_id", f"authorizations[{i}]"),
                _str(a, "resource_id", f"authorizations[{i}]"),
                _opt_timestamp(a, "expires_at", f"authorizations[{i}]"),
            )
            for i, a in enumerate(_list(p.get("authorizations"), "authorizations"))
        ),
    )


def _relays_presence(p: dict[str, Any]) -> RelaysPresence:
    ids = _list(p.get("disconnected_ids"), "disconnected_ids")
    if not all(isinstance(i, str) for i in ids):
        raise MalformedMessage("disconnected_ids must be strings")
    return RelaysPresence(
        tuple(ids),
        tuple(_relay(r, f"connected[{i}]") for i, r in enumerate(_list(p.get("connected"), "connected"))),
    )


def _flow_client(doc: dict[str, Any], path: str, keys: dict[str, Any]) -> FlowClient:
    return FlowClient(
        id=_str(doc, "id", path),
        public_key=_key(keys, "public_key", path),
        preshared_key=_key(keys, "preshared_key", path),
        ipv4=_ipv4(keys.get("ipv4"), f"{path}.ipv4"),
        ipv6=_ipv6(keys.get("ipv6"), f"{path}.ipv6"),
    )


def _authorize_flow(p: dict[str, Any]) -> AuthorizeFlow:
    client = _obj(p.get("client"), "client")
    return AuthorizeFlow(
        ref=_str(p, "ref", "authorize_flow"),
        resource=parse_resource(p.get("resource")),
        client=_flow_client(client, "client", client),
        gateway_ice_credentials=_ice(p.get("gateway_ice_credentials"), "gateway_ice_credentials"),
        client_ice_credentials=_ice(p.get("client_ice_credentials"), "client_ice_credentials"),
        expires_at=_opt_timestamp(p, "expires_at", "authorize_flow"),
    )


def _request_connection(p: dict[str, Any]) -> RequestConnection:
    client = _obj(p.get("client"), "client")
    peer = _obj(client.get("peer"), "client.peer")
    payload = client.get("payload")
    payload_doc = _obj(payload, "client.payload") if payload is not None else {}
    keepalive = peer.get("persistent_keepalive")
    if keepalive is not None and (isinstance(keepalive, bool) or not isinstance(keepalive, int)):
        raise MalformedMessage("client.peer.persistent_keepalive must be an integer")
    return RequestConnection(
        ref=_str(p, "ref", "request_connection"),
        resource=parse_resource(p.get("resource")),
        client=_flow_client(client, "client", peer),
        client_ice_credentials=_ice(payload_doc.get("ice_parameters"), "client.payload.ice_parameters"),
        domain=_domain(payload_doc.get("domain"), "client.payload.domain"),
        persistent_keepalive=keepalive,
        expires_at=_opt_timestamp(p, "expires_at", "request_connection"),
    )


def _allow_access(p: dict[str, Any]) -> AllowAccess:
    v4, v6 = p.get("client_ipv4"), p.get("client_ipv6")
    return AllowAccess(
        ref=_opt_str(p, "ref", "allow_access") or "",
        client_id=_str(p, "client_id", "allow_access"),
        resource=parse_resource(p.get("resource")),
        expires_at=_opt_timestamp(p, "expires_at", "allow_access"),
        domain=_domain(p.get("payload"), "payload"),
        client_ipv4=None if v4 is None else _ipv4(v4, "client_ipv4"),
        client_ipv6=None if v6 is None else _ipv6(v6, "client_ipv6"),
    )


def _reject_access(p: dict[str, Any]) -> RejectAccess:
    return RejectAccess(_str(p, "client_id", "reject_access"), _str(p, "resource_id", "reject_access"))


def _expiry_updated(p: dict[str, Any]) -> AccessAuthorizationExpiryUpdated:
    expires = _opt_timestamp(p, "expires_at", "access_authorization_expiry_updated")
    if expires is None:
        raise MalformedMessage("access_authorization_expiry_updated.expires_at is required")
    return AccessAuthorizationExpiryUpdated(
        _str(p, "client_id", "access_authorization_expiry_updated"),
        _str(p, "resource_id", "access_authorization_expiry_updated"),
        expires,
    )


_PARSERS: dict[str, Callable[[dict[str, Any]], IngressMessage]] = {
    "init": _init,
    "relays_presence": _relays_presence,
    "authorize_flow": _authorize_flow,
    "request_connection": _request_connection,
    "allow_access": _allow_access,
    "reject_access": _reject_access,
    "resource_updated": lambda p: ResourceUpdated(parse_resource(p, "resource_updated")),
    "access_authorization_expiry_updated": _expiry_updated,
    "ice_candidates": lambda p: IceCandidates(_str(p, "client_id", "ice_candidates"),
                                              _candidates(p, "ice_candidates")),
    "invalidate_ice_candidates": lambda p: InvalidateIceCandidates(
        _str(p, "client_id", "invalidate_ice_candidates"), _candidates(p, "invalidate_ice_candidates")
    ),
}

INGRESS_EVENTS = frozenset(_PARSERS)


def parse_ingress(event: str, payload: Any) -> IngressMessage:
    parser = _PARSERS.get(event)
    if parser is None:
        raise UnknownEvent(event)
    try:
        return parser(_obj(payload, event))
    except MalformedMessage:
        raise
    except (TypeError, ValueError, AttributeError, RecursionError) as exc:
        # Defence in depth: any shape we did not foresee is still only a malformed message.
        raise MalformedMessage(f"{event}: {type(exc).__name__}") from None


# --- outbound builders (event, payload) -------------------------------------------------


def flow_authorized(ref: str) -> tuple[str, dict[str, Any]]:
    return "flow_authorized", {"ref": ref}


def connection_ready(ref: str, ice: IceCredentials) -> tuple[str, dict[str, Any]]:
    # `ConnectionAccepted` is serde's external enum tag upstream; the portal expects it verbatim.
    return "connection_ready", {
        "ref": ref,
        "gateway_payload": {
            "ConnectionAccepted": {"ice_parameters": {"username": ice.username, "password": ice.password}}
        },
    }


def broadcast_ice_candidates(client_ids: list[str], candidates: list[str]) -> tuple[str, dict[str, Any]]:
    return "broadcast_ice_candidates", {"client_ids": client_ids, "candidates": candidates}


def broadcast_invalidated_ice_candidates(
    client_ids: list[str], candidates: list[str]
) -> tuple[str, dict[str, Any]]:
    return "broadcast_invalidated_ice_candidates", {"client_ids": client_ids, "candidates": candidates}
