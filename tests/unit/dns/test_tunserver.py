"""The TUN DNS server's decisions without a network: which nameserver wins a probe round, what
a query that cannot be forwarded gets, how answers fit UDP, and the (re)binding rules."""

from __future__ import annotations

import asyncio
import ipaddress
import struct

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_pkg.dns import tunserver
from gateway_pkg.dns.settings import DnsSettings
from gateway_pkg.dns.tunserver import (
    Answer,
    Forward,
    Ignore,
    Probe,
    ProbeRound,
    TunDnsServer,
    classify,
    encode_answer,
    fastest,
    header_only,
    parse_probe_name,
    probe_query,
)
from gateway_pkg.errors import ConfigError, RuntimeFailure

A, B, C = ("192.0.2.1", 53), ("192.0.2.2", 53), ("[2001:db8::3]", 5353)
NOERROR, NXDOMAIN, SERVFAIL = dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL


# --- choosing the fastest nameserver ---------------------------------------------------------


def test_the_quickest_noerror_answer_wins_over_either_transport():
    probes = [Probe(A, "udp", 0.030, NOERROR), Probe(B, "tcp", 0.010, NOERROR), Probe(B, "udp", 0.020, NOERROR)]
    assert fastest(probes) == B


def test_errors_timeouts_and_other_rcodes_never_win():
    probes = [Probe(A, "udp", 0.001, SERVFAIL), Probe(A, "tcp", 0.002, NXDOMAIN), Probe(B, "udp"),
              Probe(B, "tcp", None, NOERROR), Probe(C, "udp", 0.5, NOERROR)]
    assert fastest(probes) == C
    assert fastest(probes[:4]) is None
    assert fastest([]) is None


@given(st.lists(st.tuples(st.sampled_from([A, B, C]), st.sampled_from(["udp", "tcp"]),
                          st.one_of(st.none(), st.floats(0, 2)), st.sampled_from([NOERROR, SERVFAIL, None]))))
def test_the_winner_is_a_usable_probe_with_the_least_rtt(rows):
    probes = [Probe(ns, transport, rtt, rcode) for ns, transport, rtt, rcode in rows]
    winner = fastest(probes)
    usable = [p for p in probes if p.rtt is not None and p.rcode == NOERROR]
    if not usable:
        assert winner is None
    else:
        best = min(p.rtt for p in usable)
        assert winner in {p.nameserver for p in usable if p.rtt == best}


def test_a_round_probes_each_nameserver_once_per_transport_up_to_20():
    many = tuple((f"192.0.2.{i}", 53) for i in range(1, 30))
    probing = ProbeRound((*many, many[0]))
    assert len(probing.nameservers) == 20
    assert probing.expected[:2] == [(many[0], "udp"), (many[0], "tcp")]
    assert len(probing.expected) == 40


def test_a_round_ends_at_the_first_noerror_or_when_every_probe_is_in():
    probing = ProbeRound((A, B))
    probing.record(Probe(A, "udp", 0.1, SERVFAIL))
    probing.record(Probe(B, "udp"))
    assert not probing.done
    probing.record(Probe(A, "tcp", 0.2, NOERROR))
    assert probing.done and probing.winner == A
    nothing = ProbeRound((A,))
    nothing.record(Probe(A, "udp"))
    assert not nothing.done
    nothing.record(Probe(A, "tcp", 0.1, NXDOMAIN))
    assert nothing.done and nothing.winner is None


def test_the_probe_is_an_a_query_with_rd_and_no_edns():
    query = probe_query(parse_probe_name("firezone.dev"))
    assert query.question[0].name.to_text() == "firezone.dev."
    assert query.question[0].rdtype == dns.rdatatype.A
    assert query.flags & dns.flags.RD and query.edns < 0


@pytest.mark.parametrize("bad", ["a..b", ".", "x" * 64 + ".test"])
def test_a_malformed_probe_name_is_a_configuration_mistake(bad):
    with pytest.raises(ConfigError, match="FIREZONE_DNS_PROBE_NAME"):
        parse_probe_name(bad)


def test_the_probe_name_default_is_upstreams():
    assert DnsSettings().probe_name == "firezone.dev"


# --- what a message gets ---------------------------------------------------------------------


def srv_query(**kw) -> dns.message.QueryMessage:
    return dns.message.make_query("_ldap._tcp.corp.test", "SRV", **kw)


def test_a_query_is_forwarded_as_it_is():
    query = srv_query()
    action = classify(query.to_wire())
    assert isinstance(action, Forward)
    assert action.query.id == query.id and action.query.question == query.question


def test_responses_and_runts_are_never_answered():
    response = dns.message.make_response(srv_query()).to_wire()
    assert classify(response) == Ignore("not_a_query")
    assert classify(b"\x00" * 11) == Ignore("malformed")
    assert header_only(response, dns.rcode.FORMERR) is None


def test_garbage_after_a_header_gets_formerr_with_the_same_id():
    wire = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\xff\xff"
    action = classify(wire)
    assert isinstance(action, Answer) and action.result == "malformed"
    answer = dns.message.from_wire(action.wire)
    assert answer.id == 0xBEEF and answer.rcode() == dns.rcode.FORMERR
    assert answer.flags & dns.flags.QR and answer.flags & dns.flags.RD


@given(st.binary(min_size=12, max_size=64))
def test_any_bytes_get_forwarded_a_parsed_answer_or_nothing(wire):
    action = classify(wire)
    if isinstance(action, Answer):
        answer = dns.message.from_wire(action.wire)
        assert answer.id == int.from_bytes(wire[:2], "big") and answer.flags & dns.flags.QR
    elif isinstance(action, Forward):
        assert len(action.query.question) == 1


def test_other_opcodes_get_notimp_and_several_questions_formerr():
    notify = srv_query()
    notify.set_opcode(dns.opcode.NOTIFY)
    action = classify(notify.to_wire())
    assert isinstance(action, Answer) and dns.message.from_wire(action.wire).rcode() == dns.rcode.NOTIMP
    two = srv_query()
    two.question.append(dns.rrset.RRset(dns.name.from_text("x.test."), dns.rdataclass.IN, dns.rdatatype.TXT))
    action = classify(two.to_wire())
    assert isinstance(action, Answer) and dns.message.from_wire(action.wire).rcode() == dns.rcode.FORMERR


def big_txt_answer(query: dns.message.Message, chunks: int = 8) -> dns.message.Message:
    response = dns.message.make_response(query)
    values = [f'"{c}{"x" * 200}"' for c in "abcdefghijklmnop"[:chunks]]
    response.answer.append(dns.rrset.from_text_list(query.question[0].name, 60, "IN", "TXT", values))
    return response


def test_over_udp_an_answer_too_big_for_the_client_is_truncated_and_over_tcp_it_is_whole():
    query = dns.message.make_query("big.corp.test", "TXT")
    response = big_txt_answer(query)
    udp = dns.message.from_wire(encode_answer(query, response, "udp"))
    assert udp.flags & dns.flags.TC and len(encode_answer(query, response, "udp")) <= 512
    tcp = dns.message.from_wire(encode_answer(query, response, "tcp"))
    assert not tcp.flags & dns.flags.TC and tcp.answer == response.answer


def test_over_udp_the_clients_edns_size_is_honoured():
    query = dns.message.make_query("big.corp.test", "TXT", use_edns=0, payload=4096)
    response = big_txt_answer(query, chunks=4)
    wire = encode_answer(query, response, "udp")
    assert len(wire) > 512 and not dns.message.from_wire(wire).flags & dns.flags.TC


# --- forwarding, with a fake upstream and a fake clock ---------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Upstream:
    """Answers per nameserver: 'ok' (NOERROR, after `delay` fake seconds), 'refused', 'hang'."""

    def __init__(self, clock: Clock, modes: dict[tuple[str, int], str], delays=None) -> None:
        self.clock = clock
        self.modes = modes
        self.delays = delays or {}
        self.sent: list[tuple[str, tuple[str, int], str]] = []

    async def __call__(self, query, nameserver, transport, seconds):
        self.sent.append((query.question[0].name.to_text(), nameserver, transport))
        mode = self.modes.get(nameserver, "hang")
        if mode == "hang":
            await asyncio.Event().wait()
        if mode == "refused":
            raise ConnectionRefusedError("refused")
        for _ in range(self.delays.get(nameserver, 0)):
            await asyncio.sleep(0)
        self.clock.now += 0.001
        response = dns.message.make_response(query)
        if query.question[0].rdtype == dns.rdatatype.SRV:
            response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "SRV",
                                                       f"0 0 389 ldap-{nameserver[1]}.corp.test."))
        return response


def settings_with(tmp_path, *nameservers, probe="probe.lab.test") -> DnsSettings:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("".join(f"nameserver {ns}\n" for ns in nameservers))
    return DnsSettings(resolv_conf=str(resolv), probe_name=probe)


@pytest.fixture
def short_timeouts(monkeypatch):
    # The real 2 s and 5 s only matter against real servers; here a hang is cut at once.
    monkeypatch.setattr(tunserver, "PROBE_TIMEOUT", 0.05)
    monkeypatch.setattr(tunserver, "FORWARD_TIMEOUT", 0.05)


@pytest.mark.usefixtures("short_timeouts")
async def test_queries_go_to_the_fastest_nameserver(tmp_path):
    clock = Clock()
    upstream = Upstream(clock, {("192.0.2.1", 53): "ok", ("192.0.2.2", 53): "ok"}, {("192.0.2.1", 53): 5})
    server = TunDnsServer(settings_with(tmp_path, "192.0.2.1", "192.0.2.2"), send=upstream, clock=clock)
    try:
        wire = await server.answer(srv_query().to_wire(), "udp")
        assert server.nameservers.fastest == ("192.0.2.2", 53)
        probes = [s for s in upstream.sent if s[0] == "probe.lab.test."]
        assert {(ns, t) for _, ns, t in probes} <= {(ns, t) for ns in (("192.0.2.1", 53), ("192.0.2.2", 53))
                                                     for t in ("udp", "tcp")}
        answer = dns.message.from_wire(wire)
        assert answer.rcode() == NOERROR and "ldap-53" in answer.answer[0].to_text()
        assert upstream.sent[-1] == ("_ldap._tcp.corp.test.", ("192.0.2.2", 53), "udp")
        await server.answer(srv_query().to_wire(), "tcp")
        assert upstream.sent[-1][2] == "tcp"  # over the transport the query came on
    finally:
        await server.close()


@pytest.mark.usefixtures("short_timeouts")
async def test_a_dead_first_nameserver_is_passed_over(tmp_path):
    clock = Clock()
    upstream = Upstream(clock, {("192.0.2.1", 53): "hang", ("192.0.2.2", 53): "ok"})
    server = TunDnsServer(settings_with(tmp_path, "192.0.2.1", "192.0.2.2"), send=upstream, clock=clock)
    try:
        answer = dns.message.from_wire(await server.answer(srv_query().to_wire(), "udp"))
        assert answer.rcode() == NOERROR
        assert server.nameservers.fastest == ("192.0.2.2", 53)
    finally:
        await server.close()


@pytest.mark.usefixtures("short_timeouts")
async def test_no_nameserver_answers_servfail_with_the_querys_id_and_question(tmp_path):
    clock = Clock()
    upstream = Upstream(clock, {("192.0.2.1", 53): "refused"})
    server = TunDnsServer(settings_with(tmp_path, "192.0.2.1"), send=upstream, clock=clock)
    try:
        query = srv_query()
        answer = dns.message.from_wire(await server.answer(query.to_wire(), "udp"))
        assert answer.rcode() == SERVFAIL and answer.id == query.id and answer.question == query.question
        sent = len(upstream.sent)
        # Within 5 s of a round that found none, the next query is answered at once, unprobed.
        clock.now += 1
        assert dns.message.from_wire(await server.answer(srv_query().to_wire(), "tcp")).rcode() == SERVFAIL
        assert len(upstream.sent) == sent
        # Later, a query starts a new round first; a server back by then is used.
        clock.now += tunserver.RECHECK_WHEN_NONE
        upstream.modes[("192.0.2.1", 53)] = "ok"
        assert dns.message.from_wire(await server.answer(srv_query().to_wire(), "udp")).rcode() == NOERROR
    finally:
        await server.close()


@pytest.mark.usefixtures("short_timeouts")
async def test_an_empty_resolv_conf_means_127_0_0_1_as_for_the_resolver(tmp_path):
    clock = Clock()
    upstream = Upstream(clock, {})
    server = TunDnsServer(settings_with(tmp_path), send=upstream, clock=clock)
    try:
        answer = dns.message.from_wire(await server.answer(srv_query().to_wire(), "udp"))
        assert answer.rcode() == SERVFAIL
        assert {ns for _, ns, _ in upstream.sent} == {("127.0.0.1", 53)}
    finally:
        await server.close()


@pytest.mark.usefixtures("short_timeouts")
async def test_explicit_nameservers_replace_resolv_conf_ports_included(tmp_path):
    clock = Clock()
    upstream = Upstream(clock, {("127.0.0.9", 5353): "ok"})
    settings = DnsSettings(resolv_conf=str(tmp_path / "none"), nameservers=(("127.0.0.9", 5353),),
                           probe_name="probe.lab.test")
    server = TunDnsServer(settings, send=upstream, clock=clock)
    try:
        assert dns.message.from_wire(await server.answer(srv_query().to_wire(), "udp")).rcode() == NOERROR
        assert {ns for _, ns, _ in upstream.sent} == {("127.0.0.9", 5353)}
    finally:
        await server.close()


@pytest.mark.usefixtures("short_timeouts")
async def test_a_forward_that_times_out_gets_servfail_and_a_new_round(tmp_path):
    clock = Clock()
    upstream = Upstream(clock, {("192.0.2.1", 53): "ok", ("192.0.2.2", 53): "ok"}, {("192.0.2.2", 53): 5})
    server = TunDnsServer(settings_with(tmp_path, "192.0.2.1", "192.0.2.2"), send=upstream, clock=clock)
    try:
        await server.answer(srv_query().to_wire(), "udp")
        assert server.nameservers.fastest == ("192.0.2.1", 53)
        upstream.modes[("192.0.2.1", 53)] = "hang"
        answer = dns.message.from_wire(await server.answer(srv_query().to_wire(), "udp"))
        assert answer.rcode() == SERVFAIL
        await server.nameservers.evaluate()  # the round the failure started
        assert server.nameservers.fastest == ("192.0.2.2", 53)
        assert dns.message.from_wire(await server.answer(srv_query().to_wire(), "udp")).rcode() == NOERROR
    finally:
        await server.close()


@pytest.mark.usefixtures("short_timeouts")
async def test_beyond_1000_forwarded_queries_in_flight_servfail_at_once(tmp_path):
    server = TunDnsServer(settings_with(tmp_path, "192.0.2.1"), send=Upstream(Clock(), {}))
    server.in_flight = tunserver.MAX_IN_FLIGHT
    answer = dns.message.from_wire(await server.answer(srv_query().to_wire(), "udp"))
    assert answer.rcode() == SERVFAIL
    await server.close()


# --- binding ---------------------------------------------------------------------------------


class FakeListener:
    def __init__(self, address: str) -> None:
        self.address = address


async def test_bind_keeps_unchanged_addresses_rebinds_changed_ones_and_fails_only_on_none(tmp_path, monkeypatch,
                                                                                          caplog):
    server = TunDnsServer(settings_with(tmp_path, "192.0.2.1"), send=Upstream(Clock(), {}))
    refused: set[str] = set()
    opened: list[str] = []
    closed: list[list[str]] = []

    async def listen(address):
        if address in refused:
            raise OSError(98, "Address already in use")
        opened.append(address)
        return FakeListener(address)

    async def close_listeners():
        closed.append(server.addresses)
        server._listeners = []

    monkeypatch.setattr(server, "_listen", listen)
    monkeypatch.setattr(server, "_close_listeners", close_listeners)
    v4, v6 = ipaddress.ip_address("100.95.0.7"), ipaddress.ip_address("fd00:2021:1111::1f:7")
    try:
        await server.bind([v4, v6])
        assert server.addresses == ["100.95.0.7", "fd00:2021:1111::1f:7"] and opened == server.addresses
        await server.bind([v4, v6])  # a re-sent init with the same addresses
        assert len(opened) == 2
        other = ipaddress.ip_address("100.95.0.8")
        await server.bind([other, v6])
        assert closed[-1] == ["100.95.0.7", "fd00:2021:1111::1f:7"]
        assert server.addresses == ["100.95.0.8", "fd00:2021:1111::1f:7"]
        refused.add("fd00:2021:1111::1f:9")
        await server.bind([v4, ipaddress.ip_address("fd00:2021:1111::1f:9")])
        assert server.addresses == ["100.95.0.7"]
        assert "TUN DNS server not listening on [fd00:2021:1111::1f:9]:53535: Address already in use" in caplog.text
        refused.add("100.95.0.9")
        with pytest.raises(RuntimeFailure, match=r"cannot bind the TUN DNS server .*100\.95\.0\.9:53535"):
            await server.bind([ipaddress.ip_address("100.95.0.9"), ipaddress.ip_address("fd00:2021:1111::1f:9")])
    finally:
        await server.close()


async def test_the_data_plane_binds_after_the_addresses_and_reports_a_failure_as_fatal(monkeypatch):
    from gateway_pkg.tunnel.control import SetTunAddresses
    from gateway_pkg.tunnel.dataplane import TunnelDataPlane

    order: list[str] = []

    class Tun:
        def set_addresses(self, ipv4, ipv6):
            order.append("addresses")

    class Dns:
        fail = False

        async def bind(self, addresses):
            order.append(f"bind {' '.join(map(str, addresses))}")
            if self.fail:
                raise RuntimeFailure("cannot bind the TUN DNS server (UDP and TCP): ...")

    dns_server = Dns()
    plane = TunnelDataPlane(b"\x01" * 32, resolver=None, tun_dns=dns_server)  # type: ignore[arg-type]
    plane.tun = Tun()  # type: ignore[assignment]
    fatal: list[Exception] = []
    plane.on_fatal = fatal.append
    effect = SetTunAddresses(ipaddress.IPv4Address("100.95.0.7"), ipaddress.IPv6Address("fd00:2021:1111::1f:7"))
    await plane._apply_addresses(effect)
    assert order == ["addresses", "bind 100.95.0.7 fd00:2021:1111::1f:7"] and fatal == []
    dns_server.fail = True
    await plane._apply_addresses(effect)
    assert len(fatal) == 1 and isinstance(fatal[0], RuntimeFailure)


def test_timeouts_are_upstreams():
    assert (tunserver.PROBE_TIMEOUT, tunserver.MAX_NAMESERVERS, tunserver.FORWARD_TIMEOUT) == (2.0, 20, 5.0)
    assert tunserver.REEVALUATE_INTERVAL == 60.0 and tunserver.TUN_DNS_PORT == 53535


async def test_a_tentative_address_is_retried_until_usable(tmp_path, monkeypatch):
    server = TunDnsServer(settings_with(tmp_path, "192.0.2.1"), send=Upstream(Clock(), {}))
    attempts: list[str] = []

    async def listen(address):
        attempts.append(address)
        if len(attempts) < 3:
            raise OSError(99, "Cannot assign requested address")  # EADDRNOTAVAIL: still tentative
        return FakeListener(address)

    monkeypatch.setattr(server, "_listen", listen)
    monkeypatch.setattr(server, "_close_listeners", lambda: asyncio.sleep(0))
    try:
        await server.bind([ipaddress.ip_address("fd00:2021:1111::1f:7")])
        assert server.addresses == ["fd00:2021:1111::1f:7"] and len(attempts) == 3
    finally:
        server._listeners = []
        await server.close()
