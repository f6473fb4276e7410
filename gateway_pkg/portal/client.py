"""The portal connection: the I/O edge around `PhoenixChannel` (asyncio + websockets).

It connects, joins, feeds frames to the channel core, hands parsed messages to the
application callback, and reconnects with `Backoff`. Fatal refusals raise
`RuntimeFailure` out of `run()`; everything else is a hiccup.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import CloseCode

from gateway_pkg import metrics
from gateway_pkg.config import Config
from gateway_pkg.errors import RuntimeFailure
from gateway_pkg.netconst import FIREZONE_MARK
from gateway_pkg.portal import messages
from gateway_pkg.portal.backoff import Backoff
from gateway_pkg.portal.login import login_url, redact_url, user_agent
from gateway_pkg.portal.phoenix import Fatal, Joined, PhoenixChannel, Push, Reconnect, Reply, Skipped

log = logging.getLogger("gateway_pkg.portal")

GATEWAY_TOPIC = "gateway"
CONNECT_TIMEOUT = 5.0
# Marks the gateway's own sockets so they bypass the tunnel routing table
# (../shared/reference/firezone-gateway-facts.md §3.1).
SO_MARK = getattr(socket, "SO_MARK", 36)
# Frames above the channel core's 1 MiB limit are skipped there; the transport allows a bit
# more so that an oversized frame is logged and skipped instead of closing the socket.
MAX_WS_MESSAGE = 4 * 1024 * 1024

MessageHandler = Callable[[messages.IngressMessage], None]


class _Hiccup(Exception):
    """A transient problem with this connection: reconnect with backoff.

    `abort`: the portal stopped answering, so the socket is dropped without waiting for a
    closing handshake it would never complete (websockets waits up to 10 s for one).
    """

    def __init__(self, reason: str, *, abort: bool = False) -> None:
        super().__init__(reason)
        self.abort = abort


class _Refused(Exception):
    """The portal refused us for good."""


def _mark_socket(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, struct.pack("I", FIREZONE_MARK))
    except OSError as exc:
        # Without CAP_NET_ADMIN (--no-check runs) the mark cannot be set; harmless until the
        # tunnel routing table exists, which needs the capability anyway.
        if exc.errno not in (errno.EPERM, errno.EACCES):
            raise


async def _open_socket(host: str, port: int) -> socket.socket:
    """Resolve and connect, trying each address in order, marking each socket."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            _mark_socket(sock)
            await loop.sock_connect(sock, address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError(f"no address for {host}")


class PortalClient:
    def __init__(self, config: Config, public_key: str, on_message: MessageHandler,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._public_key = public_key
        self._on_message = on_message
        self._clock = clock
        self.channel = PhoenixChannel(GATEWAY_TOPIC, heartbeat_interval=config.portal.heartbeat_interval)
        self._ws: ClientConnection | None = None
        self._outbox: asyncio.Queue[str] | None = None
        self._stopping = asyncio.Event()
        self.last_error: str | None = None

    # --- state for health and metrics -------------------------------------------------

    @property
    def joined(self) -> bool:
        return self.channel.joined

    def send(self, event: str, payload: Any) -> None:
        """Push a message; held until joined (upstream keeps at most 32)."""
        _, frames = self.channel.push(event, payload, self._clock())
        metrics.PORTAL_MESSAGES.labels("out", event).inc()
        for frame in frames:
            self._enqueue(frame)

    def _enqueue(self, frame: str) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(frame)

    # --- connection loop --------------------------------------------------------------

    async def run(self) -> None:
        backoff = Backoff(max_elapsed=self._config.portal.max_reconnect_elapsed)
        while not self._stopping.is_set():
            try:
                ws = await self._connect()
            except _Hiccup as exc:
                self.last_error = str(exc)
            else:
                backoff.reset()
                abort = False
                try:
                    await self._session(ws)
                except _Hiccup as exc:
                    self.last_error = str(exc)
                    abort = exc.abort
                finally:
                    self._set_state(joined=False, connected=False)
                    self.channel.connection_closed()
                    self._ws = None
                    self._outbox = None
                    if abort:
                        ws.transport.abort()
                    await ws.close()
            if self._stopping.is_set():
                break
            delay = backoff.next_delay(self._clock())
            if delay is None:
                raise RuntimeFailure(
                    "Got disconnected from portal and hit the max-retry limit "
                    f"({self._config.portal.max_reconnect_elapsed:g} s). Last connection error: {self.last_error}"
                )
            metrics.PORTAL_RECONNECTS.inc()
            log.info("Hiccup in portal connection: %s; retrying in %.1f s", self.last_error, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def _connect(self) -> ClientConnection:
        config = self._config
        token = None if config.portal.token_in_header else config.token
        url = login_url(config.portal.api_url, token=token, external_id=config.external_id,
                        name=config.name, public_key=self._public_key)
        headers = {}
        if config.portal.token_in_header:
            headers["x-authorization"] = f"Bearer {config.token.reveal()}"
        parts = urlsplit(url)
        host = parts.hostname or ""
        # Upstream uses 443 when the URL names no port, even for ws:// (login_url.rs).
        port = parts.port or 443
        log.debug("Connecting to portal at %s", redact_url(url))
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                sock = await _open_socket(host, port)
                ws = await connect(
                    url,
                    sock=sock,
                    additional_headers=headers,
                    user_agent_header=user_agent(config.portal.portal_version),
                    proxy=None,
                    open_timeout=None,
                    # Phoenix heartbeats keep the channel alive; WebSocket pings are redundant.
                    ping_interval=None,
                    max_size=MAX_WS_MESSAGE,
                    compression=None,
                    logger=logging.getLogger("websockets.client"),
                )
        except InvalidStatus as exc:
            status = exc.response.status_code
            reason = exc.response.reason_phrase
            body = (exc.response.body or b"")[:200].decode("utf-8", "replace").strip()
            detail = f"HTTP {status} {reason}" + (f" ({body})" if body else "")
            if status == 429 or status >= 500:
                raise _Hiccup(f"portal answered {detail}") from None
            hint = ""
            if status in (401, 403):
                hint = ": check FIREZONE_TOKEN"
            elif status == 422:
                hint = ": the portal rejected the connection parameters (FIREZONE_ID, name, version)"
            raise RuntimeFailure(f"portal rejected the connection with {detail}{hint}") from None
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            raise _Hiccup(f"cannot connect to {parts.hostname}:{port}: {_describe(exc)}") from None
        return ws

    async def _session(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._outbox = asyncio.Queue()
        self._set_state(joined=False, connected=True)
        log.info("Connected to portal")
        for frame in self.channel.connection_opened(self._clock()):
            self._enqueue(frame)
        tasks = [
            asyncio.create_task(self._read(ws)),
            asyncio.create_task(self._write(ws, self._outbox)),
            asyncio.create_task(self._tick()),
            asyncio.create_task(self._stopping.wait()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for text in ws:
                frames, events = self.channel.receive(text, self._clock())
                for frame in frames:
                    self._enqueue(frame)
                self._handle_events(events)
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
                # The transport refused a frame over MAX_WS_MESSAGE; it cannot skip one (the
                # rest of the frame would follow), so this connection is given up.
                metrics.PORTAL_SKIPPED.inc()
                log.warning("Portal sent a frame over %d bytes (%s); reconnecting", MAX_WS_MESSAGE,
                            exc.sent.reason[:200])
            raise _Hiccup(f"connection closed: {_describe(exc)}") from None
        raise _Hiccup("connection closed by portal")

    async def _write(self, ws: ClientConnection, outbox: asyncio.Queue[str]) -> None:
        try:
            while True:
                await ws.send(await outbox.get())
        except ConnectionClosed as exc:
            raise _Hiccup(f"connection closed while sending: {_describe(exc)}") from None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.channel.next_deadline() - self._clock()))
            frames, events = self.channel.tick(self._clock())
            for frame in frames:
                self._enqueue(frame)
            self._handle_events(events)

    def _handle_events(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, Push):
                self._dispatch(event)
            elif isinstance(event, Joined):
                self._set_state(joined=True, connected=True)
                log.info("Joined gateway room on portal")
            elif isinstance(event, Reply):
                if event.status != "ok":
                    log.warning("Portal answered ref %s with %s: %s", event.ref, event.status, event.response)
            elif isinstance(event, Skipped):
                metrics.PORTAL_SKIPPED.inc()
                log.warning("Skipped a portal frame: %s", event.reason)
            elif isinstance(event, Reconnect):
                if event.unresponsive:
                    log.warning("%s; reconnecting", event.reason)
                raise _Hiccup(event.reason, abort=event.unresponsive)
            elif isinstance(event, Fatal):
                raise RuntimeFailure(f"portal refused the gateway: {event.reason}")

    def _dispatch(self, push: Push) -> None:
        metrics.PORTAL_MESSAGES.labels("in", push.event if push.event in messages.INGRESS_EVENTS else "unknown").inc()
        try:
            message = messages.parse_ingress(push.event, push.payload)
        except messages.UnknownEvent:
            log.warning("Failed to deserialize message: unknown event %r, skipped", push.event[:64])
            return
        except messages.MalformedMessage as exc:
            metrics.PORTAL_SKIPPED.inc()
            log.warning("Failed to deserialize message %r: %s", push.event, exc)
            return
        log.debug("Received %s from portal", push.event)
        self._on_message(message)

    def _set_state(self, *, joined: bool, connected: bool) -> None:
        metrics.PORTAL_CONNECTED.set(1 if connected else 0)
        metrics.PORTAL_JOINED.set(1 if joined else 0)

    async def close(self) -> None:
        """Leave the channel and close the socket; `run()` then returns."""
        ws = self._ws
        if ws is not None and self.channel.joined:
            with contextlib.suppress(Exception):
                _, frames = self.channel.push("phx_leave", {}, self._clock())
                for frame in frames:
                    await asyncio.wait_for(ws.send(frame), timeout=1.0)
        self._stopping.set()
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), timeout=2.0)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.replace("\n", " ")[:300]
