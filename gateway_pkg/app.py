"""The wiring root: builds every part from a `Config`, owns the event loop, signals and shutdown.

The console script `firezone-gateway` enters at `main`: `cli.main` turns argv and the
environment into a `Config` (or an exit status) and calls `run` with it. No other module
imports this one; the parts know each other only through `gateway_pkg.interfaces`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import signal
import sys
import time
from collections.abc import Sequence

from gateway_pkg import __version__, cli, logs
from gateway_pkg.config import Config
from gateway_pkg.controlonly import ControlOnlyDataPlane
from gateway_pkg.dns.flags import FeatureFlags
from gateway_pkg.dns.resolver import build_resolver
from gateway_pkg.dns.tunserver import TunDnsServer
from gateway_pkg.errors import GatewayError, RuntimeFailure
from gateway_pkg.health import HealthServer
from gateway_pkg.interfaces import DataPlane
from gateway_pkg.portal import messages
from gateway_pkg.portal.client import PortalClient
from gateway_pkg.tunnel import checksum
from gateway_pkg.tunnel.dataplane import TunnelDataPlane
from gateway_pkg.wireguard.keys import generate_private_key, key_to_base64, public_key

log = logging.getLogger("gateway_pkg")


class Gateway:
    """The running gateway: the portal connection drives the data plane; health watches both."""

    def __init__(self, config: Config, dataplane: DataPlane, flags: FeatureFlags, gateway_key: bytes) -> None:
        self.config = config
        self.dataplane = dataplane
        self.flags = flags
        self.portal = PortalClient(config, key_to_base64(gateway_key), self._on_message)
        self.health = HealthServer(config.health_check_addr.host, config.health_check_addr.port,
                                   self.readiness)
        self._stop = asyncio.Event()
        self._failure: GatewayError | None = None

    def fail(self, exc: GatewayError) -> None:
        """A part hit a fatal failure after start (e.g. the TUN DNS server cannot bind): stop,
        then leave `run` with it, so the process exits with its status and one line."""
        if self._failure is None:
            self._failure = exc
        self._stop.set()

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
        flags_task: asyncio.Task[None] | None = None
        try:
            # As upstream: the first flag evaluation is awaited before the portal connects.
            await self.flags.start()
            flags_task = asyncio.create_task(self.flags.run(first_at_once=False))
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
            if flags_task is not None:
                flags_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flags_task
            await self.dataplane.stop()
            await self.health.stop()
        if self._failure is not None:
            raise self._failure
        log.info("Goodbye!")


def build(config: Config) -> Gateway:
    """Every part, built once and handed to the parts that use it."""
    private_key = generate_private_key()  # a new static key per process start, as upstream
    checksum.select_native(config.dataplane.native)  # FIREZONE_NATIVE, once: the data plane logs it
    flags = FeatureFlags(config.flags, config.external_id)
    if config.dataplane.disabled:
        return Gateway(config, ControlOnlyDataPlane(), flags, public_key(private_key))
    tunnel = TunnelDataPlane(private_key, build_resolver(config.dns, flags), config.dataplane,
                             tun_dns=TunDnsServer(config.dns))
    gateway = Gateway(config, tunnel, flags, public_key(private_key))
    tunnel.on_fatal = gateway.fail
    return gateway


def run(config: Config) -> None:
    """Run the gateway until a signal or a fatal error (raised as a GatewayError)."""
    logs.setup(config.log.level, config.log.format, [config.token.reveal()])
    started = time.monotonic()
    try:
        asyncio.run(build(config).run())
    except GatewayError as exc:
        log.error("Failed to start Gateway: %s", exc)
        raise
    log.debug("Ran for %.1f s", time.monotonic() - started)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script `firezone-gateway`."""
    return cli.main(sys.argv[1:] if argv is None else argv, os.environ, run=run)


if __name__ == "__main__":
    sys.exit(main())
