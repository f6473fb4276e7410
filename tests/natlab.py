"""The NAT lab: the gateway and its clients behind NATs, a "public" segment with a TURN relay.

Used by the NAT-traversal integration tests (ICE, TURN) and usable wherever `tests/lab.py`
takes a `NetLab`: `NatLab` is one, with the same namespace keys (`gateway`, `client`,
`resource`), management link, `spawn()`, `wait_link()` and `new_client()`. Every name carries
a random tag; links are created directly inside their namespaces, so the root namespace only
ever holds the management link; `down()` removes everything `up()` made and stops every
process the lab started, by PID.

    root ns 198.19.X.1 ──mgmt── 198.19.X.2 gateway            (dev portal in the root ns; X per lab)

                       pub: bridge 198.18.100.1/24, fd00:100::1/64
                            relay (coturn) .10 / ::10, reflectors .20 .21 / ::20 ::21
          ┌──────────────────────────┼───────────────────────────┐
    gwnat .2 / ::2              clnat .3 / ::3              cl2nat .4 / ::4    (wan side)
    10.1.0.1 / fd00:10:1::1     10.2.0.1 / fd00:10:2::1     10.3.0.1 / fd00:10:3::1
          │                          │                           │
    gateway 10.1.0.2            client 10.2.0.2             client2 10.3.0.2  ("uplink")
    fd00:10:1::2                fd00:10:2::2                fd00:10:3::2
          │ 198.18.2.1 / fd42:2::1
    resource 198.18.2.2 (+ .3, .4) / fd42:2::2

Each NAT namespace masquerades what leaves its wan side (iptables and ip6tables, so IPv6 is
NAT66 too), forwards nothing inbound that is not a reply, and silently drops unsolicited
packets to its own address (before conntrack records them). Modes: "cone" (plain
MASQUERADE: Linux keeps the source port, so one inside port maps to one outside port
whatever the destination; filtering is per remote address and port), "symmetric"
(MASQUERADE --random-fully: a fresh random port per destination), "none" (routed, no
translation, inbound allowed: the inside address is reachable from pub, which routes the
inside networks to their NAT). The inside networks are always routed in pub, so "nothing
inbound" is the NAT's firewall at work, not a missing route.

Rebinding (`rebind_nat`): the NAT's conntrack table is flushed over ctnetlink (a netlink
message sent from inside the NAT namespace; no `conntrack` tool needed) and its masquerade
rule moves to another port range, so every mapping gets a new outside port at once,
cone or symmetric.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import select
import shutil
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway_pkg.netconst import SYSCTLS
from tests.netlab import NETNS_ETC, NetLab, sh
from tests.procs import VENV_BIN, Proc, base_env, wait_for

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(VENV_BIN / "python")

NAT_MODES = ("symmetric", "cone", "none")
# Port ranges of the masquerade rule after each rebinding (generation 1, 2, 3, ... take turns):
# disjoint, so every rebinding changes the port, and below the ephemeral range (32768-60999),
# so no inside port is ever kept as it is.
REBIND_RANGES = ((10000, 19999), (20000, 29999))
CHAIN = "NATLAB"           # hooked into FORWARD (filter) and POSTROUTING (nat)
CHAIN_IN = "NATLAB-IN"     # hooked into INPUT (filter)


def child_env() -> dict[str, str]:
    """The environment of the helper processes we run with `python -m tests.…`."""
    env = base_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _batch(ns: str | None, lines: list[str]) -> None:
    """Many `ip` commands in one process (`ip [-n ns] -batch -`)."""
    sh("ip", *(["-n", ns] if ns else []), "-batch", "-", input_text="\n".join(lines) + "\n")


def pyrun(ns: str, module: str, *args: str, timeout: float = 30) -> str:
    """`python -m module args` inside a namespace; its stdout (raises on failure)."""
    import subprocess

    done = subprocess.run(["ip", "netns", "exec", ns, PYTHON, "-m", module, *args], capture_output=True,
                          text=True, env=child_env(), timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"python -m {module} {' '.join(args)} in {ns} failed: {done.stderr.strip()}")
    return done.stdout


def available() -> str | None:
    """Why the NAT lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "iptables", "ip6tables", "wireguard-go", "wg", "turnserver"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (run `make deps`)"
    return None


@dataclass(frozen=True)
class Site:
    """One host behind its own NAT: the names and addresses a test needs."""

    name: str           # key of the host's namespace in NatLab.ns ("gateway", "client", "client2")
    nat: str            # key of its NAT's namespace ("gwnat", "clnat", "cl2nat")
    uplink: str         # the host's interface towards its NAT (inside its namespace)
    inside: str         # host address behind the NAT
    inside6: str
    router: str         # the NAT's inside address (the host's default route)
    router6: str
    public: str         # the NAT's address on pub (what the world sees)
    public6: str
    pub_port: str       # the NAT's link into the pub bridge (inside pub)
    subnet: str
    subnet6: str


def _site(name: str, nat: str, n: int, public_host: int) -> Site:
    return Site(name=name, nat=nat, uplink="uplink",
                inside=f"10.{n}.0.2", inside6=f"fd00:10:{n}::2",
                router=f"10.{n}.0.1", router6=f"fd00:10:{n}::1",
                public=f"198.18.100.{public_host}", public6=f"fd00:100::{public_host}",
                pub_port=f"p-{nat}", subnet=f"10.{n}.0.0/24", subnet6=f"fd00:10:{n}::/64")


@dataclass
class NatLab(NetLab):
    """The NAT topology above; `up()` builds it, `down()` removes it.

    Keeps NetLab's attribute names (ns["gateway"|"client"|"resource"], MGMT_ROOT,
    MGMT_GATEWAY, RESOURCE…, spawn, wait_link, new_client, down), so `tests.lab.Lab` runs
    a dev portal and our gateway in it unchanged.
    """

    gateway_nat: str = "symmetric"
    client_nat: str = "symmetric"
    ipv6: bool = True
    clients: int = 1
    coturns: list[Any] = field(default_factory=list)
    modes: dict[str, str] = field(default_factory=dict)
    _generation: dict[str, int] = field(default_factory=dict)
    _relay_blocked: bool = False

    PUB_ROUTER = "198.18.100.1"
    PUB_ROUTER6 = "fd00:100::1"
    PUB_SUBNET = "198.18.100.0/24"
    PUB_SUBNET6 = "fd00:100::/64"
    RELAY = "198.18.100.10"
    RELAY6 = "fd00:100::10"
    RELAY_PORT = 3478
    REFLECTORS = ("198.18.100.20", "198.18.100.21")
    REFLECTORS6 = ("fd00:100::20", "fd00:100::21")
    REFLECTOR_PORT = 3479
    PUB_BRIDGE = "br-pub"

    GATEWAY = _site("gateway", "gwnat", 1, 2)
    CLIENT = _site("client", "clnat", 2, 3)
    CLIENT2 = _site("client2", "cl2nat", 3, 4)
    # The gateway's uplink address (NetLab's name for "where clients reach the gateway"):
    # reachable from outside only with gateway_nat="none".
    GATEWAY_OUTER = GATEWAY.inside
    CLIENT_OUTER = CLIENT.inside

    @property
    def sites(self) -> dict[str, Site]:
        sites = {"gateway": self.GATEWAY, "client": self.CLIENT}
        if self.clients >= 2:
            sites["client2"] = self.CLIENT2
        return sites

    def up(self) -> NatLab:
        for mode in (self.gateway_nat, self.client_nat):
            if mode not in NAT_MODES:
                raise ValueError(f"NAT mode {mode!r} is not one of {NAT_MODES}")
        t = self.tag
        short = {"pub": "pub", "gateway": "gw", "resource": "rs", "gwnat": "gn", "client": "cl", "clnat": "cn",
                 "client2": "c2", "cl2nat": "c2n"}
        wanted = ["pub", "resource", *(k for s in self.sites.values() for k in (s.name, s.nat))]
        self.ns = {key: f"fzn{short[key]}-{t}" for key in wanted}
        subnet = int(t, 16) % 250
        self.MGMT_ROOT, self.MGMT_GATEWAY = f"198.19.{subnet}.1", f"198.19.{subnet}.2"
        self._root_link = f"nm{t}r"
        pub, gw, rs = self.ns["pub"], self.ns["gateway"], self.ns["resource"]

        # Namespaces, then their sysctls (before any link exists: new links take the defaults).
        _batch(None, [f"netns add {name}" for name in self.ns.values()])
        for key, name in self.ns.items():
            settings = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
            if key == "pub" or key.endswith("nat"):
                settings += ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]
            if key == "gateway":  # what firezone-gateway-init sets on a host
                settings += [f"{k}={v}" for k, v in SYSCTLS.items()]
            sh("sysctl", "-q", "-w", *settings, ns=name)

        # Every link, created from the root namespace directly inside the namespaces it joins.
        links = [f"link add {self.PUB_BRIDGE} netns {pub} type bridge mcast_snooping 0"]
        for site in self.sites.values():
            nat, host = self.ns[site.nat], self.ns[site.name]
            links += [f"link add wan netns {nat} type veth peer name {site.pub_port} netns {pub}",
                      f"link add lan netns {nat} type veth peer name {site.uplink} netns {host}"]
        links += [f"link add fr{t}g netns {gw} type veth peer name fr{t}s netns {rs}",
                  f"link add {self._root_link} type veth peer name mgmt netns {gw}",
                  f"addr add {self.MGMT_ROOT}/30 dev {self._root_link}", f"link set {self._root_link} up"]
        _batch(None, links)

        # Addresses and routes, one batch per namespace.
        config: dict[str, list[str]] = {name: ["link set lo up"] for name in self.ns.values()}
        self._addresses(config[pub], self.PUB_BRIDGE,
                        [self.PUB_ROUTER, self.RELAY, *self.REFLECTORS], 24,
                        [self.PUB_ROUTER6, self.RELAY6, *self.REFLECTORS6], 64)
        for site in self.sites.values():
            at_nat, at_host = config[self.ns[site.nat]], config[self.ns[site.name]]
            config[pub].append(f"link set {site.pub_port} master {self.PUB_BRIDGE} up")
            self._addresses(at_nat, "wan", [site.public], 24, [site.public6], 64)
            self._addresses(at_nat, "lan", [site.router], 24, [site.router6], 64)
            self._addresses(at_host, site.uplink, [site.inside], 24, [site.inside6], 64)
            at_nat.append(f"route add default via {self.PUB_ROUTER}")
            at_host.append(f"route add default via {site.router}")
            # pub routes the inside network to its NAT, so only the NAT's firewall keeps it out.
            config[pub].append(f"route add {site.subnet} via {site.public}")
            if self.ipv6:
                at_nat.append(f"route add default via {self.PUB_ROUTER6}")
                at_host.append(f"route add default via {site.router6}")
                config[pub].append(f"route add {site.subnet6} via {site.public6}")
        # The resource side, as in NetLab (the gateway masquerades tunnel traffic onto it).
        self._addresses(config[gw], f"fr{t}g", ["198.18.2.1"], 24, ["fd42:2::1"], 64)
        self._addresses(config[rs], f"fr{t}s", ["198.18.2.2", *self.RESOURCE_EXTRA], 24, ["fd42:2::2"], 64)
        # Management: the root namespace (dev portal) and the gateway, a /30 per lab.
        self._addresses(config[gw], "mgmt", [self.MGMT_GATEWAY], 30, [], 0)
        for name, lines in config.items():
            _batch(name, lines)

        (NETNS_ETC / gw).mkdir(parents=True, exist_ok=True)
        (NETNS_ETC / gw / "resolv.conf").write_text(f"nameserver {self.RESOURCE}\n")

        self.modes = {"gateway": self.gateway_nat, "client": self.client_nat, "client2": self.client_nat}
        for name in self.sites:
            self._generation[name] = 0
            self._apply_nat(name, hooks=True)
        return self

    # -- building blocks -------------------------------------------------------------------

    def _addresses(self, lines: list[str], ifname: str, v4: list[str], len4: int, v6: list[str],
                   len6: int) -> None:
        lines += [f"addr add {a}/{len4} dev {ifname}" for a in v4]
        if self.ipv6:
            # No DAD: the link must be usable at once, not after a second of probing.
            lines += [f"addr add {a}/{len6} dev {ifname} nodad" for a in v6]
        lines.append(f"link set {ifname} up")

    def _iptables(self) -> tuple[str, ...]:
        return ("iptables", "ip6tables") if self.ipv6 else ("iptables",)

    def _apply_nat(self, which: str, hooks: bool = False) -> None:
        """(Re)write the NAT's chains in one iptables-restore per family (--noflush: only
        the chains named are flushed); `hooks` also hooks them into the built-in chains."""
        nat = self.ns[self.sites[which].nat]
        mode, generation = self.modes[which], self._generation[which]
        ports = ""
        if generation:
            low, high = REBIND_RANGES[(generation - 1) % len(REBIND_RANGES)]
            ports = f" --to-ports {low}-{high}"
        random = " --random-fully" if mode == "symmetric" else ""
        filt = [f":{CHAIN} - [0:0]", f":{CHAIN_IN} - [0:0]"]
        nat_rules = [f":{CHAIN} - [0:0]"]
        if hooks:
            filt += [f"-A FORWARD -j {CHAIN}", f"-A INPUT -j {CHAIN_IN}"]
            nat_rules += [f"-A POSTROUTING -j {CHAIN}"]
        filt.append(f"-A {CHAIN} -i lan -o wan -j ACCEPT")
        if mode == "none":
            filt.append(f"-A {CHAIN} -i wan -o lan -j ACCEPT")
        else:
            filt += [
                f"-A {CHAIN} -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                # Counted, so a test can prove an unsolicited packet died here.
                f"-A {CHAIN} -i wan -o lan -j DROP",
                # Unsolicited packets to the NAT's own address are dropped before their
                # conntrack entry is confirmed: such an entry would take the very tuple the NAT
                # needs when the host behind answers (hole punching), and a "cone" NAT would
                # then pick another port.
                f"-A {CHAIN_IN} -i wan -m conntrack --ctstate NEW -j DROP",
            ]
            nat_rules += [f"-A {CHAIN} -o wan -p {proto} -j MASQUERADE{random}{ports}" for proto in ("udp", "tcp")]
            nat_rules.append(f"-A {CHAIN} -o wan -j MASQUERADE{random}")
        text = "\n".join(["*filter", *filt, "COMMIT", "*nat", *nat_rules, "COMMIT", ""])
        for tool in self._iptables():
            sh(f"{tool}-restore", "--noflush", ns=nat, input_text=text)

    # -- what tests change ------------------------------------------------------------------

    def nat_mode(self, which: str, mode: str) -> None:
        """Switch one NAT ("gateway", "client", "client2") to "symmetric", "cone" or "none".

        Existing mappings are flushed, so the new behaviour applies to every flow at once.
        """
        if mode not in NAT_MODES:
            raise ValueError(f"NAT mode {mode!r} is not one of {NAT_MODES}")
        self.modes[which] = mode
        self._apply_nat(which)
        self.flush_conntrack(which)

    def rebind_nat(self, which: str) -> None:
        """Give every mapping of one NAT a new outside port now (see the module docstring)."""
        self._generation[which] += 1
        self._apply_nat(which)
        self.flush_conntrack(which)

    def rebind_client_nat(self) -> None:
        self.rebind_nat("client")

    def flush_conntrack(self, which: str) -> None:
        nat = self.ns[self.sites[which].nat]
        pyrun(nat, "tests.natlab", "flush-conntrack")

    def nat_drops(self, which: str, ipv6: bool = False) -> int:
        """Packets the NAT dropped because they came in unsolicited (its counted DROP rule)."""
        tool = "ip6tables" if ipv6 else "iptables"
        total = 0
        for chain in (CHAIN, CHAIN_IN):
            out = sh(tool, "-L", chain, "-v", "-n", "-x", ns=self.ns[self.sites[which].nat])
            total += sum(int(line.split()[0]) for line in out.splitlines()
                         if len(line.split()) > 2 and line.split()[2] == "DROP")
        return total

    def start_coturn(self, **kwargs: Any) -> Any:
        """coturn (tests/coturn.py) in the pub namespace on RELAY:3478 and, with IPv6, [RELAY6]:3478.

        `kwargs` go to `Coturn`; it is stopped by `down()` if the test did not stop it.
        """
        from tests.coturn import Coturn

        extra = list(kwargs.pop("extra", []))
        if self.ipv6:
            extra += [f"--listening-ip={self.RELAY6}", f"--relay-ip={self.RELAY6}"]
        turn = Coturn(self.workdir, listening_ip=self.RELAY, relay_ip=self.RELAY, port=self.RELAY_PORT,
                      ns=self.ns["pub"], extra=extra, **kwargs)
        self.coturns.append(turn)
        return turn

    def relay_addrs(self) -> list[str]:
        """The relay's addresses as the dev portal's `--relay` wants them (one dual-stack relay)."""
        return [f"{self.RELAY}:{self.RELAY_PORT}", *([f"[{self.RELAY6}]:{self.RELAY_PORT}"] if self.ipv6 else [])]

    def block_relay(self) -> None:
        """Drop everything to and from the relay addresses (coturn keeps running)."""
        pub = self.ns["pub"]
        for tool, addr in self._relay_addrs():
            sh(tool, "-I", "INPUT", "-d", addr, "-j", "DROP", ns=pub)
            sh(tool, "-I", "OUTPUT", "-s", addr, "-j", "DROP", ns=pub)
        self._relay_blocked = True

    def unblock_relay(self) -> None:
        pub = self.ns["pub"]
        for tool, addr in self._relay_addrs():
            sh(tool, "-D", "INPUT", "-d", addr, "-j", "DROP", ns=pub, check=False)
            sh(tool, "-D", "OUTPUT", "-s", addr, "-j", "DROP", ns=pub, check=False)
        self._relay_blocked = False

    def _relay_addrs(self) -> list[tuple[str, str]]:
        return [("iptables", self.RELAY), *([("ip6tables", self.RELAY6)] if self.ipv6 else [])]

    def kill_relay(self) -> None:
        """SIGKILL every coturn of this lab: allocations vanish without a word."""
        for turn in self.coturns:
            turn.proc.stop(signal.SIGKILL)

    def start_reflector(self) -> Proc:
        """The UDP reflector in pub: answers every datagram with the source it saw (JSON)."""
        addrs = [*self.REFLECTORS, *(self.REFLECTORS6 if self.ipv6 else ())]
        listen = [_join(a, self.REFLECTOR_PORT) for a in addrs]
        proc = self.spawn("pub", [PYTHON, "-m", "tests.natlab", "reflect", *listen], child_env(), "reflector")
        wait_for(lambda: "ready" in proc.output() or not proc.running(), 10, "reflector ready")
        assert proc.running(), proc.output()
        return proc

    def probe(self, host: str, destinations: list[tuple[str, int]], bind: tuple[str, int] | None = None,
              timeout: float = 2.0) -> list[Any]:
        """From one socket in `host`'s namespace, one datagram to each destination; the answers.

        Each answer is the reflector's view [address, port], "refused" (ICMP unreachable came
        back), or None (nothing within `timeout`).
        """
        argv = [PYTHON, "-m", "tests.natlab", "probe", "--timeout", str(timeout)]
        if bind is not None:
            argv += ["--bind", _join(*bind)]
        out = pyrun(self.ns[host], "tests.natlab", *argv[3:], *(_join(*d) for d in destinations))
        return list(json.loads(out))

    def down(self) -> None:
        # The lab's processes first (an ICE agent deletes its TURN allocations as it exits),
        # then the relays, then the namespaces and links (NetLab.down).
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        for turn in reversed(self.coturns):
            with contextlib.suppress(Exception):
                turn.stop()
        super().down()

    def leftovers(self) -> list[str]:
        """Namespaces and root links carrying this lab's tag (empty after down())."""
        names = [line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()]
        links = sh("ip", "-o", "link", "show").split("\n")
        return [n for n in names if n.endswith(f"-{self.tag}")] + \
               [ln.split(":")[1].strip() for ln in links if f"nm{self.tag}r" in ln]


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


# -- helpers run inside the namespaces (python -m tests.natlab …) -----------------------------

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_DELETE = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2


def flush_conntrack_here() -> None:
    """Delete every conntrack entry of this network namespace (`conntrack -F` over ctnetlink)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as nl:
        nl.bind((0, 0))
        nfgenmsg = struct.pack("!BBH", socket.AF_UNSPEC, 0, 0)  # family (all), version 0, res_id
        header = struct.pack("=IHHII", 16 + len(nfgenmsg), (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
                             NLM_F_REQUEST | NLM_F_ACK, 1, 0)
        nl.send(header + nfgenmsg)
        reply = nl.recv(65536)
        _length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", reply)
        if kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", reply, 16)
            if error not in (0, -2):  # -ENOENT: the table was already empty
                raise OSError(-error, f"ctnetlink flush: {os.strerror(-error)}")


def _family(host: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def reflect(listen: list[str]) -> None:
    socks = []
    for text in listen:
        host, port = split_hostport(text)
        sock = socket.socket(_family(host), socket.SOCK_DGRAM)
        sock.bind((host, port))
        socks.append(sock)
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        ready, _, _ = select.select(socks, [], [])
        for sock in ready:
            data, addr = sock.recvfrom(2048)
            answer = json.dumps({"seen": [addr[0], addr[1]], "data": data.decode(errors="replace")})
            sock.sendto(answer.encode(), addr)


def probe(destinations: list[str], bind: str | None, timeout: float) -> list[Any]:
    targets = [split_hostport(d) for d in destinations]
    family = _family(split_hostport(bind)[0] if bind else targets[0][0])
    answers: list[Any] = []
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind(split_hostport(bind) if bind else ("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        for target in targets:
            # connect() so that an ICMP unreachable comes back as ECONNREFUSED.
            sock.connect(target)
            sock.send(b"probe")
            deadline = time.monotonic() + timeout
            answer: Any = None
            while time.monotonic() < deadline:
                ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    break
                try:
                    data = sock.recv(2048)
                except ConnectionRefusedError:
                    answer = "refused"
                    break
                with contextlib.suppress(ValueError):
                    answer = json.loads(data)["seen"]
                break
            answers.append(answer)
    return answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.natlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("flush-conntrack", help="flush this namespace's conntrack table")
    r = sub.add_parser("reflect", help="answer each UDP datagram with the source address seen")
    r.add_argument("listen", nargs="+")
    p = sub.add_parser("probe", help="one datagram to each destination from one socket; print the answers")
    p.add_argument("--bind")
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("destinations", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "flush-conntrack":
        flush_conntrack_here()
    elif args.command == "reflect":
        reflect(args.listen)
    else:
        print(json.dumps(probe(args.destinations, args.bind, args.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
