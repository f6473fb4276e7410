"""Every setting of `firezone-gateway`, declared once: env name, flag, type, default, help.

The table below is the single source of the gateway's settings. From it come the frozen
`Config` (`gateway_pkg.config.load`), the command-line parser (`gateway_pkg.cli`), the
configuration reference (`docs/configuration.md`, by `tools/gen_config_docs.py`; `make lint`
fails when it drifts) and the dataclass defaults of the parts (`default("dns.cache_size")`).

A value is read from its flag, else its env var, else the default; an empty env var counts
as unset (templated env files write `NAME=` for "not set"). A bad value is a `ConfigError`
naming the variable, so the CLI can exit 2 before anything starts.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gateway_pkg.errors import ConfigError

# Upstream's log levels (RUST_LOG); `warning` is accepted as `warn`.
LOG_LEVELS = ("trace", "debug", "info", "warn", "error")
# clap's falsey-value parser, which upstream's boolean env vars use.
_FALSEY = frozenset({"", "0", "n", "no", "f", "false", "off"})


class Invalid(ValueError):
    """A raw value a parser rejects; the message completes "<VARIABLE> ..."."""


# --- value types -------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """A value type: how to parse the raw text, and how the docs name it."""

    name: str
    parse: Callable[[str], Any]


def env_flag(value: str | None) -> bool:
    """A boolean the way upstream (clap) reads it: a falsey word is false, anything else true."""
    if value is None:
        return False
    return value.strip().lower() not in _FALSEY


def _seconds(minimum: float = 0.0, *, positive: bool = False) -> Kind:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise Invalid(f"must be a number of seconds, got {raw!r}") from None
        if positive and not (math.isfinite(value) and value > 0):
            raise Invalid(f"must be a positive number of seconds, got {raw!r}")
        if not math.isfinite(value) or value < minimum:
            raise Invalid(f"must be a finite number of seconds >= {minimum:g}, got {raw!r}")
        return value

    return Kind("seconds", parse)




def port_number(raw: str, minimum: int = 0) -> int:
    """The one port parser: decimal digits only, `minimum`..65535."""
    if not raw.isdigit() or not minimum <= int(raw) <= 65535:
        raise Invalid(f"must be a port number ({minimum}-65535), got {raw!r}")
    return int(raw)


def _positive_int(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise Invalid(f"must be a positive integer, got {raw!r}")
    return int(raw)


def _text(raw: str) -> str:
    return raw


def _choice(*choices: str) -> Kind:
    def parse(raw: str) -> str:
        value = raw.lower()
        if value not in choices:
            raise Invalid(f"must be {' or '.join(choices)}, got {raw!r}")
        return value

    return Kind(" | ".join(choices), parse)


def _override(raw: str) -> bool | None:
    """`true`/`false` (any case) override a fetched feature flag; unset leaves it alone."""
    value = raw.lower()
    if value == "":
        return None
    if value in ("true", "false"):
        return value == "true"
    raise Invalid(f"must be true or false, got {raw!r}")


def normalize_api_url(raw: str) -> str:
    """Accept http/https/ws/wss only; http(s) becomes ws(s). Query and fragment are dropped."""
    try:
        parts = urlsplit(raw)
        port = parts.port  # raises on a non-numeric port
    except ValueError as exc:
        raise Invalid(f"is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme or not parts.hostname:
        raise Invalid(f"is not a valid URL: {raw!r}")
    mapping = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if scheme not in mapping:
        raise Invalid(f"has invalid scheme `{scheme}`; only http(s) and ws(s) are allowed")
    if parts.username or parts.password:
        raise Invalid("must not carry credentials; use FIREZONE_TOKEN")
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urlunsplit((mapping[scheme], netloc, parts.path, "", ""))


def _http_url(raw: str) -> str | None:
    if not raw:
        return None
    if not raw.startswith(("http://", "https://")):
        raise Invalid(f"must be an http:// or https:// URL, got {raw!r}")
    return raw


@dataclass(frozen=True)
class HealthAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_health_addr(raw: str) -> HealthAddress:
    host, sep, port_text = raw.rpartition(":")
    if not sep or not host:
        raise Invalid(f"must be IP:PORT, got {raw!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise Invalid(f"needs an IP address, got {host!r}") from None
    try:
        port = port_number(port_text)
    except Invalid:
        raise Invalid(f"has an invalid port {port_text!r}") from None
    return HealthAddress(host, port)


def parse_log_level(raw: str) -> str:
    """Upstream's RUST_LOG: a bare level, or directives whose bare entry is the level.

    `info`, `debug`, `gateway=debug,info` all work; per-target directives other than the
    default level are accepted for compatibility and ignored.
    """
    level = None
    for directive in raw.split(","):
        directive = directive.strip().lower()
        if not directive:
            continue
        if "=" in directive:
            _, _, value = directive.partition("=")
            if value not in LOG_LEVELS and value != "off":
                raise Invalid(f"has an unknown level {value!r} (use {', '.join(LOG_LEVELS)})")
            continue
        if directive == "warning":
            directive = "warn"
        if directive not in LOG_LEVELS:
            raise Invalid(f"has an unknown level {directive!r} (use {', '.join(LOG_LEVELS)})")
        level = directive
    return level or "info"


def _portal_version(raw: str) -> str:
    parts = raw.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise Invalid(f"must look like 1.4.17, got {raw!r}")
    return raw


Nameserver = tuple[str, int]


def parse_nameservers(raw: str) -> tuple[Nameserver, ...]:
    """`192.0.2.1, 127.0.0.5:5353, [::1]:5353, 2001:db8::1` → ((address, port), ...)."""
    servers: list[Nameserver] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        host, port = item, 53
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            if rest:
                port = _nameserver_port(item, rest.removeprefix(":"))
        elif item.count(":") == 1:
            host, port_text = item.split(":")
            port = _nameserver_port(item, port_text)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise Invalid(f"entry {item!r} is not an IP address (optionally with :port)") from None
        servers.append((host, port))
    return tuple(servers)


def _nameserver_port(item: str, text: str) -> int:
    try:
        return port_number(text, minimum=1)
    except Invalid:
        raise Invalid(f"entry {item!r} has an invalid port") from None


SECONDS = _seconds()
POSITIVE_SECONDS = _seconds(positive=True)


def _optional_seconds(raw: str) -> float | None:
    return POSITIVE_SECONDS.parse(raw) if raw else None

BOOLEAN = Kind("boolean", env_flag)
PORT = Kind("port", port_number)
COUNT = Kind("positive integer", _positive_int)
TEXT = Kind("text", _text)
PATH = Kind("path", _text)
OVERRIDE = Kind("true | false", _override)


# --- the table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    env: str
    field: str  # where the value lands in Config: "name" or "<section>.<name>"
    kind: Kind
    default: str  # raw, as a user would write it; "" = unset
    help: str
    flag: str | None = None  # long option; None: env only (the token, by design)
    short: str | None = None
    group: str = ""  # the section of docs/configuration.md
    # Test and tuning knobs: documented in their own table, not shown by --help.
    advanced: bool = False

    @property
    def switch(self) -> bool:
        return self.kind is BOOLEAN

    def parse(self, raw: str | None) -> Any:
        text = (raw or "").strip() or self.default
        try:
            return self.kind.parse(text)
        except Invalid as exc:
            raise ConfigError(f"{self.env} {exc}") from None


def _s(env: str, field: str, kind: Kind, default: str, help_text: str, flag: str | None = "",
       short: str | None = None, group: str = "", advanced: bool = False) -> Setting:
    """A row; the flag defaults to the env name without FIREZONE_, kebab-cased."""
    if flag == "":
        flag = "--" + env.removeprefix("FIREZONE_").lower().replace("_", "-")
    return Setting(env, field, kind, default, help_text, flag, short, group, advanced)


PORTAL, HEALTH, LOGGING, FLAGS, DNS, DATAPLANE, TESTING = (
    "Portal", "Health", "Logging", "Feature flags", "DNS resources", "Data plane", "Testing and tuning")

SETTINGS: tuple[Setting, ...] = (
    _s("FIREZONE_TOKEN", "token", TEXT, "",
       "Gateway token from the portal. Read only from the environment or the systemd credential "
       "FIREZONE_TOKEN, never from the command line (it would show in ps).", flag=None, group=PORTAL),
    _s("FIREZONE_ID", "firezone_id", TEXT, "",
       "Stable ID of this gateway; when unset, read from the ID file (one line).",
       flag="--firezone-id", short="-i", group=PORTAL),
    _s("FIREZONE_NAME", "name", TEXT, "", "Name shown in the portal; default: the host name.",
       flag="--firezone-name", short="-n", group=PORTAL),
    _s("FIREZONE_API_URL", "portal.api_url", Kind("URL", normalize_api_url), "wss://api.firezone.dev",
       "Portal URL; http(s) is turned into ws(s).", short="-u", group=PORTAL),
    _s("FIREZONE_TOKEN_IN_HEADER", "portal.token_in_header", BOOLEAN, "false",
       "Send the token as the x-authorization header instead of in the URL query (newer portals).",
       group=PORTAL),
    # The portal derives the gateway's version from `connlib/<v>` in the User-Agent and only
    # pairs gateways with clients of a compatible minor; 1.4.17 serves 1.3, 1.4 and 1.5 clients.
    _s("FIREZONE_PORTAL_VERSION", "portal.portal_version", Kind("version", _portal_version), "1.4.17",
       "Gateway version announced to the portal in the User-Agent.", group=PORTAL),
    _s("HEALTH_CHECK_ADDR", "health_check_addr", Kind("IP:PORT", parse_health_addr), "0.0.0.0:8080",
       "Where /healthz, /readyz and /metrics listen.", flag="--health-check-addr", group=HEALTH),
    _s("RUST_LOG", "log.level", Kind("level", parse_log_level), "info",
       "Log level: trace, debug, info, warn or error (upstream's RUST_LOG; `target=level` "
       "directives are accepted and ignored).", flag="--log-level", group=LOGGING),
    _s("FIREZONE_LOG_FORMAT", "log.format", _choice("human", "json"), "human",
       "Log line format.", group=LOGGING),
    _s("FIREZONE_FLOW_LOGS", "dataplane.flow_logs", BOOLEAN, "false",
       "One log line when a flow between a client and a resource starts and one when it ends "
       "(protocol, addresses and ports, packets and bytes each way, duration, end reason), "
       "written at INFO whatever the log level.", group=LOGGING),
    _s("FIREZONE_METRICS_PER_CLIENT", "dataplane.metrics_per_client", BOOLEAN, "false",
       "Label /metrics series by client: traffic, handshakes, handshake failures and ICE path, one "
       "series per client. Off: aggregate and per-resource counts only.", group=HEALTH),
    _s("FIREZONE_NO_CHECK", "no_check", BOOLEAN, "false",
       "Skip the root/CAP_NET_ADMIN check at start.", group=DATAPLANE),
    _s("FIREZONE_NO_TELEMETRY", "flags.no_telemetry", BOOLEAN, "false",
       "No telemetry: feature flags are then never fetched.", group=FLAGS),
    _s("FIREZONE_FEATURE_FLAGS_URL", "flags.url", Kind("URL", _http_url), "",
       "PostHog-compatible /decide endpoint; unset: flags are never fetched and stay off.", group=FLAGS),
    _s("FIREZONE_FEATURE_FLAGS_INTERVAL", "flags.interval", POSITIVE_SECONDS, "300",
       "Seconds between two evaluations of the feature flags.", group=FLAGS),
    _s("FIREZONE_FEATURE_FLAGS_API_KEY", "flags.api_key", TEXT, "firezone-gateway-py",
       "api_key sent to /decide.", group=FLAGS),
    _s("FZFF_GATEWAY_USERSPACE_DNS_A_AAAA_RECORDS", "flags.userspace_dns_override", OVERRIDE, "",
       "Override the flag gateway-userspace-dns-a-aaaa-records: true resolves DNS resources with "
       "dnspython and caches each answer for its TTL; false uses the system resolver with a "
       "fixed cache. Unset: the fetched value (off until fetched).",
       flag="--userspace-dns", group=FLAGS),
    _s("FIREZONE_DNS_NAMESERVERS", "dns.nameservers", Kind("ip[:port],...", parse_nameservers), "",
       "Nameservers to use instead of those of the resolver configuration.", group=DNS),
    _s("FIREZONE_DNS_RESOLV_CONF", "dns.resolv_conf", PATH, "/etc/resolv.conf",
       "Resolver configuration read for the nameservers.", group=DNS),
    _s("FIREZONE_DNS_HOSTS_FILE", "dns.hosts_file", PATH, "/etc/hosts",
       "Hosts file consulted before the nameservers.", group=DNS),
    _s("FIREZONE_DNS_CACHE_SIZE", "dns.cache_size", COUNT, "10000", "Names kept in the DNS cache.",
       group=DNS),
    _s("FIREZONE_DNS_MIN_TTL", "dns.min_ttl", SECONDS, "0", "Lower clamp of a cached answer's TTL.",
       group=DNS),
    _s("FIREZONE_DNS_MAX_TTL", "dns.max_ttl", SECONDS, "86400", "Upper clamp of a cached answer's TTL.",
       group=DNS),
    _s("FIREZONE_DNS_MAX_STALE", "dns.max_stale_age", SECONDS, "86400",
       "Oldest expired answer served while the nameservers fail (RFC 8767).", group=DNS),
    _s("FIREZONE_DNS_PROBE_NAME", "dns.probe_name", TEXT, "firezone.dev",
       "Name whose A record the TUN DNS server (port 53535) asks every nameserver, over UDP and TCP, "
       "to pick the fastest; it must resolve (NOERROR) through them.", group=DNS),
    _s("FIREZONE_UDP_PORT", "dataplane.udp_port", PORT, "52625",
       "WireGuard UDP port (IPv4 and IPv6); an ephemeral port when it is taken.", group=DATAPLANE),
    _s("FIREZONE_OFFLOADS", "dataplane.offloads", _choice("auto", "no-uso", "off"), "auto",
       "Kernel offloads of the packet path: auto (use each one the kernel offers: UDP GSO and GRO, "
       "TUN checksum, TSO and USO), no-uso (as on Linux 6.1: no UDP segmentation on the TUN) or off "
       "(one system call per packet, no virtio header).", group=DATAPLANE),
    _s("FIREZONE_NATIVE", "dataplane.native", _choice("auto", "off"), "auto",
       "Checksums of the packet path (TUN offloads' segmentation and coalescing, IP and ICMP "
       "checksums): auto (the C extension gateway_pkg._native when it was built at install, "
       "else pure Python) or off (pure Python). The start log's \"Packet path\" line says which runs.",
       group=DATAPLANE),
    _s("FIREZONE_ID_PATH", "id_path", PATH, "/var/lib/firezone/gateway_id",
       "File holding FIREZONE_ID when the variable is unset.", group=TESTING, advanced=True),
    _s("FIREZONE_MAX_RECONNECT_SECONDS", "portal.max_reconnect_elapsed", POSITIVE_SECONDS, "900",
       "Give up (exit 1) after reconnecting to the portal for this long.", group=TESTING, advanced=True),
    _s("FIREZONE_HEARTBEAT_INTERVAL", "portal.heartbeat_interval", POSITIVE_SECONDS, "30",
       "Seconds between two Phoenix heartbeats.", group=TESTING, advanced=True),
    _s("FIREZONE_DNS_LEGACY_TTL", "dns.legacy_ttl", SECONDS, "30",
       "Fixed cache time of the system-resolver path (upstream: 30 s).", group=TESTING, advanced=True),
    _s("FIREZONE_WG_REKEY_AFTER_TIME", "dataplane.rekey_after_time", Kind("seconds", _optional_seconds), "",
       "Shorten WireGuard's rekey interval (120 s) to watch rekeys in tests.", group=TESTING,
       advanced=True),
    _s("FIREZONE_NO_DATAPLANE", "dataplane.disabled", BOOLEAN, "false",
       "Run the portal connection alone: no TUN, no traffic (protocol tests, debugging).",
       group=TESTING, advanced=True),
)

BY_ENV: Mapping[str, Setting] = {s.env: s for s in SETTINGS}
BY_FIELD: Mapping[str, Setting] = {s.field: s for s in SETTINGS}


def default(field: str) -> Any:
    """The parsed default of a setting, for the dataclass defaults of the parts."""
    return BY_FIELD[field].parse(None)


def parse_all(environ: Mapping[str, str]) -> dict[str, Any]:
    """Every setting but the token, parsed: field → value. The first mistake raises."""
    return {s.field: s.parse(environ.get(s.env)) for s in SETTINGS if s.field != "token"}
