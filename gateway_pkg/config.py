"""Configuration: environment variables and equivalent flags → one frozen `Config`.

Every mistake a user can make here raises `ConfigError` with one line that names the
setting; the CLI turns it into exit status 2. The token is wrapped in `Secret` from the
moment it is read so that no repr, log line or exception can show it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from gateway_pkg.errors import ConfigError

DEFAULT_API_URL = "wss://api.firezone.dev"
DEFAULT_HEALTH_CHECK_ADDR = "0.0.0.0:8080"
DEFAULT_ID_PATH = "/var/lib/firezone/gateway_id"
# The portal derives the gateway's version from `connlib/<v>` in the User-Agent and only
# pairs gateways with clients of a compatible minor; 1.4.17 serves 1.3, 1.4 and 1.5 clients.
DEFAULT_PORTAL_VERSION = "1.4.17"
TOKEN_CREDENTIAL = "FIREZONE_TOKEN"  # noqa: S105 - a credential name, not a secret
LOG_LEVELS = ("trace", "debug", "info", "warn", "error")
# clap's falsey-value parser, which upstream's boolean env vars use.
_FALSEY = frozenset({"", "0", "n", "no", "f", "false", "off"})


class Secret:
    """A string that refuses to be shown. Call `reveal()` at the single place it is used."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class HealthAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    token: Secret = field(repr=False)
    firezone_id: str
    api_url: str
    name: str
    health_check_addr: HealthAddress
    no_telemetry: bool
    log_level: str
    log_format: str
    no_check: bool
    portal_version: str
    token_in_header: bool
    max_reconnect_elapsed: float
    heartbeat_interval: float
    environ: Mapping[str, str] = field(repr=False, compare=False, default_factory=dict)

    @property
    def external_id(self) -> str:
        return external_id_for(self.firezone_id)


def env_flag(value: str | None) -> bool:
    """Parse a boolean env var the way upstream (clap) does: falsey words, else true."""
    if value is None:
        return False
    return value.strip().lower() not in _FALSEY


def external_id_for(firezone_id: str) -> str:
    """The id sent to the portal: SHA-256 hex of the ID when it is a UUID, else verbatim."""
    try:
        uuid.UUID(firezone_id)
    except ValueError:
        return firezone_id
    return hashlib.sha256(firezone_id.encode()).hexdigest()


def normalize_api_url(raw: str) -> str:
    """Accept http/https/ws/wss only; http(s) becomes ws(s). Query and fragment are dropped."""
    try:
        parts = urlsplit(raw.strip())
        port = parts.port  # raises on a non-numeric port
    except ValueError as exc:
        raise ConfigError(f"FIREZONE_API_URL is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme or not parts.hostname:
        raise ConfigError(f"FIREZONE_API_URL is not a valid URL: {raw!r}")
    mapping = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if scheme not in mapping:
        raise ConfigError(
            f"FIREZONE_API_URL has invalid scheme `{scheme}`; only http(s) and ws(s) are allowed"
        )
    if parts.username or parts.password:
        raise ConfigError("FIREZONE_API_URL must not carry credentials; use FIREZONE_TOKEN")
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is not None:
        netloc = f"{netloc}:{port}"
    return urlunsplit((mapping[scheme], netloc, parts.path, "", ""))


def parse_health_addr(raw: str) -> HealthAddress:
    text = raw.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"HEALTH_CHECK_ADDR must be IP:PORT, got {raw!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"HEALTH_CHECK_ADDR needs an IP address, got {host!r}") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"HEALTH_CHECK_ADDR has an invalid port {port_text!r}")
    return HealthAddress(host, int(port_text))


def parse_log_level(raw: str | None) -> str:
    """Accept upstream's RUST_LOG: a bare level, or directives whose bare entry is the level.

    `info`, `debug`, `gateway=debug,info` all work; per-target directives other than the
    default level are accepted for compatibility and ignored.
    """
    if raw is None or not raw.strip():
        return "info"
    level = None
    for directive in raw.split(","):
        directive = directive.strip().lower()
        if not directive:
            continue
        if "=" in directive:
            _, _, value = directive.partition("=")
            if value not in LOG_LEVELS and value != "off":
                raise ConfigError(f"RUST_LOG has an unknown level {value!r} (use {', '.join(LOG_LEVELS)})")
            continue
        if directive == "warning":
            directive = "warn"
        if directive not in LOG_LEVELS:
            raise ConfigError(
                f"RUST_LOG has an unknown level {directive!r} (use {', '.join(LOG_LEVELS)})"
            )
        level = directive
    return level or "info"


def read_token(environ: Mapping[str, str]) -> Secret:
    token = environ.get("FIREZONE_TOKEN")
    if token is not None and token.strip():
        return Secret(token.strip())
    cred_dir = environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / TOKEN_CREDENTIAL
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            value = ""
        except OSError as exc:
            raise ConfigError(f"cannot read the token credential {path}: {exc.strerror}") from None
        if value:
            return Secret(value)
    raise ConfigError(
        "FIREZONE_TOKEN is required: set it in the environment or pass it as the systemd "
        "credential FIREZONE_TOKEN (LoadCredential=FIREZONE_TOKEN:/etc/firezone/gateway-token)"
    )


def read_firezone_id(value: str | None, id_path: str) -> str:
    if value is not None:
        value = value.strip()
        if not value:
            raise ConfigError("FIREZONE_ID is empty; give each gateway a unique ID (64 hex chars)")
        return value
    try:
        text = Path(id_path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise ConfigError(f"cannot read FIREZONE_ID from {id_path}: {exc.strerror}") from None
    if "\n" in text:
        raise ConfigError(f"{id_path} must hold the ID on a single line")
    if text:
        return text
    raise ConfigError(
        f"FIREZONE_ID is required: set it, or write it to {id_path}; generate one with "
        "`head -c 32 /dev/urandom | sha256sum | cut -d' ' -f1`"
    )


def _float_env(environ: Mapping[str, str], key: str, default: float) -> float:
    raw = environ.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{key} must be positive, got {raw!r}")
    return value


def load(environ: Mapping[str, str] | None = None) -> Config:
    """Build the Config from an environment mapping (flags are merged in by the CLI)."""
    env = dict(os.environ if environ is None else environ)
    token = read_token(env)
    firezone_id = read_firezone_id(env.get("FIREZONE_ID"), env.get("FIREZONE_ID_PATH", DEFAULT_ID_PATH))
    api_url = normalize_api_url(env.get("FIREZONE_API_URL") or DEFAULT_API_URL)
    name = (env.get("FIREZONE_NAME") or "").strip() or socket.gethostname() or str(uuid.uuid4())
    health = parse_health_addr(env.get("HEALTH_CHECK_ADDR") or DEFAULT_HEALTH_CHECK_ADDR)
    log_format = (env.get("FIREZONE_LOG_FORMAT") or "human").strip().lower()
    if log_format not in ("human", "json"):
        raise ConfigError(f"FIREZONE_LOG_FORMAT must be human or json, got {log_format!r}")
    version = (env.get("FIREZONE_PORTAL_VERSION") or DEFAULT_PORTAL_VERSION).strip()
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ConfigError(f"FIREZONE_PORTAL_VERSION must look like 1.4.17, got {version!r}")
    return Config(
        token=token,
        firezone_id=firezone_id,
        api_url=api_url,
        name=name,
        health_check_addr=health,
        no_telemetry=env_flag(env.get("FIREZONE_NO_TELEMETRY")),
        log_level=parse_log_level(env.get("RUST_LOG")),
        log_format=log_format,
        no_check=env_flag(env.get("FIREZONE_NO_CHECK")),
        portal_version=version,
        token_in_header=env_flag(env.get("FIREZONE_TOKEN_IN_HEADER")),
        max_reconnect_elapsed=_float_env(env, "FIREZONE_MAX_RECONNECT_SECONDS", 900.0),
        heartbeat_interval=_float_env(env, "FIREZONE_HEARTBEAT_INTERVAL", 30.0),
        environ=env,
    )
