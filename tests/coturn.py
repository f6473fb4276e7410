"""A real TURN relay for the tests: Debian's coturn (`turnserver`) with a static auth secret.

`Coturn` starts one `turnserver` child in the root namespace or in a given network
namespace, waits until it answers a STUN Binding request, mints coturn REST credentials
(username `<expiry>:<salt>`, password `base64(HMAC-SHA1(secret, username))`, as the dev
portal does) and stops the process it started, by PID.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from pathlib import Path
from types import TracebackType

from gateway_pkg.ice import stun
from tests.procs import Proc, base_env, free_port, wait_for

TURNSERVER = "/usr/bin/turnserver"
REALM = "firezone"


def _udp_socket(ip: str, ns: str | None) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
    if ns is None:
        return socket.socket(family, socket.SOCK_DGRAM)
    from pyroute2.netns import popns, pushns

    pushns(ns)
    try:
        return socket.socket(family, socket.SOCK_DGRAM)
    finally:
        popns()


def stun_binding(server: tuple[str, int], ns: str | None = None, timeout: float = 0.2) -> tuple[str, int] | None:
    """Our address as `server` sees it (XOR-MAPPED-ADDRESS), or None without an answer."""
    with _udp_socket(server[0], ns) as sock:
        sock.settimeout(timeout)
        tid = stun.new_transaction_id()
        sock.sendto(stun.encode(stun.request(stun.Method.BINDING, tid)), server)
        try:
            data = sock.recv(2048)
        except OSError:
            return None
    try:
        message = stun.decode(data)
    except stun.StunError:
        return None
    if message.transaction_id != tid or message.cls != stun.Class.SUCCESS:
        return None
    return message.xor_address()


class Coturn:
    """One coturn process; a context manager too (`with Coturn(tmp) as relay: ...`)."""

    def __init__(self, tmp: Path, listening_ip: str = "127.0.0.1", relay_ip: str | None = None,
                 port: int | None = None, ns: str | None = None, allow_loopback_peers: bool = False,
                 min_port: int = 49152, max_port: int = 65535, extra: list[str] | None = None,
                 startup_timeout: float = 15) -> None:
        self.ns = ns
        self.listening_ip = listening_ip
        self.relay_ip = relay_ip or listening_ip
        self.port = port or (free_port(socket.SOCK_DGRAM) if ns is None else 3478)
        self._secret = secrets.token_hex(16)
        self.workdir = tmp / f"coturn-{self.port}-{time.monotonic_ns()}"
        self.workdir.mkdir(parents=True)
        argv = [
            TURNSERVER, "-n",  # no config file: everything is on the command line
            "--use-auth-secret", f"--static-auth-secret={self._secret}", f"--realm={REALM}",
            f"--listening-ip={listening_ip}", f"--relay-ip={self.relay_ip}", f"--listening-port={self.port}",
            f"--min-port={min_port}", f"--max-port={max_port}",
            "--no-cli", "--no-tls", "--no-dtls", "--no-tcp", "--fingerprint", "--simple-log",
            "--log-file=stdout", f"--pidfile={self.workdir / 'turnserver.pid'}",
            # Its own user database: the default /var/lib/turn/turndb is shared and may not be writable.
            f"--db={self.workdir / 'turndb'}",
            *(["--allow-loopback-peers"] if allow_loopback_peers else []),
            *(extra or []),
        ]
        prefix = ["ip", "netns", "exec", ns] if ns else None
        self.proc = Proc(argv, base_env(), self.workdir / "turnserver.log", prefix)
        try:
            wait_for(lambda: not self.proc.running() or stun_binding(self.address, ns) is not None,
                     startup_timeout, f"coturn answering STUN on {self.address}")
            assert self.proc.running(), f"turnserver exited:\n{self.proc.output()}"
        except BaseException:
            self.proc.stop()
            raise

    @property
    def address(self) -> tuple[str, int]:
        return self.listening_ip, self.port

    @property
    def pid(self) -> int:
        return self.proc.pid

    def credentials(self, ttl: int = 3600, salt: str | None = None) -> tuple[str, str]:
        """coturn REST credentials valid for `ttl` seconds (negative: already expired)."""
        username = f"{int(time.time()) + ttl}:{salt or secrets.token_hex(4)}"
        mac = hmac.new(self._secret.encode(), username.encode(), hashlib.sha1).digest()
        return username, base64.b64encode(mac).decode()

    def running(self) -> bool:
        return self.proc.running()

    def output(self) -> str:
        return self.proc.output()

    def stop(self) -> int:
        return self.proc.stop()

    def __repr__(self) -> str:
        return f"Coturn(address={self.address!r}, ns={self.ns!r}, pid={self.proc.pid})"

    def __enter__(self) -> Coturn:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
