"""Feature flags, fetched from a PostHog-compatible `/decide` endpoint, and their refresh loop.

Sources, later winning: the default (every flag false), the fetched values, the `FZFF_*`
override. Values are read on every use, so a flip applies to the next resolution without a
restart. The wiring root awaits `start()` before the portal connects (as upstream does),
then runs `run()` for the gateway's lifetime.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Mapping
from typing import Any

from gateway_pkg.dns.settings import FlagSettings

logger = logging.getLogger("gateway_pkg.dns.flags")

USERSPACE_DNS_FLAG = "gateway-userspace-dns-a-aaaa-records"
FETCH_TIMEOUT = 5.0


class FeatureFlags:
    """`distinct_id` is the gateway's external id (upstream sends it as PostHog's distinct_id)."""

    def __init__(self, settings: FlagSettings, distinct_id: str = "") -> None:
        self._settings = settings
        self._distinct_id = distinct_id
        self._override = settings.userspace_dns_override
        self._userspace_dns = False  # false until fetched

    def gateway_userspace_dns_a_aaaa_records(self) -> bool:
        if self._override is not None:
            return self._override
        return self._userspace_dns

    @property
    def fetching_enabled(self) -> bool:
        return self._settings.fetching_enabled

    async def refresh(self) -> None:
        """One evaluation; on any error every flag becomes false (upstream's rule)."""
        url = self._settings.url
        if url is None:
            return
        body = {"api_key": self._settings.api_key, "distinct_id": self._distinct_id}
        try:
            response = await asyncio.to_thread(_post_json, url, body)
            flags = response.get("featureFlags")
            if not isinstance(flags, Mapping):
                raise ValueError("the response has no featureFlags object")
            value = flags.get(USERSPACE_DNS_FLAG, False)
            # PostHog answers multivariate flags with a variant name; only `true` turns it on.
            self._set(value is True)
        except Exception as error:  # network, HTTP status, JSON: all mean "flags off"
            logger.warning("failed to evaluate feature flags from %s: %s", _redact(url), error)
            self._set(False)

    async def start(self) -> None:
        """The first evaluation, awaited before the portal connects; nothing when not fetching."""
        if not self.fetching_enabled:
            logger.debug("feature flags are not fetched (telemetry off or no URL)")
            return
        await self.refresh()

    async def run(self, *, first_at_once: bool = True) -> None:
        """Evaluate every interval until cancelled (first at once unless `start` just did it).
        Returns at once when telemetry is off or no URL is configured."""
        if not self.fetching_enabled:
            return
        if not first_at_once:
            await asyncio.sleep(self._settings.interval)
        while True:
            await self.refresh()
            await asyncio.sleep(self._settings.interval)

    def _set(self, userspace_dns: bool) -> None:
        if userspace_dns != self._userspace_dns:
            logger.info(
                "feature flag %s is now %s%s",
                USERSPACE_DNS_FLAG, userspace_dns,
                "" if self._override is None else f" (overridden to {self._override} by env)",
            )  # fmt: skip
        self._userspace_dns = userspace_dns


def _post_json(url: str, body: Mapping[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310  (the scheme is checked in settings)
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:  # noqa: S310
        decoded = json.loads(response.read())
    if not isinstance(decoded, dict):
        raise ValueError("the response is not a JSON object")
    return decoded


def _redact(url: str) -> str:
    # A query string may carry credentials; it never reaches the logs.
    return url.split("?", 1)[0]
