"""Helpers shared by the tests: free ports, polling, processes we start and stop by PID."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll until `condition()` is truthy and return its value; fail with `what` after `timeout` s.

    The one polling helper of the tests (`wait_for_async` is its twin for code on an event
    loop). The deadline is an upper bound only: a fast machine returns at once, a loaded
    one gets the whole `timeout`. The condition is evaluated once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the thing polled may not exist yet
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_exc})")
        time.sleep(interval)


async def wait_for_async(condition: Callable[[], Any], seconds: float, what: str, interval: float = 0.01) -> Any:
    """`wait_for` inside a running event loop: the loop keeps running between polls, and
    `condition` may return an awaitable (e.g. `lambda: resolver.resolve(name)`)."""
    deadline = time.monotonic() + seconds
    last_exc: Exception | None = None
    while True:
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
        except Exception as exc:  # the thing polled may not exist yet
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what} (last error: {last_exc})")
        await asyncio.sleep(interval)


def http(method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 20) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


# Every gateway process started since the list was last cleared: the integration tests' log
# gate (tests/hygiene.py, tests/integration/conftest.py) reads their output after each test.
STARTED_GATEWAYS: list[Proc] = []


class Proc:
    """A process this test started; stopped by PID only, output kept in a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, prefix: list[str] | None = None) -> None:
        self.log_path = log_path
        self.env = env
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen([*(prefix or []), *argv], env=env, stdout=self._log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if Path(argv[0]).name == "firezone-gateway":
            STARTED_GATEWAYS.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


def base_env() -> dict[str, str]:
    # FIREZONE_OFFLOADS, FIREZONE_NATIVE: `make test-fallback` runs the data-plane tests with
    # both off, every gateway on the one-packet-per-call path with pure-Python checksums.
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "TMPDIR", "FIREZONE_OFFLOADS", "FIREZONE_NATIVE")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


class DevPortalProc(Proc):
    def __init__(self, tmp: Path, port: int | None = None, host: str = "127.0.0.1",
                 gateway_token: str = "gw-token-for-tests", admin_token: str = "admin-token-for-tests",
                 prefix: list[str] | None = None, extra: list[str] | None = None) -> None:
        self.host, self.port = host, port or free_port()
        self.admin_token, self.gateway_token = admin_token, gateway_token
        (tmp / "gateway-tokens").write_text(gateway_token + "\n")
        (tmp / "admin-token").write_text(admin_token + "\n")
        argv = [str(VENV_BIN / "firezone-dev-portal"), "--listen", f"{host}:{self.port}",
                "--gateway-token-file", str(tmp / "gateway-tokens"), "--admin-token-file", str(tmp / "admin-token"),
                *(extra or [])]
        super().__init__(argv, base_env(), tmp / f"devportal-{self.port}-{time.monotonic_ns()}.log", prefix)
        wait_for(lambda: self.api("GET", "/healthz")[0] == 200 or not self.running(), 15, "dev portal /healthz")
        assert self.running(), self.output()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http(method, self.url + path, body, token=self.admin_token)

    def gateways(self) -> list[dict[str, Any]]:
        status, body = self.api("GET", "/v1/gateways")
        assert status == 200, body
        return body
