"""The TUN DNS server through a real tunnel: a stock wireguard-go client asks our gateway's
`<tun address>:53535` for SRV and TXT records with dnspython's query functions (dig is not
installed here); the gateway forwards to the lab's unbound, the nameserver of its resolv.conf.

Covered: UDP and TCP on the IPv4 and the IPv6 TUN address; a TXT answer over 512 bytes
(truncated with TC over UDP, whole over TCP, and a stub's UDP-then-TCP retry); a host firewall
with a default INPUT deny, passed by firezone-gateway-init's accepts (and `--remove` taking
them away); a re-sent `init`; a dead nameserver passed over; the only nameserver timing out
(SERVFAIL, then answers again when it is back); no nameserver at all (SERVFAIL); and both
binds failing, which ends the gateway with exit status 1 and one line.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from gateway_pkg.devportal.state import GATEWAY_V4_BASE, GATEWAY_V6_BASE, PortalState
from gateway_pkg.netconst import DEFAULT_UDP_PORT, TUN_DNS_PORT, TUN_NAME
from tests.netlab import NetLab, sh
from tests.procs import VENV_BIN, base_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]

PROBE = "probe.lab.test"
BIG = ["a" * 250, "b" * 250, "c" * 250]  # one TXT record of three strings: ~790 bytes of answer
RECORDS = [
    f"{PROBE}. 60 IN A {NetLab.RESOURCE}",
    "_ldap._tcp.lab.test. 60 IN SRV 0 5 389 ldap.lab.test.",
    "_ldap._tcp.lab.test. 60 IN SRV 10 5 389 ldap2.lab.test.",
    "txt.lab.test. 60 IN TXT hello-through-the-tunnel",
    f"big.lab.test. 60 IN TXT {' '.join(BIG)}",  # unquoted strings: LabDns quotes the whole record
]
ENV = {"FIREZONE_DNS_PROBE_NAME": PROBE}
RESOURCE = {"type": "dns", "address": "*.lab.test", "domain": "ldap.lab.test", "proxy_ips": ["100.96.0.1"]}

# The client: dnspython's stock query functions, run in the client namespace, one JSON line out.
CLIENT = r"""
import json, sys, time
import dns.flags, dns.message, dns.query, dns.rcode
results = []
for q in json.loads(sys.argv[1]):
    query = dns.message.make_query(q["name"], q["type"])  # no EDNS: answers over 512 bytes truncate
    started = time.monotonic()
    try:
        if q["via"] == "tcp":
            r = dns.query.tcp(query, q["server"], timeout=q["timeout"], port=q["port"])
        elif q["via"] == "udp":
            r = dns.query.udp(query, q["server"], timeout=q["timeout"], port=q["port"])
        else:  # "stub": UDP, then TCP when the answer is truncated, as stub resolvers do
            r, _ = dns.query.udp_with_fallback(query, q["server"], timeout=q["timeout"], port=q["port"])
        results.append({"rcode": dns.rcode.to_text(r.rcode()), "tc": bool(r.flags & dns.flags.TC),
                        "id": r.id == query.id, "answer": [rrset.to_text() for rrset in r.answer],
                        "seconds": time.monotonic() - started})
    except Exception as exc:
        results.append({"error": type(exc).__name__, "seconds": time.monotonic() - started})
print(json.dumps(results))
"""


def ask(lab, server: str, *queries: tuple[str, str, str], timeout: float = 3) -> list[dict]:
    """(name, type, via) queries to server:53535 from the client namespace, in order."""
    batch = [{"name": n, "type": t, "via": v, "server": server, "port": TUN_DNS_PORT, "timeout": timeout}
             for n, t, v in queries]
    code, out = lab.client_sh(str(VENV_BIN / "python"), "-c", CLIENT, json.dumps(batch),
                              timeout=timeout * len(batch) * 2 + 15)
    assert code == 0, out
    return json.loads(out.strip().splitlines()[-1])


def one(lab, server, name, rdtype, via="udp", timeout: float = 3) -> dict:
    return ask(lab, server, (name, rdtype, via), timeout=timeout)[0]


def connect(lab) -> tuple[str, str]:
    """Authorize the client for `*.lab.test` and bring its tunnel up; the TUN addresses."""
    flow = lab.authorize(RESOURCE)
    assert flow["status"] == "authorized", flow
    gw = flow["gateway"]
    lab.connect_client(flow, ["100.96.0.0/11", f"{gw['ipv6']}/128"])
    return gw["ipv4"], gw["ipv6"]


def metric(lab, name: str) -> float:
    for line in lab.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def default_deny(ns: str) -> None:
    """A host firewall as an admin would write it: INPUT dropped but for replies, WireGuard
    and the health check. The TUN DNS server only gets through with init's accepts."""
    for tool in ("iptables", "ip6tables"):
        for rule in (["-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
                     ["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"],
                     ["-A", "INPUT", "-p", "udp", "--dport", str(DEFAULT_UDP_PORT), "-j", "ACCEPT"],
                     ["-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT"],
                     ["-P", "INPUT", "DROP"]):
            sh(tool, "-w", *rule, ns=ns)


def init(lab, *args: str) -> str:
    done = subprocess.run(["ip", "netns", "exec", lab.net.ns["gateway"], str(VENV_BIN / "firezone-gateway-init"),
                           "--egress-interface", f"fr{lab.net.tag}g", *args], capture_output=True, text=True,
                          env=base_env(), check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def input_rules(lab) -> str:
    return "".join(sh(tool, "-w", "-S", "INPUT", ns=lab.net.ns["gateway"]) for tool in ("iptables", "ip6tables"))


def test_srv_and_txt_through_the_tunnel_over_udp_and_tcp_on_both_addresses(lab):
    lab.start_dns(RECORDS)
    default_deny(lab.net.ns["gateway"])
    lab.start_gateway(ENV)
    v4, v6 = connect(lab)
    out = lab.gateway.output()
    assert f"TUN DNS server listening on {v4}:{TUN_DNS_PORT} and [{v6}]:{TUN_DNS_PORT} (UDP and TCP)" in out
    wait_for(lambda: f"TUN DNS server forwards to {NetLab.RESOURCE}:53" in lab.gateway.output(), 10,
             "the probe round")
    rules = input_rules(lab)
    for proto in ("udp", "tcp"):
        assert rules.count(f"-A INPUT -i {TUN_NAME} -p {proto} -m {proto} --dport {TUN_DNS_PORT} -j ACCEPT") == 2

    for server in (v4, v6):
        srv_udp, srv_tcp, txt_udp, txt_tcp = ask(lab, server, ("_ldap._tcp.lab.test", "SRV", "udp"),
                                                 ("_ldap._tcp.lab.test", "SRV", "tcp"),
                                                 ("txt.lab.test", "TXT", "udp"), ("txt.lab.test", "TXT", "tcp"))
        for answer in (srv_udp, srv_tcp):
            assert answer["rcode"] == "NOERROR" and answer["id"], answer
            assert "0 5 389 ldap.lab.test." in answer["answer"][0] and "10 5 389 ldap2.lab.test." in answer["answer"][0]
        for answer in (txt_udp, txt_tcp):
            assert answer["rcode"] == "NOERROR" and '"hello-through-the-tunnel"' in answer["answer"][0], answer

        # Over 512 bytes: UDP says TC (and carries no partial record set), TCP brings it whole,
        # and a stub resolver's UDP-then-TCP retry ends with all of it.
        big_udp, big_tcp, big_stub = ask(lab, server, ("big.lab.test", "TXT", "udp"), ("big.lab.test", "TXT", "tcp"),
                                         ("big.lab.test", "TXT", "stub"))
        assert big_udp["rcode"] == "NOERROR" and big_udp["tc"], big_udp
        assert not any(BIG[2] in rrset for rrset in big_udp["answer"])
        for whole in (big_tcp, big_stub):
            assert whole["rcode"] == "NOERROR" and not whole["tc"], whole
            assert all(f'"{chunk}"' in whole["answer"][0] for chunk in BIG)

    assert metric(lab, 'firezone_gateway_tun_dns_queries_total{result="forwarded",transport="udp"}') >= 8
    assert metric(lab, 'firezone_gateway_tun_dns_queries_total{result="forwarded",transport="tcp"}') >= 6

    # Without init's accept the host firewall drops the queries; init puts it back.
    gw_ns = lab.net.ns["gateway"]
    sh("iptables", "-w", "-D", "INPUT", "-i", TUN_NAME, "-p", "udp", "-m", "udp", "--dport", str(TUN_DNS_PORT),
       "-j", "ACCEPT", ns=gw_ns)
    assert one(lab, v4, "txt.lab.test", "TXT", timeout=1).get("error") == "Timeout"
    assert "INPUT 1 -i tun-firezone -p udp" in init(lab)
    assert one(lab, v4, "txt.lab.test", "TXT")["rcode"] == "NOERROR"

    # A re-sent init (the gateway rejoins) keeps the server answering on the same addresses.
    joins = lab.gateway.output().count("TUN addresses set")
    status, _ = lab.portal.api("POST", f"/v1/gateways/{lab.gateway_record()['id']}/disconnect")
    assert status == 200
    wait_for(lambda: lab.gateway.output().count("TUN addresses set") > joins, 20, "init after the rejoin")
    assert wait_for(lambda: one(lab, v6, "_ldap._tcp.lab.test", "SRV", "tcp")["rcode"] == "NOERROR", 10,
                    "answers after the re-init")

    removed = init(lab, "--remove")
    assert removed.count(f"--dport {TUN_DNS_PORT}") == 4, removed
    assert str(TUN_DNS_PORT) not in input_rules(lab)


def test_a_dead_nameserver_is_passed_over_and_a_timing_out_one_gets_servfail(lab):
    lab.logs.allow(r"TUN DNS server: no nameserver answered")  # once the last one times out too
    dns = lab.start_dns(RECORDS)
    resource_ns = lab.net.ns["resource"]
    dead = NetLab.RESOURCE_EXTRA[0]  # an address of the resource host where port 53 drops everything
    for proto in ("udp", "tcp"):
        sh("iptables", "-w", "-I", "INPUT", "-d", dead, "-p", proto, "--dport", "53", "-j", "DROP", ns=resource_ns)
    lab.start_gateway(ENV | {"FIREZONE_DNS_NAMESERVERS": f"{dead},{NetLab.RESOURCE}"})
    v4, _ = connect(lab)
    # The dead one comes first in the list; the probe round picks the one that answers.
    answer = one(lab, v4, "_ldap._tcp.lab.test", "SRV")
    assert answer["rcode"] == "NOERROR", answer
    assert f"TUN DNS server forwards to {NetLab.RESOURCE}:53" in lab.gateway.output()

    # The only live nameserver stops answering (SIGSTOP: sockets stay open, nothing replies).
    dns.proc.popen.send_signal(signal.SIGSTOP)
    try:
        stalled = one(lab, v4, "txt.lab.test", "TXT", timeout=10)
        assert stalled["rcode"] == "SERVFAIL" and stalled["id"], stalled
        assert 4.5 <= stalled["seconds"] < 9, stalled  # the 5 s forward timeout, not the client's 10 s
        wait_for(lambda: "no nameserver answered probe.lab.test. A" in lab.gateway.output(), 10,
                 "the probe round after the timeout")
        # Known to have none now: SERVFAIL without waiting for a forward to time out.
        quick = one(lab, v4, "txt.lab.test", "TXT", "tcp", timeout=10)
        assert quick["rcode"] == "SERVFAIL" and quick["seconds"] < 3, quick
    finally:
        dns.proc.popen.send_signal(signal.SIGCONT)
    assert wait_for(lambda: one(lab, v4, "txt.lab.test", "TXT")["rcode"] == "NOERROR", 20,
                    "answers once the nameserver is back")
    assert metric(lab, 'firezone_gateway_tun_dns_queries_total{result="upstream_failed",transport="udp"}') >= 1


def test_no_nameserver_at_all_gets_servfail(lab):
    empty = lab.net.workdir / "resolv-empty.conf"
    empty.write_text("# no nameserver: glibc (and the resolver) fall back to 127.0.0.1, where none listens\n")
    lab.start_gateway(ENV | {"FIREZONE_DNS_RESOLV_CONF": str(empty)})
    v4, v6 = connect(lab)
    wait_for(lambda: "TUN DNS server: no nameserver answered" in lab.gateway.output(), 10, "the probe round")
    for server, via in ((v4, "udp"), (v4, "tcp"), (v6, "udp"), (v6, "tcp")):
        answer = one(lab, server, "_ldap._tcp.lab.test", "SRV", via)
        assert answer["rcode"] == "SERVFAIL" and answer["id"] and answer["answer"] == [], answer
        assert answer["seconds"] < 3, answer
    assert metric(lab, 'firezone_gateway_tun_dns_queries_total{result="no_nameserver",transport="udp"}') >= 2


HOLD = r"""
import socket, sys
v4, v6, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
held = []
for family, address, level, freebind in ((socket.AF_INET, v4, socket.IPPROTO_IP, 15),
                                         (socket.AF_INET6, v6, socket.IPPROTO_IPV6, 78)):
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(level, freebind, 1)  # IP_FREEBIND / IPV6_FREEBIND: the address is not there yet
    sock.bind((address, port))
    held.append(sock)
print("holding", flush=True)
import signal
signal.pause()
"""


def test_both_binds_failing_ends_the_gateway_with_one_line(lab):
    lab.logs.allow(r"Failed to start Gateway: cannot bind the TUN DNS server")
    # The addresses the dev portal will assign (deterministic per FIREZONE_ID), taken first.
    slot = PortalState()._slot_for("b" * 64)
    v4, v6 = str(GATEWAY_V4_BASE + slot), str(GATEWAY_V6_BASE + slot)
    holder = lab.net.spawn("gateway", [sys.executable, "-c", HOLD, v4, v6, str(TUN_DNS_PORT)], base_env(), "holder")
    wait_for(lambda: "holding" in holder.output() or not holder.running(), 10, "ports held")
    assert holder.running(), holder.output()

    env = base_env() | {"FIREZONE_TOKEN": "lab-gateway-token-0123456789abcdef", "FIREZONE_ID": "b" * 64,
                        "FIREZONE_API_URL": lab.portal.url, "FIREZONE_NO_TELEMETRY": "true",
                        "HEALTH_CHECK_ADDR": f"{lab.net.MGMT_GATEWAY}:8080"} | ENV
    gateway = lab.net.spawn("gateway", [str(VENV_BIN / "firezone-gateway")], env, "gateway")
    started = time.monotonic()
    wait_for(lambda: not gateway.running(), 30, "the gateway to exit")
    assert gateway.popen.returncode == 1, gateway.output()
    assert time.monotonic() - started < 30
    lines = gateway.output().strip().splitlines()
    want = (f"firezone-gateway: cannot bind the TUN DNS server (UDP and TCP): {v4}:{TUN_DNS_PORT}: Address already "
            f"in use; [{v6}]:{TUN_DNS_PORT}: Address already in use")
    assert lines[-1] == want, lines[-5:]
    assert "Traceback" not in gateway.output()
