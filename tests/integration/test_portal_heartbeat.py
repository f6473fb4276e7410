"""Heartbeat loss: a portal that stops answering but keeps the TCP connection open.

The dev portal process this test started is stopped with SIGSTOP: the kernel keeps its
sockets (our frames are still acknowledged at the TCP level), but nothing answers. The
gateway must notice from its heartbeats, reconnect, and rejoin once the portal runs again.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from gateway_pkg.portal.phoenix import MISSED_HEARTBEATS
from tests.integration.test_portal_session import TOKEN, readyz, start_gateway
from tests.procs import DevPortalProc, wait_for

pytestmark = pytest.mark.integration
INTERVAL = 0.5
CAUSE = f"portal missed {MISSED_HEARTBEATS} heartbeats; reconnecting"


@pytest.fixture
def portal(tmp_path):
    proc = DevPortalProc(tmp_path, gateway_token=TOKEN)
    yield proc
    proc.stop()


def test_stopped_portal_is_left_after_missed_heartbeats_and_rejoined(tmp_path, portal, log_gate):
    log_gate.allow(r"portal missed 3 heartbeats; reconnecting")
    gw = start_gateway(tmp_path, portal, extra_env={"FIREZONE_HEARTBEAT_INTERVAL": str(INTERVAL)})
    try:
        wait_for(lambda: readyz(gw) == 200, 15, "gateway joined")
        # Heartbeats are being answered before the portal stops.
        wait_for(lambda: portal.gateways()[0]["heartbeats"] >= 2, 10, "two answered heartbeats")
        assert CAUSE not in gw.output()

        stopped = time.monotonic()
        os.kill(portal.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: CAUSE in gw.output(), 10 * INTERVAL + 5, "the missed-heartbeat reconnect")
            elapsed = time.monotonic() - stopped
            # The heartbeat in flight at SIGSTOP may be the first of the three; the verdict
            # comes when the fourth is due, so between ~3 and 4 intervals (+ tick and poll slack).
            assert (MISSED_HEARTBEATS - 1) * INTERVAL <= elapsed <= (MISSED_HEARTBEATS + 1) * INTERVAL + 1.0, elapsed
            assert gw.running()
            wait_for(lambda: readyz(gw) == 503, 5, "not ready while the portal does not answer")
            # The dead socket is dropped, not closed with a handshake the portal would never
            # answer (10 s in websockets): the first retry is immediate, still while stopped.
            wait_for(lambda: "Connecting to portal" in gw.output().split(CAUSE, 1)[1], 4 * INTERVAL,
                     "a new connection attempt while the portal is stopped")
        finally:
            os.kill(portal.pid, signal.SIGCONT)

        wait_for(lambda: readyz(gw) == 200, 20, "ready again after SIGCONT")
        [record] = wait_for(lambda: [g for g in portal.gateways() if g["joined"] and g["connected"]], 10,
                            "the portal sees the gateway joined again")
        assert len(portal.gateways()) == 1  # the same gateway rejoined, not a second one
        assert record["connects"] >= 2
        out = gw.output()
        assert out.count(CAUSE) == 1
        assert out.count("Joined gateway room on portal") >= 2
        assert TOKEN not in out and "Traceback" not in out
    finally:
        code = gw.stop()
    assert code == 0
