"""The gateway's configuration: one frozen, nested `Config`, built from the settings table.

`load(environ)` reads every setting of `gateway_pkg.settings.SETTINGS` (flags are folded
into the environment by the CLI first), so each setting is declared in one place. The token
is wrapped in `Secret` from the moment it is read, so no repr, log line or exception can
show it. Every mistake raises `ConfigError` naming the setting (exit status 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gateway_pkg import settings
from gateway_pkg.dns.settings import DnsSettings, FlagSettings
from gateway_pkg.errors import ConfigError
from gateway_pkg.settings import HealthAddress
from gateway_pkg.wireguard.timers import TimerConfig

TOKEN_CREDENTIAL = "FIREZONE_TOKEN"  # noqa: S105 - a credential name, not a secret

__all__ = ["Config", "DataPlaneSettings", "HealthAddress", "LogSettings", "PortalSettings", "Secret", "load"]


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
class PortalSettings:
    api_url: str = settings.default("portal.api_url")
    token_in_header: bool = settings.default("portal.token_in_header")
    portal_version: str = settings.default("portal.portal_version")
    max_reconnect_elapsed: float = settings.default("portal.max_reconnect_elapsed")
    heartbeat_interval: float = settings.default("portal.heartbeat_interval")


@dataclass(frozen=True)
class LogSettings:
    level: str = settings.default("log.level")
    format: str = settings.default("log.format")


@dataclass(frozen=True)
class DataPlaneSettings:
    udp_port: int = settings.default("dataplane.udp_port")
    rekey_after_time: float | None = settings.default("dataplane.rekey_after_time")
    disabled: bool = settings.default("dataplane.disabled")
    offloads: str = settings.default("dataplane.offloads")
    native: str = settings.default("dataplane.native")
    flow_logs: bool = settings.default("dataplane.flow_logs")
    metrics_per_client: bool = settings.default("dataplane.metrics_per_client")

    @property
    def timers(self) -> TimerConfig:
        rekey = self.rekey_after_time
        if rekey is None:
            return TimerConfig()
        return TimerConfig(rekey_after_time=rekey, reject_after_time=max(rekey * 1.5, rekey + 3))


@dataclass(frozen=True)
class Config:
    token: Secret = field(repr=False)
    firezone_id: str
    name: str
    id_path: str
    health_check_addr: HealthAddress
    no_check: bool
    portal: PortalSettings
    log: LogSettings
    flags: FlagSettings
    dns: DnsSettings
    dataplane: DataPlaneSettings

    @property
    def external_id(self) -> str:
        return external_id_for(self.firezone_id)


# Config's sections: the part of a setting's field before the dot names one of these.
SECTIONS: Mapping[str, type] = {
    "portal": PortalSettings,
    "log": LogSettings,
    "flags": FlagSettings,
    "dns": DnsSettings,
    "dataplane": DataPlaneSettings,
}


def external_id_for(firezone_id: str) -> str:
    """The id sent to the portal: SHA-256 hex of the ID when it is a UUID, else verbatim."""
    try:
        uuid.UUID(firezone_id)
    except ValueError:
        return firezone_id
    return hashlib.sha256(firezone_id.encode()).hexdigest()


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


def parse_id_file(data: bytes, path: str) -> str:
    """The ID held in an ID file's bytes, or ConfigError for an empty or garbled file.

    Our form is plain text on one line; upstream's binary writes `{"id": "..."}` when left
    alone, which is read too. A file that is empty (a write cut short by a crash or a full
    disk), not UTF-8, holds control characters (NUL blocks after a crash) or several lines is
    never taken as an ID, and never replaced by a new one either: a new ID would make the
    portal see a new gateway, so the operator decides."""
    fix = f"put this gateway's ID back into {path} (or set FIREZONE_ID), or delete the file for a new one"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"the FIREZONE_ID file {path} is garbled (not UTF-8 text); {fix}") from None
    text = text.strip()
    if not text:
        raise ConfigError(f"the FIREZONE_ID file {path} is empty (an interrupted write?); {fix}")
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        value = document.get("id") if isinstance(document, dict) else None
        if not isinstance(value, str) or not value.strip() or _has_control(value.strip()):
            raise ConfigError(f'the FIREZONE_ID file {path} is garbled (JSON without an "id" string); {fix}')
        return value.strip()
    if "\n" in text or "\r" in text:
        raise ConfigError(f"the FIREZONE_ID file {path} must hold the ID on a single line; {fix}")
    if _has_control(text):
        raise ConfigError(f"the FIREZONE_ID file {path} is garbled (control characters); {fix}")
    return text


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def read_firezone_id(value: str | None, id_path: str) -> str:
    if value is not None:
        value = value.strip()
        if not value:
            raise ConfigError("FIREZONE_ID is empty; give each gateway a unique ID (64 hex chars)")
        return value
    try:
        data = Path(id_path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"FIREZONE_ID is required: set it, or write it to {id_path}; generate one with "
            "`head -c 32 /dev/urandom | sha256sum | cut -d' ' -f1`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read FIREZONE_ID from {id_path}: {exc.strerror}") from None
    return parse_id_file(data, id_path)


def load(environ: Mapping[str, str] | None = None) -> Config:
    """Build the Config from an environment mapping (the CLI folds the flags in first)."""
    env = dict(os.environ if environ is None else environ)
    token = read_token(env)
    values = settings.parse_all(env)
    # FIREZONE_ID set but blank is a mistake; unset means "read the ID file".
    values["firezone_id"] = read_firezone_id(env.get("FIREZONE_ID"), values["id_path"])
    values["name"] = values["name"] or socket.gethostname() or str(uuid.uuid4())
    min_ttl, max_ttl = values["dns.min_ttl"], values["dns.max_ttl"]
    if min_ttl > max_ttl:
        raise ConfigError(f"FIREZONE_DNS_MIN_TTL ({min_ttl:g}) must not exceed FIREZONE_DNS_MAX_TTL ({max_ttl:g})")
    top: dict[str, Any] = {"token": token}
    grouped: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in values.items():
        section, _, name = key.rpartition(".")
        (grouped[section] if section else top)[name] = value
    for section, cls in SECTIONS.items():
        top[section] = cls(**grouped[section])
    return Config(**top)


def section_fields() -> dict[str, set[str]]:
    """Field names of each section and of Config itself, for the table-coverage test."""
    result = {name: {f.name for f in fields(cls)} for name, cls in SECTIONS.items()}
    result[""] = {f.name for f in fields(Config)} - set(SECTIONS)
    return result
