"""The independent test client: aioice (ICE with TURN) + stock wireguard-go, joined by a shim.

Nothing here comes from gateway_pkg: the ICE agent is aioice (PyPI), the WireGuard peer is
wireguard-go, so our gateway is tested against implementations it did not write
(docs/testing.md, "NAT lab").

Two halves:

* The **agent process**, `ip netns exec <ns> python -m tests.iceclient …`, runs inside the
  namespace whose interfaces it gathers. It holds one aioice `Connection` at a time (a
  "session") and a **shim**: a UDP socket on 127.0.0.1 that the local wireguard-go uses as
  its peer endpoint. Datagrams from wireguard-go go out with `conn.send()`; what
  `conn.recv()` yields goes to wireguard-go's listen port. It is driven by JSON lines:

      stdin   {"cmd": "session", "local": {"username", "password"}, "remote": {...},
               "turn": {"server": "host:port", "username", "password"} | null,
               "stun": "host:port" | null}
              {"cmd": "remote", "candidates": ["candidate:…", …], "end": false}
              {"cmd": "quit"}
      stdout  {"event": "ready", "shim_port": N}
              {"event": "gathered", "session": n, "candidates": ["candidate:…"], "types": [...]}
              {"event": "connected", "session": n, "local": {type, host, port},
               "remote": {type, host, port}, "elapsed": s}
              {"event": "failed" | "stale" | "closed", "session": n, ...}

  The no-data watchdog: aioice drops a dead pair only after its consent timeout (about
  30 s), so once connected the agent sends its own binding request on the selected pair
  every `--probe-interval` s; when neither an answer nor data has arrived for `--watchdog`
  s it reports `stale`, closes the session and waits for the next `session` command.
  SIGTERM (or `quit`, or stdin closing) closes aioice (TURN allocations are deleted) and
  exits 0. wireguard-go is not its child: the parent starts it (`lab.spawn`) and stops it
  by PID, like every process of the lab.

  aioice nominates the first pair whose check succeeds (aggressive nomination). Through
  port-restricted NATs the first direct check is usually dropped while the relay answers
  at once, so `direct_grace` (per session) holds back the checks over a relay for that
  many seconds: 0 lets the relay race, 1-1.5 lets hole punching win where it can.

* The **parent side**, in the test process (root namespace): `IceAgent` starts and drives
  one agent process; `IceWireGuardClient` is a whole client: a wireguard-go in the client
  namespace, an agent, and the signalling with the dev portal (it posts the client's
  candidates and reads the gateway's; the namespaces have no route to the portal, so the
  parent does the HTTP). On `stale` it re-runs ICE: with `renew` (a callable returning a
  new flow, e.g. another `POST /v1/flows`) a fresh ICE session with the new credentials,
  without it a new session with the same flow's credentials and freshly gathered candidates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aioice

from tests import netlab
from tests.procs import VENV_BIN, Proc, base_env, wait_for

REPO = Path(__file__).resolve().parents[1]
WG_LISTEN_PORT = 51820  # wireguard-go's port inside its namespace, where the shim delivers
CANDIDATE_PREFIX = "candidate:"


# ==========================================================================================
# The agent process (runs inside a namespace)
# ==========================================================================================

def _split(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _describe(candidate: Any) -> dict[str, Any]:
    return {"type": candidate.type, "host": candidate.host, "port": candidate.port}


def restrict_host_addresses(interfaces: list[str]) -> None:
    """Host candidates only from these interfaces (aioice would offer every address).

    A client picks its uplinks too; without this, the agent would also offer the
    WireGuard interface's own tunnel address as a "host" candidate.
    """
    import aioice.ice
    import ifaddr

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        found: list[str] = []
        for adapter in ifaddr.get_adapters():
            if adapter.nice_name not in interfaces and adapter.name not in interfaces:
                continue
            for ip in adapter.ips:
                if isinstance(ip.ip, str):
                    if use_ipv4:
                        found.append(ip.ip)
                elif use_ipv6 and ip.ip[2] == 0:  # no link-local (scoped) addresses
                    found.append(ip.ip[0])
        return found

    aioice.ice.get_host_addresses = host_addresses


def request_relay_family_of_server() -> None:
    """Over an IPv6 TURN server, ask for an IPv6 relayed address (REQUESTED-ADDRESS-FAMILY).

    aioice sends no REQUESTED-ADDRESS-FAMILY, and without it a TURN server allocates IPv4
    (RFC 8656 §7.2), so its relayed candidate would be IPv4 whatever the server's family.
    This adds the attribute (RFC 8656 §18.10) to the Allocate requests sent to an IPv6
    server, so an IPv6 client gets an IPv6 relay candidate. Nothing else of aioice changes.
    """
    import aioice.stun as stun
    import aioice.turn as turn

    if "REQUESTED-ADDRESS-FAMILY" in stun.ATTRIBUTES_BY_NAME:
        return
    entry = (0x0017, "REQUESTED-ADDRESS-FAMILY", stun.pack_unsigned, stun.unpack_unsigned)
    stun.ATTRIBUTES_BY_TYPE[0x0017] = entry
    stun.ATTRIBUTES_BY_NAME["REQUESTED-ADDRESS-FAMILY"] = entry
    original = turn.TurnClientMixin.request_with_retry

    async def request_with_retry(self: Any, request: Any) -> Any:
        if request.message_method == stun.Method.ALLOCATE and ":" in self.server[0]:
            request.attributes["REQUESTED-ADDRESS-FAMILY"] = 0x02 << 24  # family 0x02, 3 bytes RFFU
        return await original(self, request)

    turn.TurnClientMixin.request_with_retry = request_with_retry  # type: ignore[method-assign]


class DirectFirstConnection(aioice.Connection):
    """aioice's agent, except that checks over a relay start `direct_grace` s late.

    aioice nominates the first pair whose check succeeds; through port-restricted NATs the
    first direct check is usually dropped (the hole is not punched yet) while the relay
    answers at once, so without a grace the relay wins even where a direct path exists.
    """

    direct_grace = 0.0
    _relay_from = 0.0

    def start_grace(self) -> None:
        self._relay_from = time.monotonic() + self.direct_grace

    def check_start_task(self, pair: Any) -> None:
        relayed = "relay" in (pair.local_candidate.type, pair.remote_candidate.type)
        if relayed and time.monotonic() < self._relay_from:
            return  # stays Waiting/Frozen: the periodic check loop starts it after the grace
        super().check_start_task(pair)


class Shim(asyncio.DatagramProtocol):
    """127.0.0.1:<port>: wireguard-go's peer endpoint; its datagrams ride the ICE pair."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.transport: asyncio.DatagramTransport | None = None
        self.wg_addr: tuple[str, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.wg_addr = self.wg_addr or addr
        self.agent.outbound(data)

    def deliver(self, data: bytes) -> None:
        target = self.agent.wg_addr or self.wg_addr
        if self.transport is not None and target is not None:
            self.transport.sendto(data, target)


class Session:
    """One aioice Connection and the tasks that serve it."""

    def __init__(self, number: int, conn: Any, remote_password: str) -> None:
        self.number = number
        self.conn = conn
        self.remote_password = remote_password
        self.tasks: list[asyncio.Task[Any]] = []
        self.sendq: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1024)
        self.last_rx = time.monotonic()
        self.connected = False
        self.closed = False

    def selected_pair(self) -> Any:
        return getattr(self.conn, "_nominated", {}).get(1)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        for task in self.tasks:
            if task is not current:
                with contextlib.suppress(BaseException):
                    await task
        with contextlib.suppress(Exception):
            # Bounded: deleting a TURN allocation on a dead relay would retry for ~30 s.
            await asyncio.wait_for(self.conn.close(), 2)


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.wg_addr: tuple[str, int] | None = ("127.0.0.1", args.wg_port) if args.wg_port else None
        self.shim: Shim | None = None
        self.session: Session | None = None
        self.sessions = 0
        self.done = asyncio.Event()
        # What wireguard-go sent while no pair was nominated (its first handshake initiation,
        # say): sent once a session connects instead of being lost, which would cost
        # wireguard-go's 5 s handshake retry.
        self.early: deque[bytes] = deque(maxlen=64)

    # -- data path ---------------------------------------------------------------------------

    def outbound(self, data: bytes) -> None:
        session = self.session
        if session is None or session.closed or not session.connected:
            self.early.append(data)
            return
        with contextlib.suppress(asyncio.QueueFull):
            session.sendq.put_nowait(data)

    async def _sender(self, session: Session) -> None:
        while True:
            data = await session.sendq.get()
            with contextlib.suppress(ConnectionError):
                await session.conn.send(data)

    async def _receiver(self, session: Session) -> None:
        try:
            while True:
                data = await session.conn.recv()
                session.last_rx = time.monotonic()
                if self.shim is not None:
                    self.shim.deliver(data)
        except ConnectionError:
            if not session.closed:
                emit("closed", session=session.number, reason="aioice closed the connection")
                self.session = None if self.session is session else self.session
                await session.close()

    async def _watchdog(self, session: Session) -> None:
        import aioice.stun

        interval, limit = self.args.probe_interval, self.args.watchdog
        if not limit:
            return  # off: aioice's own consent checks (about 30 s) are all there is
        while True:
            await asyncio.sleep(interval)
            pair = session.selected_pair()
            if pair is None:
                continue
            request = session.conn.build_request(pair, nominate=False)
            try:
                await pair.protocol.request(request, pair.remote_addr,
                                            integrity_key=session.remote_password.encode(), retransmissions=0)
                session.last_rx = time.monotonic()
            except (aioice.stun.TransactionError, ConnectionError, OSError):
                pass
            idle = time.monotonic() - session.last_rx
            if limit and idle >= limit:
                emit("stale", session=session.number, idle=round(idle, 2))
                self.session = None if self.session is session else self.session
                await session.close()
                return

    # -- sessions ----------------------------------------------------------------------------

    async def start_session(self, cmd: dict[str, Any]) -> None:
        if self.session is not None:
            old, self.session = self.session, None
            await old.close()
        self.sessions += 1
        number = self.sessions
        turn = cmd.get("turn") or None
        stun = cmd.get("stun") or None
        local, remote = cmd["local"], cmd["remote"]
        conn = DirectFirstConnection(
            ice_controlling=self.args.role == "controlling",
            local_username=local["username"], local_password=local["password"],
            stun_server=_split(stun) if stun else None,
            turn_server=_split(turn["server"]) if turn else None,
            turn_username=turn["username"] if turn else None,
            turn_password=turn["password"] if turn else None,
            turn_ssl=False, turn_transport="udp",
            use_ipv4=not self.args.no_ipv4, use_ipv6=not self.args.no_ipv6,
        )
        conn.remote_username, conn.remote_password = remote["username"], remote["password"]
        conn.direct_grace = float(cmd.get("direct_grace", self.args.direct_grace))
        session = Session(number, conn, remote["password"])
        self.session = session
        started = time.monotonic()
        await conn.gather_candidates()
        candidates = conn.local_candidates
        emit("gathered", session=number, candidates=[CANDIDATE_PREFIX + c.to_sdp() for c in candidates],
             types=sorted({c.type for c in candidates}))
        session.tasks.append(asyncio.create_task(self._connect(session, started)))

    async def _connect(self, session: Session, started: float) -> None:
        session.conn.start_grace()
        try:
            await session.conn.connect()
        except (ConnectionError, OSError) as exc:
            emit("failed", session=session.number, error=str(exc))
            return
        pair = session.selected_pair()
        while self.early:
            session.sendq.put_nowait(self.early.popleft())
        session.connected = True
        session.last_rx = time.monotonic()
        emit("connected", session=session.number, local=_describe(pair.local_candidate),
             remote=_describe(pair.remote_candidate), elapsed=round(time.monotonic() - started, 3))
        session.tasks += [asyncio.create_task(self._sender(session)), asyncio.create_task(self._receiver(session)),
                          asyncio.create_task(self._watchdog(session))]

    async def add_remote(self, cmd: dict[str, Any]) -> None:
        from aioice import Candidate

        session = self.session
        if session is None:
            return
        for text in cmd.get("candidates", []):
            sdp = text.removeprefix("a=").removeprefix(CANDIDATE_PREFIX)
            try:
                candidate = Candidate.from_sdp(sdp)
            except ValueError:
                emit("skipped", session=session.number, candidate=text)
                continue
            with contextlib.suppress(ValueError):
                await session.conn.add_remote_candidate(candidate)
        if cmd.get("end"):
            with contextlib.suppress(ValueError):
                await session.conn.add_remote_candidate(None)

    # -- main loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.done.set)
        if self.args.wg_port or self.args.shim_port is not None:
            _, shim = await loop.create_datagram_endpoint(lambda: Shim(self),
                                                          local_addr=("127.0.0.1", self.args.shim_port or 0))
            self.shim = shim
        shim_port = self.shim.transport.get_extra_info("sockname")[1] if self.shim and self.shim.transport else None
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        emit("ready", shim_port=shim_port)
        commands = asyncio.create_task(self._commands(reader))
        await self.done.wait()
        commands.cancel()
        with contextlib.suppress(BaseException):
            await commands
        if self.session is not None:
            await self.session.close()
        if self.shim is not None and self.shim.transport is not None:
            self.shim.transport.close()

    async def _commands(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                cmd = json.loads(line)
            except ValueError:
                emit("error", error=f"not JSON: {line[:80]!r}")
                continue
            try:
                if cmd["cmd"] == "session":
                    await self.start_session(cmd)
                elif cmd["cmd"] == "remote":
                    await self.add_remote(cmd)
                elif cmd["cmd"] == "quit":
                    break
                else:
                    emit("error", error=f"unknown command {cmd['cmd']!r}")
            except Exception as exc:  # report, keep serving
                emit("error", error=f"{type(exc).__name__}: {exc}")
        self.done.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.iceclient",
                                     description="aioice agent + WireGuard shim, driven by JSON lines")
    parser.add_argument("--role", choices=("controlling", "controlled"), default="controlling")
    parser.add_argument("--interface", action="append", default=[],
                        help="gather host candidates only from this interface (repeatable; default: all)")
    parser.add_argument("--no-ipv4", action="store_true")
    parser.add_argument("--no-ipv6", action="store_true")
    parser.add_argument("--wg-port", type=int, help="wireguard-go's listen port on 127.0.0.1 (enables the shim)")
    parser.add_argument("--shim-port", type=int, help="the shim's port on 127.0.0.1 (default: any)")
    parser.add_argument("--watchdog", type=float, default=0.0,
                        help="seconds without anything from the peer before the session is reported stale (0: off)")
    parser.add_argument("--probe-interval", type=float, default=1.0,
                        help="seconds between the watchdog's binding requests on the selected pair")
    parser.add_argument("--direct-grace", type=float, default=0.0,
                        help="seconds after connect() before checks over a relay start (direct paths first)")
    parser.add_argument("--verbose", action="store_true", help="aioice's debug log on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    if args.interface:
        restrict_host_addresses(args.interface)
    request_relay_family_of_server()
    asyncio.run(Agent(args).run())
    return 0


# ==========================================================================================
# The parent side (runs in the test process)
# ==========================================================================================

def ice_credentials() -> dict[str, str]:
    """Fresh ICE credentials in the ice-char alphabet (RFC 8445 §5.3)."""
    return {"username": secrets.token_hex(4), "password": secrets.token_hex(16)}


class IceAgent(Proc):
    """One agent process in a namespace of `lab`, stopped by PID (also by `lab.down()`)."""

    def __init__(self, lab: netlab.NetLab, host: str, role: str = "controlling", *, wg_port: int | None = None,
                 watchdog: float = 0.0, probe_interval: float = 1.0, interfaces: tuple[str, ...] = ("uplink",),
                 ipv4: bool = True, ipv6: bool = True, label: str | None = None, verbose: bool = False) -> None:
        self.host = host
        label = label or f"ice-{host}-{role}"
        argv = [str(VENV_BIN / "python"), "-m", "tests.iceclient", "--role", role,
                "--watchdog", str(watchdog), "--probe-interval", str(probe_interval)]
        for interface in interfaces:
            argv += ["--interface", interface]
        if wg_port:
            argv += ["--wg-port", str(wg_port)]
        if not ipv4:
            argv.append("--no-ipv4")
        if not ipv6:
            argv.append("--no-ipv6")
        if verbose:
            argv.append("--verbose")
        env = base_env()
        env["PYTHONPATH"] = str(REPO)
        self.log_path = lab.workdir / f"{label}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(["ip", "netns", "exec", lab.ns[host], *argv], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        lab.procs.append(self)
        self.events: list[dict[str, Any]] = []
        self._sessions = 0
        self._lock = threading.Lock()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        assert self.popen.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.popen.stdout,), daemon=True)
        self._reader.start()
        self.shim_port: int | None = self.wait_event("ready", 15)["shim_port"]

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            with self._lock:
                self.events.append(event)
                listeners = list(self._listeners)
            for listener in listeners:
                listener(event)

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write((json.dumps(cmd) + "\n").encode())
        self.popen.stdin.flush()

    def find(self, name: str, session: int | None = None) -> dict[str, Any] | None:
        with self._lock:
            for event in reversed(self.events):
                if event["event"] == name and (session is None or event.get("session") == session):
                    return event
        return None

    def wait_event(self, name: str, timeout: float, session: int | None = None) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            if not self.running() and self.find(name, session) is None:
                raise AssertionError(f"ice agent exited: {self.output()[-2000:]}")
            return self.find(name, session)

        result: dict[str, Any] = wait_for(found, timeout, f"ice agent event {name!r} (session {session})")
        return result

    def session(self, local: dict[str, str], remote: dict[str, str], turn: dict[str, str] | None = None,
                stun: str | None = None, direct_grace: float | None = None) -> int:
        """Start a new ICE session (closing the current one); returns its number (1, 2, …)."""
        with self._lock:
            self._sessions += 1
            number = self._sessions
        cmd: dict[str, Any] = {"cmd": "session", "local": local, "remote": remote, "turn": turn, "stun": stun}
        if direct_grace is not None:
            cmd["direct_grace"] = direct_grace
        self.send(cmd)
        return number

    def gathered(self, session: int, timeout: float = 15) -> list[str]:
        candidates: list[str] = self.wait_event("gathered", timeout, session)["candidates"]
        return candidates

    def add_remote(self, candidates: list[str], end: bool = False) -> None:
        self.send({"cmd": "remote", "candidates": candidates, "end": end})

    def wait_connected(self, timeout: float, session: int | None = None) -> dict[str, Any]:
        return self.wait_event("connected", timeout, session)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        code = super().stop(sig, timeout)
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        return code


@dataclass
class StockWireGuard(netlab.WireGuardClient):
    """netlab's wireguard-go + wg, in any namespace of the lab and on a fixed listen port."""

    host: str = "client"
    listen_port: int = WG_LISTEN_PORT

    @property
    def netns(self) -> str:
        return self.lab.ns[self.host]

    def start(self) -> None:
        env = base_env() | {"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"}
        self.proc = self.lab.spawn(self.host, ["wireguard-go", self.ifname], env, f"wireguard-go-{self.ifname}")
        self.lab.wait_link(self.host, self.ifname)
        netlab.sh("ip", "addr", "add", f"{self.ipv4}/32", "dev", self.ifname, ns=self.netns)
        netlab.sh("ip", "-6", "addr", "add", f"{self.ipv6}/128", "dev", self.ifname, ns=self.netns)
        netlab.sh("ip", "link", "set", self.ifname, "mtu", "1280", "up", ns=self.netns)
        netlab.sh("wg", "set", self.ifname, "listen-port", str(self.listen_port), ns=self.netns)

    def connect(self, gateway_public_key: str, endpoint: str, routes: list[str], keepalive: int = 25) -> None:
        keyfile = self.lab.workdir / f"{self.ifname}-{self.host}.key"
        pskfile = self.lab.workdir / f"{self.ifname}-{self.host}.psk"
        keyfile.write_text(self.private_key + "\n")
        pskfile.write_text(self.preshared_key + "\n")
        keyfile.chmod(0o600)
        pskfile.chmod(0o600)
        netlab.sh("wg", "set", self.ifname, "private-key", str(keyfile), "peer", gateway_public_key,
                  "preshared-key", str(pskfile), "endpoint", endpoint, "allowed-ips", ",".join(routes),
                  "persistent-keepalive", str(keepalive), ns=self.netns)
        for route in routes:
            netlab.sh("ip", "-6" if ":" in route else "-4", "route", "replace", route, "dev", self.ifname,
                      ns=self.netns)

    def latest_handshake(self) -> int:
        parts = netlab.sh("wg", "show", self.ifname, "latest-handshakes", ns=self.netns).split()
        return int(parts[1]) if len(parts) >= 2 else 0

    def sh(self, *argv: str, timeout: float = 10) -> tuple[int, str]:
        done = subprocess.run(["ip", "netns", "exec", self.netns, *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)
        return done.returncode, done.stdout + done.stderr

    def ping(self, address: str, count: int = 1, wait: float = 2) -> bool:
        return self.sh("ping", "-n", "-q", "-c", str(count), "-W", str(wait), address,
                       timeout=count * wait + 5)[0] == 0


def new_wireguard(lab: netlab.NetLab, host: str = "client", ipv4: str = "100.64.0.2",
                  ipv6: str = "fd00:2021:1111::2", ifname: str | None = None) -> StockWireGuard:
    private = netlab.sh("wg", "genkey").strip()
    public = netlab.sh("wg", "pubkey", input_text=private + "\n").strip()
    psk = netlab.sh("wg", "genpsk").strip()
    return StockWireGuard(lab, ifname or f"wg{host[:2]}{lab.tag}", private, public, psk, ipv4=ipv4, ipv6=ipv6,
                          host=host)


def relay_addr(relays: list[dict[str, Any]], family: int) -> tuple[dict[str, Any], str] | None:
    """The first relay with an address of this family (4 or 6), and that address."""
    for relay in relays:
        addrs = relay.get("addrs") or ([relay["addr"]] if relay.get("addr") else [])
        for addr in addrs:
            if (addr.startswith("[") or addr.count(":") > 1) == (family == 6):
                return relay, addr
    return None


class IceWireGuardClient:
    """A whole independent client: wireguard-go in the client namespace, riding an aioice pair.

    `flow` is the dev portal's `POST /v1/flows` answer for `wg`'s keys (its `ice` and
    `relays`); the gateway's tunnel addresses and `routes` become wireguard-go's allowed IPs.
    `relay=False` uses no TURN server (host and server-reflexive candidates only; the relay's
    STUN still gives the srflx one). `family` picks the relay address (4 or 6) for TURN.
    `watchdog` s without anything from the gateway end the session (0: off); then `renew()`
    (if given) returns a new flow, e.g. `POST /v1/flows` again with a new `client.ice`, and
    ICE runs afresh with its credentials; without it, ICE runs again with the same flow's
    credentials and fresh candidates. `restarts` counts those, `errors` collects signalling
    failures (HTTP status and body).

        wg = new_wireguard(natlab)                      # keys for the flow; started here
        flow = lab.authorize(resource, client=wg)       # tests.lab.Lab, or portal.api(...)
        with IceWireGuardClient(natlab, flow, portal, wg=wg, routes=["198.18.2.0/24"]) as client:
            pair = client.wait_connected(20)            # {"local": {"type": "host", ...}, "remote": ...}
            assert client.ping(flow["gateway"]["ipv4"])
    """

    def __init__(self, lab: netlab.NetLab, flow: dict[str, Any], portal: Any, relay: bool = True, *,
                 wg: StockWireGuard, routes: list[str] | None = None, renew: Callable[[], dict[str, Any]] | None = None,
                 watchdog: float = 5.0, family: int = 4, host: str = "client", keepalive: int = 25,
                 direct_grace: float = 1.0, poll_wait: float = 2.0, ipv4: bool = True) -> None:
        self.lab, self.flow, self.portal, self.relay = lab, flow, portal, relay
        self.ipv4 = ipv4  # False: IPv6 candidates only (host, srflx, relay)
        self.wg, self.routes, self.renew = wg, routes or [], renew
        self.watchdog, self.family, self.host, self.keepalive = watchdog, family, host, keepalive
        self.poll_wait, self.direct_grace = poll_wait, direct_grace
        self.agent: IceAgent | None = None
        self.current = 0  # the session being signalled
        self.restarts = 0
        self._stop = threading.Event()
        self._signalling: threading.Thread | None = None
        self._wake = threading.Event()
        self._restart_pending = False
        self.errors: list[str] = []

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> IceWireGuardClient:
        if self.wg.proc is None:
            self.wg.start()
        self.agent = IceAgent(self.lab, self.host, "controlling", wg_port=self.wg.listen_port,
                              watchdog=self.watchdog, label=f"iceclient-{self.wg.ifname}", ipv4=self.ipv4)
        gw = self.flow["gateway"]
        tunnel = [f"{gw['ipv4']}/32", *([f"{gw['ipv6']}/128"] if gw.get("ipv6") else [])]
        self.wg.connect(gw["public_key"], f"127.0.0.1:{self.agent.shim_port}", [*self.routes, *tunnel],
                        keepalive=self.keepalive)
        self.agent.subscribe(self._on_event)
        self._begin_session()
        self._signalling = threading.Thread(target=self._signal, daemon=True)
        self._signalling.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._signalling is not None:
            self._signalling.join(self.poll_wait + 15)
        if self.agent is not None:
            self.agent.stop()

    def __enter__(self) -> IceWireGuardClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests look at ------------------------------------------------------------------

    def wait_connected(self, timeout: float = 20, session: int | None = None) -> dict[str, Any]:
        """The selected pair once aioice has nominated one: {"local": {"type", …}, "remote": …}."""
        assert self.agent is not None
        return self.agent.wait_connected(timeout, session or self.current)

    def selected(self) -> dict[str, Any] | None:
        return None if self.agent is None else self.agent.find("connected")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        events = [] if self.agent is None else list(self.agent.events)
        return [e for e in events if name is None or e["event"] == name]

    def flow_client(self) -> dict[str, str]:
        return self.wg.flow_client()

    def latest_handshake(self) -> int:
        return self.wg.latest_handshake()

    def client_sh(self, *argv: str, timeout: float = 10) -> tuple[int, str]:
        return self.wg.sh(*argv, timeout=timeout)

    def ping(self, address: str, count: int = 1, wait: float = 2) -> bool:
        return self.wg.ping(address, count, wait)

    def curl(self, url: str, timeout: float = 3) -> tuple[int, str]:
        return self.client_sh("curl", "-sS", "--max-time", str(timeout), url, timeout=timeout + 5)

    # -- signalling --------------------------------------------------------------------------

    def _ice_setup(self) -> tuple[dict[str, str] | None, str | None]:
        relays = self.flow.get("relays") or []
        found = relay_addr(relays, self.family)
        v4 = relay_addr(relays, 4)
        stun = v4[1] if v4 else None  # aioice asks STUN for IPv4 server-reflexive candidates only
        if not self.relay or found is None:
            return None, stun
        relay, addr = found
        return {"server": addr, "username": relay["username"], "password": relay["password"]}, stun

    def _begin_session(self) -> None:
        assert self.agent is not None
        ice = self.flow["ice"]
        turn, stun = self._ice_setup()
        self.current = self.agent.session(ice["client"], ice["gateway"], turn, stun, self.direct_grace)
        self._wake.set()

    def _on_event(self, event: dict[str, Any]) -> None:
        """(The agent's reader thread.) A dead session of ours: the signalling thread re-runs ICE."""
        if event["event"] in ("stale", "closed") and event.get("session") == self.current and not self._stop.is_set():
            self._restart_pending = True
            self._wake.set()

    def _signal(self) -> None:
        """Post our candidates, feed the gateway's to the agent; re-run ICE when it goes stale."""
        assert self.agent is not None
        posted: set[int] = set()
        seen: dict[int, set[str]] = {}
        while not self._stop.is_set():
            try:
                if self._restart_pending:
                    if self.renew is not None:
                        self.flow = self.renew()
                    self._restart_pending = False
                    self.restarts += 1
                    self._begin_session()
                session = self.current
                flow_id = self.flow["flow_id"]
                if session not in posted:
                    gathered = self.agent.find("gathered", session)
                    if gathered is None:
                        self._wake.wait(0.05)
                        self._wake.clear()
                        continue
                    status, body = self.portal.api("POST", f"/v1/flows/{flow_id}/candidates",
                                                   {"candidates": gathered["candidates"]})
                    if status >= 300:
                        self.errors.append(f"POST candidates: {status} {body}")
                    posted.add(session)
                if self.agent.find("connected", session) is not None:
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                status, body = self.portal.api("GET", f"/v1/flows/{flow_id}/candidates?wait={self.poll_wait:g}")
                if status != 200:
                    self.errors.append(f"GET candidates: {status} {body}")
                    self._wake.wait(0.5)
                    continue
                new = [c for c in body.get("candidates", []) if c not in seen.setdefault(session, set())]
                if new:
                    seen[session].update(new)
                    self.agent.add_remote(new)
                else:
                    self._wake.wait(0.2)  # the portal answered at once with nothing new: poll again
                    self._wake.clear()
            except Exception as exc:  # keep signalling; the test sees the errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
                self._wake.wait(0.5)


if __name__ == "__main__":
    sys.exit(main())
