"""How the gateway treats the portal's HTTP answers to the WebSocket upgrade."""

from __future__ import annotations

import http.server
import threading

import pytest

from tests.integration.test_portal_session import start_gateway
from tests.procs import free_port, wait_for

pytestmark = pytest.mark.integration


class FixedAnswerPortal:
    """Answers every upgrade with one status; counts the attempts."""

    def __init__(self, status: int, body: str = "") -> None:
        self.attempts = 0
        portal = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # a WebSocket client rejects HTTP/1.0 answers

            def do_GET(self) -> None:
                portal.attempts += 1
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return None

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("status", "needle"), [(403, "HTTP 403"), (422, "connection parameters"),
                                                (404, "HTTP 404")])
def test_client_errors_are_fatal_with_the_status(tmp_path, status, needle, log_gate):
    log_gate.allow(r"Failed to start Gateway: portal rejected the connection with HTTP")
    portal = FixedAnswerPortal(status, "nope")
    try:
        gw = start_gateway(tmp_path, portal)
        code = gw.popen.wait(15)
        gw.stop()
    finally:
        portal.close()
    assert code == 1 and needle in gw.output() and "Traceback" not in gw.output()
    assert portal.attempts == 1  # no retry on a refusal


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limit_and_server_errors_are_retried(tmp_path, status):
    portal = FixedAnswerPortal(status)
    try:
        gw = start_gateway(tmp_path, portal)
        wait_for(lambda: portal.attempts >= 3, 15, "three attempts with backoff")
        assert gw.running()
        gw.stop()
    finally:
        portal.close()
    assert f"portal answered HTTP {status}" in gw.output()
