"""The portal client's edge: a frame over the transport limit ends the connection with a warning."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.frames import Close, CloseCode

from gateway_pkg.portal import client as portal_client
from gateway_pkg.portal.client import MAX_WS_MESSAGE, PortalClient


class _ClosingSocket:
    """Stands in for a websockets connection whose next read fails with `exc`."""

    def __init__(self, exc: Exception) -> None:
        self._exc = exc

    def __aiter__(self) -> _ClosingSocket:
        return self

    async def __anext__(self) -> str:
        raise self._exc


def _client() -> PortalClient:
    config = SimpleNamespace(portal=SimpleNamespace(heartbeat_interval=30.0))
    return PortalClient(config, "key", lambda message: None)  # type: ignore[arg-type]


async def test_a_frame_over_the_transport_limit_is_one_warning_and_a_reconnect(caplog):
    too_big = Close(CloseCode.MESSAGE_TOO_BIG, f"frame with {MAX_WS_MESSAGE + 1} bytes exceeds limit")
    socket = _ClosingSocket(ConnectionClosedError(None, too_big, None))
    caplog.set_level(logging.INFO, logger="gateway_pkg.portal")
    with pytest.raises(portal_client._Hiccup, match="1009"):
        await _client()._read(socket)  # type: ignore[arg-type]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"Portal sent a frame over {MAX_WS_MESSAGE} bytes (frame with {MAX_WS_MESSAGE + 1} "
                        "bytes exceeds limit); reconnecting"]


async def test_an_ordinary_close_is_no_warning(caplog):
    socket = _ClosingSocket(ConnectionClosedError(Close(CloseCode.GOING_AWAY, "bye"), None, None))
    caplog.set_level(logging.INFO, logger="gateway_pkg.portal")
    with pytest.raises(portal_client._Hiccup, match="connection closed"):
        await _client()._read(socket)  # type: ignore[arg-type]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
