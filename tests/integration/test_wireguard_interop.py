"""Interoperability of our WireGuard core with wireguard-go, inside network namespaces.

Topology (both namespaces created and deleted here):

    netns <name>-g                               netns <name>-d
    wireguard-go wgt<id>  198.51.100.1/24        our UDP socket 192.0.2.2:<port>
    veth 192.0.2.1/30  <───────────────────────> veth 192.0.2.2/30

Our side is a thread driving WireGuardDevice over a UDP socket created inside the second
namespace (a socket stays in the namespace it was created in). It answers ICMP echo
requests from the tunnel, so `ping` inside the wireguard-go namespace proves the round trip.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway_pkg.wireguard import (
    DeviceOutput,
    Dropped,
    HandshakeCompleted,
    TimerConfig,
    WireGuardDevice,
    WireGuardEvent,
    key_to_base64,
)
from gateway_pkg.wireguard.keys import generate_private_key, public_key
from tests.wireguard_support import (
    VECTOR_INITIATOR_PRIVATE,
    VECTOR_PRESHARED_KEY,
    VECTOR_RESPONDER_PRIVATE,
    echo_reply_for,
    icmp_echo,
    parse_icmp_echo,
    vector_initiator,
)

pytestmark = [pytest.mark.integration, pytest.mark.netns]

WG_ADDR = "192.0.2.1"
DRIVER_ADDR = "192.0.2.2"
WG_TUNNEL_IP = "198.51.100.1"
DRIVER_TUNNEL_IP = "198.51.100.2"
WG_LISTEN_PORT = 51820
CLONE_NEWNET = 0x40000000


def _requirements_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("wireguard-go", "wg", "ip", "ping"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing"
    return None


def run(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """The tests' one polling helper, tests.procs.wait_for."""
    from tests.procs import wait_for as poll

    poll(condition, timeout, what)


def udp_socket_in_netns(netns: str, address: tuple[str, int]) -> socket.socket:
    """Create a socket inside `netns` from a helper thread (setns only moves that thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: dict[str, object] = {}

    def create() -> None:
        try:
            with open(f"/run/netns/{netns}") as ns_file:
                if libc.setns(ns_file.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(address)
            result["sock"] = sock
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=create)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["sock"]  # type: ignore[return-value]


@dataclass
class Lab:
    name: str
    wg_netns: str
    driver_netns: str
    interface: str
    wg_private: bytes
    driver_private: bytes
    psk: bytes
    process: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None

    def wg_exec(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.wg_netns, *args, check=check, timeout=timeout)

    def configure_wireguard_go(self, driver_port: int) -> None:
        assert self.workdir is not None
        key_file = self.workdir / "private.key"
        psk_file = self.workdir / "preshared.key"
        key_file.write_text(key_to_base64(self.wg_private) + "\n")
        psk_file.write_text(key_to_base64(self.psk) + "\n")
        self.wg_exec(
            "wg", "set", self.interface,
            "private-key", str(key_file),
            "listen-port", str(WG_LISTEN_PORT),
            "peer", key_to_base64(public_key(self.driver_private)),
            "preshared-key", str(psk_file),
            "allowed-ips", f"{DRIVER_TUNNEL_IP}/32",
            "endpoint", f"{DRIVER_ADDR}:{driver_port}",
        )  # fmt: skip
        self.wg_exec("ip", "addr", "add", f"{WG_TUNNEL_IP}/24", "dev", self.interface)
        self.wg_exec("ip", "link", "set", self.interface, "up")

    def latest_handshake(self) -> int:
        out = self.wg_exec("wg", "show", self.interface, "latest-handshakes").stdout.split()
        return int(out[1]) if len(out) == 2 else 0


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = _requirements_missing()
    if reason:
        pytest.skip(reason)
    suffix = secrets.token_hex(3)
    lab = Lab(
        name=f"wgt-{suffix}",
        wg_netns=f"wgt-{suffix}-g",
        driver_netns=f"wgt-{suffix}-d",
        interface=f"wgtest{suffix}",
        wg_private=generate_private_key(),
        driver_private=generate_private_key(),
        psk=os.urandom(32),
    )
    veth_wg, veth_driver = f"wgt{suffix}a", f"wgt{suffix}b"
    lab.workdir = Path(tempfile.mkdtemp(prefix="wgt-"))
    os.chmod(lab.workdir, 0o700)
    try:
        run("ip", "netns", "add", lab.wg_netns)
        run("ip", "netns", "add", lab.driver_netns)
        run("ip", "link", "add", veth_wg, "type", "veth", "peer", "name", veth_driver)
        run("ip", "link", "set", veth_wg, "netns", lab.wg_netns)
        run("ip", "link", "set", veth_driver, "netns", lab.driver_netns)
        for netns, dev, addr in (
            (lab.wg_netns, veth_wg, WG_ADDR),
            (lab.driver_netns, veth_driver, DRIVER_ADDR),
        ):
            run("ip", "-n", netns, "addr", "add", f"{addr}/30", "dev", dev)
            run("ip", "-n", netns, "link", "set", dev, "up")
            run("ip", "-n", netns, "link", "set", "lo", "up")
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error")
        # `ip netns exec` execs in place, so this PID is wireguard-go's own.
        lab.process = subprocess.Popen(
            ["ip", "netns", "exec", lab.wg_netns, "wireguard-go", lab.interface],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: lab.wg_exec("wg", "show", lab.interface, check=False).returncode == 0,
            10,
            "wireguard-go's UAPI socket",
        )
        yield lab
    finally:
        if lab.process is not None and lab.process.poll() is None:
            lab.process.terminate()
            try:
                lab.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                lab.process.kill()
                lab.process.wait(timeout=5)
        run("ip", "netns", "del", lab.wg_netns, check=False)
        run("ip", "netns", "del", lab.driver_netns, check=False)
        shutil.rmtree(lab.workdir, ignore_errors=True)


@dataclass
class Driver:
    """Runs a WireGuardDevice on a real UDP socket; answers echo requests from the tunnel."""

    device: WireGuardDevice
    sock: socket.socket
    peer: bytes
    events: list[WireGuardEvent] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.sock.settimeout(0.02)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.sock.close()

    def call(self, action: Callable[[WireGuardDevice, float], DeviceOutput]) -> None:
        with self.lock:
            self._handle(action(self.device, time.monotonic()))

    def handshakes(self, *, initiator: bool | None = None) -> int:
        with self.lock:
            return sum(
                1
                for e in self.events
                if isinstance(e, HandshakeCompleted) and (initiator is None or e.initiator == initiator)
            )

    def _handle(self, out: DeviceOutput) -> None:
        for datagram, endpoint in out.datagrams:
            self.sock.sendto(datagram, endpoint)
        self.events.extend(out.events)
        for peer, packet in out.packets:
            self.received.append(packet)
            reply = echo_reply_for(packet)
            if reply is not None:
                self._handle(self.device.send_packet(peer, reply, time.monotonic()))

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data, source = self.sock.recvfrom(65535)
            except TimeoutError:
                data = b""
            with self.lock:
                now = time.monotonic()
                if data:
                    self._handle(self.device.receive_datagram(data, source, now))
                self._handle(self.device.tick(now))


def start_driver(lab: Lab, device: WireGuardDevice) -> Driver:
    sock = udp_socket_in_netns(lab.driver_netns, (DRIVER_ADDR, 0))
    lab.configure_wireguard_go(sock.getsockname()[1])
    peer = public_key(lab.wg_private)
    device.add_peer(peer, lab.psk)
    device.set_peer_endpoint(peer, (WG_ADDR, WG_LISTEN_PORT))
    driver = Driver(device, sock, peer)
    driver.start()
    return driver


@pytest.fixture
def driver_factory(lab: Lab) -> Iterator[Callable[[WireGuardDevice], Driver]]:
    drivers: list[Driver] = []

    def factory(device: WireGuardDevice) -> Driver:
        driver = start_driver(lab, device)
        drivers.append(driver)
        return driver

    yield factory
    for driver in drivers:
        driver.close()


def test_wireguard_go_initiates_and_ping_round_trips(lab: Lab, driver_factory) -> None:
    driver = driver_factory(WireGuardDevice(lab.driver_private))
    result = lab.wg_exec("ping", "-c", "3", "-i", "0.2", "-W", "5", DRIVER_TUNNEL_IP, timeout=30)
    assert " 0% packet loss" in result.stdout, result.stdout
    assert driver.handshakes(initiator=False) == 1
    assert lab.latest_handshake() > 0
    requests = [parse_icmp_echo(p) for p in driver.received]
    assert any(r is not None and r.source == WG_TUNNEL_IP for r in requests)


def test_our_device_initiates_and_wireguard_go_answers(lab: Lab, driver_factory) -> None:
    driver = driver_factory(WireGuardDevice(lab.driver_private))
    driver.call(lambda d, now: d.initiate_handshake(driver.peer, now))
    wait_for(lambda: driver.handshakes(initiator=True) == 1, 10, "our handshake to complete")
    wait_for(lambda: lab.latest_handshake() > 0, 10, "wireguard-go to record the handshake")
    # wireguard-go's namespace answers a ping to its tunnel address through the tunnel.
    request = icmp_echo(DRIVER_TUNNEL_IP, WG_TUNNEL_IP, identifier=7, sequence=1, payload=b"x" * 56)
    driver.call(lambda d, now: d.send_packet(driver.peer, request, now))

    def got_reply() -> bool:
        with driver.lock:
            echoes = [parse_icmp_echo(p) for p in driver.received]
        return any(e is not None and e.kind == 0 and e.identifier == 7 for e in echoes)

    wait_for(got_reply, 10, "the echo reply from wireguard-go's side")


def test_rekey_keeps_traffic_flowing(lab: Lab, driver_factory) -> None:
    timers = TimerConfig(rekey_after_time=1.5, rekey_timeout=1.0)
    driver = driver_factory(WireGuardDevice(lab.driver_private, timers=timers))
    driver.call(lambda d, now: d.initiate_handshake(driver.peer, now))
    wait_for(lambda: driver.handshakes(initiator=True) == 1, 10, "the first handshake")
    # Our echo replies are sends on a session we initiated: past rekey_after_time they rekey.
    result = lab.wg_exec("ping", "-c", "20", "-i", "0.3", "-W", "3", DRIVER_TUNNEL_IP, check=False, timeout=60)
    assert " 0% packet loss" in result.stdout, result.stdout
    assert driver.handshakes(initiator=True) >= 3, driver.events


def test_responder_with_shorter_lifetime_rekeys_itself(lab: Lab, driver_factory) -> None:
    """wireguard-go initiates with its default timers; our 3 s sessions must not lapse."""
    timers = TimerConfig(rekey_after_time=1.5, reject_after_time=3.0, rekey_timeout=1.0)
    driver = driver_factory(WireGuardDevice(lab.driver_private, timers=timers))
    result = lab.wg_exec("ping", "-c", "20", "-i", "0.3", "-W", "3", DRIVER_TUNNEL_IP, check=False, timeout=60)
    assert " 0% packet loss" in result.stdout, result.stdout
    assert driver.handshakes(initiator=False) >= 1
    assert driver.handshakes(initiator=True) >= 2, driver.events


def test_cookie_reply_under_load_is_understood_by_wireguard_go(lab: Lab, driver_factory) -> None:
    """We answer wireguard-go's initiation with a cookie reply; it must retry with a valid mac2."""
    driver = driver_factory(WireGuardDevice(lab.driver_private, under_load=lambda: True))
    # wireguard-go retries after REKEY_TIMEOUT (5 s), now carrying mac2 from our cookie.
    result = lab.wg_exec("ping", "-c", "1", "-W", "20", DRIVER_TUNNEL_IP, check=False, timeout=40)
    assert " 0% packet loss" in result.stdout, result.stdout
    with driver.lock:
        reasons = [e.reason for e in driver.events if isinstance(e, Dropped)]
    assert "cookie_required" in reasons
    assert driver.handshakes(initiator=False) == 1


def test_known_answer_initiation_is_accepted_by_wireguard_go(lab: Lab) -> None:
    """The pinned initiation bytes (tests/unit/wireguard) are valid to wireguard-go too."""
    lab.wg_private = VECTOR_RESPONDER_PRIVATE
    lab.driver_private = VECTOR_INITIATOR_PRIVATE
    lab.psk = VECTOR_PRESHARED_KEY
    device, initiation = vector_initiator()
    sock = udp_socket_in_netns(lab.driver_netns, (DRIVER_ADDR, 0))
    try:
        lab.configure_wireguard_go(sock.getsockname()[1])
        sock.settimeout(5)
        sock.sendto(initiation, (WG_ADDR, WG_LISTEN_PORT))
        response, source = sock.recvfrom(2048)
        assert len(response) == 92 and response[0] == 2
        out = device.receive_datagram(response, source, 0.1)
        assert [e for e in out.events if isinstance(e, HandshakeCompleted)]
        # Our confirming keepalive makes wireguard-go consider the handshake complete.
        for datagram, _ in out.datagrams:
            sock.sendto(datagram, (WG_ADDR, WG_LISTEN_PORT))
        wait_for(lambda: lab.latest_handshake() > 0, 10, "wireguard-go to record the handshake")
    finally:
        sock.close()
