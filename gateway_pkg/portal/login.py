"""The portal login URL and the headers of the WebSocket upgrade
(../shared/reference/firezone-gateway-facts.md §2.1)."""

from __future__ import annotations

import os
import platform
from urllib.parse import urlencode, urlsplit, urlunsplit

from gateway_pkg.config import Secret


def login_url(api_url: str, *, token: Secret | None, external_id: str, name: str,
              public_key: str) -> str:
    """`<api_url>/gateway/websocket?token=…&external_id=…&name=…&public_key=…`.

    A path prefix in the API URL is kept (its trailing empty segment replaced). With
    `token=None` the token is left out (it then travels in the x-authorization header).
    """
    parts = urlsplit(api_url)
    path = parts.path.rstrip("/") + "/gateway/websocket"
    query: list[tuple[str, str]] = []
    if token is not None:
        query.append(("token", token.reveal()))
    query += [("external_id", external_id), ("name", name), ("public_key", public_key)]
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))


def redact_url(url: str) -> str:
    """The URL as it may be logged: the query string's token replaced."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = [p.split("=", 1) for p in parts.query.split("&")]
    query = "&".join(f"{k}=<redacted>" if k == "token" else "=".join([k, *v]) for k, *v in pairs)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def _os_release() -> tuple[str, str]:
    try:
        with open("/etc/os-release", encoding="utf-8") as handle:
            fields = dict(
                line.rstrip("\n").split("=", 1) for line in handle if "=" in line
            )
    except OSError:
        return "Linux", "unknown"
    name = fields.get("NAME", "Linux").strip('"').split(" ")[0]
    version = fields.get("VERSION_ID", "unknown").strip('"')
    return name, version


def user_agent(portal_version: str) -> str:
    """`Debian/12 connlib/1.4.17 (x86_64; 6.1.0-…)`: the portal reads the version from it.

    Non-ASCII characters are stripped, as upstream does, since header values must be ASCII.
    """
    os_name, os_version = _os_release()
    text = f"{os_name}/{os_version} connlib/{portal_version} ({platform.machine()}; {os.uname().release})"
    return text.encode("ascii", "ignore").decode()
