"""A data plane that only records what the portal says: no TUN, no traffic, no replies.

Used with FIREZONE_NO_DATAPLANE=1 to run the control plane alone (portal protocol tests,
debugging a portal connection on a machine without /dev/net/tun).
"""

from __future__ import annotations

import logging

from gateway_pkg.interfaces import PortalSender
from gateway_pkg.portal import messages

log = logging.getLogger("gateway_pkg.controlonly")


class ControlOnlyDataPlane:
    def __init__(self) -> None:
        self.received: list[messages.IngressMessage] = []

    def handle(self, message: messages.IngressMessage, portal: PortalSender) -> None:
        self.received.append(message)
        if isinstance(message, messages.Init):
            log.info("Portal assigned tunnel addresses", extra={"fields": {
                "ipv4": message.interface.ipv4, "ipv6": message.interface.ipv6}})
        else:
            log.info("Ignoring %s: running without a data plane", type(message).__name__)

    def ready(self) -> tuple[bool, str]:
        return True, "ready (no data plane)"

    async def start(self) -> None:
        log.warning("Running without a data plane (FIREZONE_NO_DATAPLANE): no traffic is forwarded")

    async def stop(self) -> None:
        return None
