"""The protocols the parts of the gateway talk through, in a leaf module.

The wiring root (`gateway_pkg.app`) builds concrete objects and hands each part the others
through these protocols, so no part imports the root or another part's I/O class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway_pkg.portal import messages


class PortalSender(Protocol):
    """Sends one event on the joined portal channel (dropped while disconnected)."""

    def send(self, event: str, payload: object) -> None: ...


class DataPlane(Protocol):
    """What the portal messages drive: the tunnel data plane, or the control-only stand-in."""

    def handle(self, message: messages.IngressMessage, portal: PortalSender) -> None: ...
    def ready(self) -> tuple[bool, str]: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
