"""Wires the gateway together and owns the event loop, signals and shutdown."""

from __future__ import annotations

import asyncio
import base64
import logging
import platform
import signal
import time

from nacl.public import PrivateKey

from gateway_pkg import __version__
from gateway_pkg.config import Config
from gateway_pkg.errors import RuntimeFailure
from gateway_pkg.health import HealthServer
from gateway_pkg.interfaces import DataPlane
from gateway_pkg.portal import messages
from gateway_pkg.portal.client import PortalClient

log = logging.getLogger("gateway_pkg")


class Gateway:
    def __init__(self, config: Config, dataplane: DataPlane, private_key: bytes) -> None:
        self.config = config
        self.dataplane = dataplane
        self.public_key = base64.b64encode(bytes(PrivateKey(private_key).public_key)).decode()
        self.portal = PortalClient(config, self.public_key, self._on_message)
        self.health = HealthServer(config.health_check_addr.host, config.health_check_addr.port,
                                   self.readiness)
        self._stop = asyncio.Event()

    def readiness(self) -> tuple[bool, str]:
        if not self.portal.joined:
            return False, "not joined to the portal"
        ready, detail = self.dataplane.ready()
        return ready, detail if not ready else "ready"

    def _on_message(self, message: messages.IngressMessage) -> None:
        try:
            self.dataplane.handle(message, self.portal)
        except Exception:
            # One bad message must not take the gateway down; the portal will resend state.
            log.exception("Failed to handle %s", type(message).__name__)

    def request_stop(self, signame: str) -> None:
        log.info("Received %s", signame)
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        log.info(
            "`gateway` started logging",
            extra={"fields": {"version": __version__, "arch": platform.machine(),
                              "os": platform.system()}},
        )
        await self.dataplane.start()
        try:
            try:
                await self.health.start()
            except OSError as exc:
                raise RuntimeFailure(
                    f"cannot listen on HEALTH_CHECK_ADDR {self.config.health_check_addr}: {exc.strerror}"
                ) from None
            portal_task = asyncio.create_task(self.portal.run())
            stop_task = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait({portal_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if portal_task in done:
                stop_task.cancel()
                portal_task.result()  # re-raises a fatal RuntimeFailure
            else:
                await self.portal.close()
                try:
                    await asyncio.wait_for(portal_task, timeout=3)
                except (TimeoutError, asyncio.CancelledError):
                    portal_task.cancel()
        finally:
            await self.dataplane.stop()
            await self.health.stop()
        log.info("Goodbye!")


def run(config: Config, dataplane: DataPlane, private_key: bytes) -> None:
    started = time.monotonic()
    gateway = Gateway(config, dataplane, private_key)
    asyncio.run(gateway.run())
    log.debug("Ran for %.1f s", time.monotonic() - started)
