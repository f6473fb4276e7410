"""A real unbound on a loopback address, serving a static `test.` zone we write.

Used by the DNS integration tests and by bench/bench_dns.py. Records change through
unbound-control (local_data_remove, then local_data); the server's own query counter
(`total.num.queries`) is the ground truth for "did we ask upstream".
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.procs import wait_for

UNBOUND = "/usr/sbin/unbound"
UNBOUND_CONTROL = "/usr/sbin/unbound-control"
SOA = "test. {ttl} IN SOA ns.test. admin.test. 1 3600 600 86400 {minimum}"


def available() -> bool:
    return os.path.exists(UNBOUND) and os.path.exists(UNBOUND_CONTROL)


def _free_port(address: str) -> int:
    """A port free for both UDP and TCP on `address` (unbound listens on both)."""
    for _ in range(50):
        port = random.randint(20_000, 60_000)
        with contextlib.ExitStack() as stack:
            try:
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = stack.enter_context(socket.socket(socket.AF_INET, kind))
                    s.bind((address, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port on " + address)


class Unbound:
    def __init__(self, records: list[str], *, soa_minimum: int = 3, extra: str = "") -> None:
        # A short directory: the control socket path must fit in sun_path (108 bytes).
        self.workdir = Path(tempfile.mkdtemp(prefix="fzdns-"))
        self.address = f"127.0.{random.randint(1, 254)}.{random.randint(2, 254)}"
        self.port = _free_port(self.address)
        self.config = self.workdir / "unbound.conf"
        self.log = self.workdir / "unbound.log"
        local_data = "\n".join(
            f'    local-data: "{rr}"' for rr in [SOA.format(ttl=max(10, soa_minimum), minimum=soa_minimum), *records]
        )
        self.config.write_text(
            f"""server:
    interface: {self.address}@{self.port}
    port: {self.port}
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{self.workdir}"
    pidfile: "{self.workdir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    num-threads: 1
    do-ip6: no
    so-reuseport: no
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    statistics-cumulative: no
    local-zone: "." refuse
    local-zone: "test." static
{local_data}
{extra}
remote-control:
    control-enable: yes
    control-interface: {self.workdir}/ctl.sock
"""
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> tuple[str, int]:
        return (self.address, self.port)

    def start(self, deadline: float = 10.0) -> None:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [UNBOUND, "-d", "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        process = self.process

        def answering_or_gone() -> bool:
            if process.poll() is not None:
                return True
            status = subprocess.run(
                [UNBOUND_CONTROL, "-c", str(self.config), "status"], capture_output=True, check=False
            )
            return status.returncode == 0

        wait_for(answering_or_gone, deadline, "unbound to answer unbound-control status")
        if process.poll() is not None:
            raise RuntimeError(f"unbound exited: {self.log_text()}")

    def control(self, *args: str) -> str:
        result = subprocess.run(
            [UNBOUND_CONTROL, "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return result.stdout

    def queries(self) -> int:
        for line in self.control("stats_noreset").splitlines():
            if line.startswith("total.num.queries="):
                return int(line.split("=", 1)[1])
        raise RuntimeError("total.num.queries missing from unbound stats")

    def wait_for_queries(self, expected: int, deadline: float = 5.0) -> int:
        """Poll the counter until it reaches `expected` (unbound may still be draining
        its socket after a resume); return the value then seen, so that a test can tell
        "exactly" from "at least"."""
        wait_for(lambda: self.queries() >= expected, deadline, f"unbound to count {expected} queries")
        return self.queries()

    def replace(self, name: str, *records: str) -> None:
        """Swap every record of `name` for `records` (a bare local_data would add one)."""
        self.control("local_data_remove", name)
        for record in records:
            self.control("local_data", *record.split())

    def pause(self) -> None:
        """The upstream stops answering: packets queue in its socket, unanswered."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a stopped process cannot exit
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def write_resolv_conf(self, timeout: int = 2, attempts: int = 1) -> Path:
        """A resolv.conf for the resolver under test (the port comes separately, as
        resolv.conf cannot carry one)."""
        path = self.workdir / "resolv.conf"
        path.write_text(f"nameserver {self.address}\noptions timeout:{timeout} attempts:{attempts}\n")
        return path

    def write_hosts(self, text: str = "127.0.0.1 localhost\n") -> Path:
        path = self.workdir / "hosts"
        path.write_text(text)
        return path
