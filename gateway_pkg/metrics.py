"""Prometheus metrics of the gateway process (default registry, served on /metrics).

Portal and process metrics live here; the data plane and DNS define theirs beside their code.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, disable_created_metrics

# `*_created` series double the output and no dashboard of ours reads them.
disable_created_metrics()

PORTAL_CONNECTED = Gauge("firezone_gateway_portal_connected", "1 while a WebSocket to the portal is open")
PORTAL_JOINED = Gauge("firezone_gateway_portal_joined", "1 while joined to the gateway channel")
PORTAL_RECONNECTS = Counter("firezone_gateway_portal_reconnects", "Reconnect attempts after a hiccup")
PORTAL_MESSAGES = Counter(
    "firezone_gateway_portal_messages", "Portal messages by direction and event", ["direction", "event"]
)
PORTAL_SKIPPED = Counter(
    "firezone_gateway_portal_skipped_frames", "Malformed or undecodable portal frames that were skipped"
)
