"""Faults at start, with real components: the WireGuard port taken, and an ID file that
cannot be written (read-only, full, forbidden) or is empty.

1. A socket of someone else holds UDP 52625 in the gateway's namespace (IPv4, IPv6 or both)
   before the gateway starts. The gateway falls back to one ephemeral port for both families,
   says so in ONE warning naming both ports, advertises that port (its ICE host candidates,
   through the dev portal) and a stock wireguard-go client connected to it carries traffic.
2. `firezone-gateway-init --write-id` on a read-only tmpfs, a full tmpfs and a directory it may
   not write: exit 1, one line on stderr naming the path and the reason, no traceback, nothing
   left behind; an existing ID is kept, an empty one is refused by init and by the gateway.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_pkg.hostsetup import ID_APP
from gateway_pkg.netconst import FIREZONE_MARK
from tests.netlab import NetLab, sh
from tests.procs import VENV_BIN, base_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]

PORT = 52625
V4, V6 = socket.AF_INET, socket.AF_INET6
FAMILIES = {"ipv4": (V4,), "ipv6": (V6,), "both": (V4, V6)}
INIT = str(VENV_BIN / "firezone-gateway-init")
GATEWAY = str(VENV_BIN / "firezone-gateway")


# --- 1. the UDP port taken at start ---------------------------------------------------------

@pytest.fixture
def blocker(lab, request) -> Iterator[list[socket.socket]]:
    """Sockets (not the gateway's) holding UDP 52625 in the gateway namespace, per family."""
    from pyroute2.netns import popns, pushns

    held: list[socket.socket] = []
    pushns(lab.net.ns["gateway"])
    try:
        for family in FAMILIES[request.param]:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            held.append(sock)
            if family == V6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(("::" if family == V6 else "0.0.0.0", PORT))
    except BaseException:
        for sock in held:
            sock.close()
        raise
    finally:
        popns()
    yield held
    for sock in held:
        sock.close()


def gateway_udp_ports(lab) -> dict[str, set[int]]:
    """The WireGuard sockets of the gateway's process (UDP, wildcard, the gateway's SO_MARK)
    by family, as `ss` shows them."""
    out = sh("ss", "-H", "-u", "-a", "-n", "-p", "-e", ns=lab.net.ns["gateway"])
    found: dict[str, set[int]] = {"ipv4": set(), "ipv6": set()}
    for line in out.splitlines():
        if f"pid={lab.gateway.pid}," not in line or f"fwmark:{FIREZONE_MARK:#x}" not in line:
            continue
        local = line.split()[3]
        host, _, port = local.rpartition(":")
        if host in ("0.0.0.0", "*"):
            found["ipv4"].add(int(port))
        elif host in ("[::]",):
            found["ipv6"].add(int(port))
    return found


def port_warnings(lab) -> list[str]:
    return [line for line in lab.gateway.output().splitlines() if " WARN " in line and str(PORT) in line]


def host_candidate_ports(lab, flow) -> set[int]:
    def candidates():
        status, body = lab.portal.api("GET", f"/v1/flows/{flow['flow_id']}/candidates?wait=5")
        assert status == 200, body
        return [c for c in body["candidates"] if " typ host" in c]

    found = wait_for(candidates, 15, "the gateway's host candidates")
    return {int(c.split()[5]) for c in found}  # candidate:<f> <comp> udp <prio> <addr> <port> typ host


def ping(lab, address: str) -> bool:
    return lab.client_sh("ping", "-c", "1", "-W", "1", address)[0] == 0


@pytest.mark.parametrize("blocker", list(FAMILIES), indirect=True)
def test_taken_udp_port_falls_back_to_one_port_warned_once_and_advertised(lab, blocker, request):
    lab.logs.allow(r"UDP port \d+ is taken")  # the one warning this test provokes (and counts)
    lab.start_gateway()
    ports = gateway_udp_ports(lab)
    # One ephemeral port for both families, even when 52625 was free in one of them.
    assert len(ports["ipv4"]) == 1 and ports["ipv4"] == ports["ipv6"], ports
    [bound] = ports["ipv4"]
    assert bound != PORT

    warnings = port_warnings(lab)
    assert len(warnings) == 1, lab.gateway.output()
    assert str(bound) in warnings[0] and "IPv4 and IPv6" in warnings[0], warnings[0]

    flow = lab.authorize({"type": "cidr", "address": "198.18.2.0/24"})
    assert flow["status"] == "authorized", flow
    assert host_candidate_ports(lab, flow) == {bound}  # what the gateway tells clients

    # A real client on the bound port; over the family whose 52625 was free, if one was.
    family = {"ipv4": "ipv6", "ipv6": "ipv4", "both": "ipv4"}[request.node.callspec.params["blocker"]]
    endpoint = f"{NetLab.GATEWAY_OUTER}:{bound}" if family == "ipv4" else f"[fd42:1::1]:{bound}"
    gw = flow["gateway"]
    lab.client.connect(gw["public_key"], endpoint, ["198.18.2.0/24", f"{gw['ipv4']}/32"])
    assert wait_for(lambda: ping(lab, NetLab.RESOURCE), 15, f"ping through the tunnel via {endpoint}")
    assert lab.client.latest_handshake() > 0
    assert len(port_warnings(lab)) == 1  # still one: nothing repeats it per flow or handshake


@pytest.mark.parametrize("blocker", ["both"], indirect=True)
def test_flow_answer_carries_the_bound_port(lab, blocker):
    lab.logs.allow(r"UDP port \d+ is taken")
    lab.start_gateway()
    [bound] = gateway_udp_ports(lab)["ipv4"]
    flow = lab.authorize({"type": "cidr", "address": "198.18.2.0/24"})
    assert flow["gateway"]["port"] == bound, flow["gateway"]
    lab.connect_client(flow, ["198.18.2.0/24"])  # the client uses the answer's port
    assert wait_for(lambda: ping(lab, NetLab.RESOURCE), 15, "ping through the tunnel")


# --- 2. the ID file at first start --------------------------------------------------------------

class Mounts:
    """tmpfs mounts under a directory of the test; every one unmounted at teardown."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounted: list[Path] = []

    def tmpfs(self, name: str, size: str = "1m") -> Path:
        where = self.base / name
        where.mkdir()
        sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", f"fztest-{name}", str(where))
        self.mounted.append(where)
        return where

    def read_only(self, where: Path) -> None:
        sh("mount", "-o", "remount,ro", str(where))

    def unmount_all(self) -> None:
        for where in reversed(self.mounted):
            subprocess.run(["umount", str(where)], check=False, capture_output=True)
        self.mounted.clear()


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount tmpfs file systems")
    # Not under tmp_path (0700): an unprivileged init must be able to reach the mount.
    base = Path(tempfile.mkdtemp(prefix="fzid-"))
    base.chmod(0o755)
    made = Mounts(base)
    try:
        yield made
    finally:
        made.unmount_all()
        shutil.rmtree(base)


@pytest.fixture
def netns() -> Iterator[str]:
    """A throwaway network namespace: init's sysctls and iptables rules (after the ID) land
    there, never on this host."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    name = f"fzid-{secrets.token_hex(4)}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def run_init(ns: str, id_path: Path, *, user: int | None = None) -> subprocess.CompletedProcess[str]:
    env = base_env()
    env.pop("FIREZONE_ID", None)
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user is not None else []
    return subprocess.run(["ip", "netns", "exec", ns, *prefix, INIT, "--write-id", "--id-path", str(id_path),
                           "--egress-interface", "lo"],
                          capture_output=True, text=True, env=env, check=False, timeout=60)


def run_gateway(id_path: Path) -> subprocess.CompletedProcess[str]:
    env = base_env() | {"FIREZONE_TOKEN": "fault-test-token", "FIREZONE_ID_PATH": str(id_path),
                        "FIREZONE_API_URL": "ws://127.0.0.1:9/", "FIREZONE_NO_TELEMETRY": "true"}
    return subprocess.run([GATEWAY], capture_output=True, text=True, env=env, check=False, timeout=60)


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def expected_id() -> str:
    return subprocess.run(["systemd-id128", f"--app-specific={ID_APP}", "machine-id"], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_read_only_state_dir_is_one_clear_error_and_no_file(mounts, netns):
    state = mounts.tmpfs("ro")
    mounts.read_only(state)
    done = run_init(netns, state / "gateway_id")
    assert done.returncode == 1, done
    line = one_line(done.stderr)
    assert line == (f"firezone-gateway-init: cannot write FIREZONE_ID to {state / 'gateway_id'}: Read-only "
                    "file system (EROFS); nothing was written (the gateway cannot start without it)")
    assert snapshot(state) == {}
    # The gateway then says the ID is missing (exit 2), it does not make one up.
    gateway = run_gateway(state / "gateway_id")
    assert gateway.returncode == 2 and "FIREZONE_ID is required" in one_line(gateway.stderr)


def test_full_disk_is_one_clear_error_and_nothing_partial_left(mounts, netns):
    state = mounts.tmpfs("full", size="8k")
    fd = os.open(state / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:  # fill it up, as a full /var would be
        with pytest.raises(OSError, match="No space left on device"):
            while True:
                os.write(fd, b"\0" * 1024)
    finally:
        os.close(fd)
    before = snapshot(state)
    done = run_init(netns, state / "gateway_id")
    assert done.returncode == 1, done
    line = one_line(done.stderr)
    assert f"cannot write FIREZONE_ID to {state / 'gateway_id'}: No space left on device (ENOSPC)" in line
    assert snapshot(state) == before  # no gateway_id, no temporary file, of any length


def test_forbidden_state_dir_is_one_clear_error(mounts, netns):
    state = mounts.tmpfs("forbidden")  # root:root 0755: nobody may not create files in it
    done = run_init(netns, state / "gateway_id", user=65534)
    assert done.returncode == 1, done
    line = one_line(done.stderr)
    assert f"cannot write FIREZONE_ID to {state / 'gateway_id'}: Permission denied (EACCES)" in line
    assert snapshot(state) == {}


def test_first_start_writes_the_derived_id_once_and_a_read_only_disk_keeps_it(mounts, netns):
    if shutil.which("systemd-id128") is None:
        pytest.skip("systemd-id128 is not installed")
    state = mounts.tmpfs("first")
    path = state / "gateway_id"
    done = run_init(netns, path)
    assert done.returncode == 0, done
    assert path.read_text() == expected_id() + "\n"
    assert path.stat().st_mode & 0o777 == 0o640
    assert f"wrote FIREZONE_ID {expected_id()} to {path}" in done.stdout
    before = path.stat()
    # Later starts, even on a read-only disk: the ID stands, nothing is written.
    mounts.read_only(state)
    again = run_init(netns, path)
    assert again.returncode == 0, again
    assert "FIREZONE_ID" not in again.stdout + again.stderr
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert snapshot(state) == {"gateway_id": (expected_id() + "\n").encode()}


@pytest.mark.parametrize("content", [b"", b"\0" * 33], ids=["empty", "nul-blocks"])
def test_an_empty_or_garbled_id_file_is_refused_never_regenerated(mounts, netns, content):
    state = mounts.tmpfs("garbled")
    path = state / "gateway_id"
    path.write_bytes(content)
    done = run_init(netns, path)
    assert done.returncode == 1, done
    line = one_line(done.stderr)
    assert str(path) in line and re.search(r"is (empty|garbled)", line) and "left as it is" in line, line
    gateway = run_gateway(path)
    assert gateway.returncode == 2, gateway
    line = one_line(gateway.stderr)
    assert line.startswith("firezone-gateway: the FIREZONE_ID file") and str(path) in line, line
    assert snapshot(state) == {"gateway_id": content}
