"""The user-space path's own query building and UDP transport (dns/upstream.py) against what
they stand in for: dnspython's make_query/to_wire, and its udp_with_fallback's checks, on
loopback sockets this test answers from."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz.framing import records
from gateway_pkg.dns.answer import interpret
from gateway_pkg.dns.upstream import EDNS_PAYLOAD, make_query, parse_reply, query_wire, send_udp_with_tcp_fallback

A, AAAA = dns.rdatatype.A, dns.rdatatype.AAAA

label = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=63)
names = st.lists(label, min_size=0, max_size=4).map(lambda labels: dns.name.from_text(".".join(labels) + "."))


def reference(qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, query_id: int) -> dns.message.QueryMessage:
    query = dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
    query.id = query_id
    return query


@given(names, st.sampled_from([A, AAAA]))
def test_make_query_is_dnspythons_query(qname, rdtype):
    built = make_query(qname, rdtype)
    expected = reference(qname, rdtype, built.id)
    assert built == expected
    assert built.to_wire() == expected.to_wire()
    assert (built.flags, built.edns, built.ednsflags, built.payload, built.options, built.request_payload) == (
        expected.flags, expected.edns, expected.ednsflags, expected.payload, expected.options,
        expected.request_payload,
    )  # fmt: skip
    assert built.find_rrset(built.question, qname, dns.rdataclass.IN, rdtype) is built.question[0]
    assert built.is_response(dns.message.make_response(expected))


def test_each_query_has_its_own_opt_record():
    first, second = make_query(dns.name.from_text("a.test."), A), make_query(dns.name.from_text("b.test."), A)
    first.want_dnssec()  # sets a flag in the OPT record's TTL
    third = make_query(dns.name.from_text("c.test."), A)
    assert first.ednsflags & dns.flags.DO
    assert not second.ednsflags & dns.flags.DO and not third.ednsflags & dns.flags.DO
    assert query_wire(first) == first.to_wire()


@given(names, st.sampled_from([A, AAAA]))
def test_query_wire_is_to_wire(qname, rdtype):
    query = make_query(qname, rdtype)
    assert query_wire(query) == query.to_wire()


@pytest.mark.parametrize(
    "change",
    [
        lambda q: q.use_edns(0, 0, EDNS_PAYLOAD, options=[dns.edns.GenericOption(65001, b"x")]),
        lambda q: q.use_edns(0, 0, EDNS_PAYLOAD, pad=64),
        lambda q: q.use_edns(-1),  # no EDNS at all
        lambda q: q.additional.append(dns.rrset.from_text("x.test.", 60, "IN", "A", "192.0.2.1")),
        lambda q: q.question.append(dns.rrset.RRset(dns.name.from_text("y.test."), 1, AAAA)),
        lambda q: setattr(q, "flags", q.flags | dns.flags.CD),
    ],
)
def test_other_queries_go_through_to_wire(change):
    query = make_query(dns.name.from_text("app.test."), A)
    change(query)
    assert query_wire(query) == query.to_wire()


# -- the transport, against loopback sockets --------------------------------------------------


class Server(asyncio.DatagramProtocol):
    """Receives queries on 127.0.0.1 and replies as `behaviour` says."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.queries: list[dns.message.Message] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        query = dns.message.from_wire(data)
        self.queries.append(query)
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.1"))
        assert self.transport is not None
        if self.behaviour == "answer":
            self.transport.sendto(response.to_wire(), addr)
        elif self.behaviour == "wrong id":
            response.id ^= 1
            self.transport.sendto(response.to_wire(), addr)
        elif self.behaviour == "other port":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                other.sendto(response.to_wire(), addr)
        elif self.behaviour == "truncated":
            response.answer.clear()
            response.flags |= dns.flags.TC
            self.transport.sendto(response.to_wire(), addr)
        # "silent": nothing


async def serve(behaviour: str):
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(lambda: Server(behaviour), local_addr=("127.0.0.1", 0))
    return transport, server, transport.get_extra_info("sockname")[1]


async def test_an_answer_is_returned_with_the_query_on_the_wire_as_dnspython_sends_it():
    transport, server, port = await serve("answer")
    try:
        query = make_query(dns.name.from_text("app.test."), A)
        response = await send_udp_with_tcp_fallback(query, ("127.0.0.1", port), 2.0)
    finally:
        transport.close()
    assert query.is_response(response)
    assert [rdata.address for rdata in response.answer[0]] == ["192.0.2.1"]
    [received] = server.queries
    assert received == query and received.payload == EDNS_PAYLOAD


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        ("wrong id", dns.query.BadResponse),
        ("other port", dns.query.UnexpectedSource),
        ("silent", dns.exception.Timeout),
    ],
)
async def test_replies_dnspython_rejects_are_rejected(behaviour, error):
    transport, _server, port = await serve(behaviour)
    try:
        with pytest.raises(error):
            await send_udp_with_tcp_fallback(make_query(dns.name.from_text("app.test."), A), ("127.0.0.1", port), 0.3)
    finally:
        transport.close()


async def test_a_truncated_answer_is_asked_again_over_tcp():
    transport, server, port = await serve("truncated")
    tcp_queries: list[dns.message.Message] = []

    async def answer_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        query = dns.message.from_wire(await reader.readexactly(length))
        tcp_queries.append(query)
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.2"))
        wire = response.to_wire()
        writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()
        writer.close()

    tcp = await asyncio.start_server(answer_tcp, "127.0.0.1", port)
    try:
        query = make_query(dns.name.from_text("big.test."), A)
        response = await send_udp_with_tcp_fallback(query, ("127.0.0.1", port), 2.0)
    finally:
        tcp.close()
        transport.close()
    assert [rdata.address for rdata in response.answer[0]] == ["192.0.2.2"]
    assert len(server.queries) == 1 and tcp_queries == [query]


# -- the reply parse: a plain OPT record left out, everything else as dnspython's ----------------


def whole(wire: bytes, query: dns.message.Message) -> dns.message.Message:
    return dns.message.from_wire(wire, keyring=query.keyring, request_mac=query.mac, raise_on_truncation=True)


def same_parse(wire: bytes, query: dns.message.Message) -> dns.message.Message | None:
    """parse_reply(wire) is dnspython's parse (same sections, flags, rcode) or raises the same
    exception type. Returns the parse, None when both raised."""
    try:
        expected = whole(wire, query)
    except Exception as error:
        with pytest.raises(type(error)):
            parse_reply(wire, query)
        return None
    parsed = parse_reply(wire, query)
    assert parsed == expected
    assert (parsed.id, parsed.flags, parsed.rcode()) == (expected.id, expected.flags, expected.rcode())
    assert interpret(parsed, query.question[0].name, query.question[0].rdtype) == interpret(
        expected, query.question[0].name, query.question[0].rdtype
    )
    return parsed


SOA = "ns.test. admin.test. 1 3600 600 86400 30"


@st.composite
def replies(draw) -> tuple[bytes, dns.message.QueryMessage]:
    qname = draw(names)
    rdtype = draw(st.sampled_from([A, AAAA]))
    query = make_query(qname, rdtype)
    response = dns.message.make_response(query)
    kind = draw(st.sampled_from(["answer", "cname", "nodata", "nxdomain", "servfail", "badvers"]))
    if kind in ("answer", "cname"):
        owner = qname
        if kind == "cname":
            target = dns.name.from_text("target.test.")
            response.answer.append(dns.rrset.from_text(qname, 30, "IN", "CNAME", target.to_text()))
            owner = target
        value = "192.0.2.1" if rdtype == A else "2001:db8::1"
        response.answer.append(dns.rrset.from_text(owner, draw(st.integers(0, 2**31 - 1)), "IN", rdtype, value))
    elif kind in ("nodata", "nxdomain"):
        response.authority.append(dns.rrset.from_text("test.", 60, "IN", "SOA", SOA))
        if kind == "nxdomain":
            response.set_rcode(dns.rcode.NXDOMAIN)
    elif kind == "servfail":
        response.set_rcode(dns.rcode.SERVFAIL)
    else:
        response.set_rcode(dns.rcode.BADVERS)  # an extended rcode: in the OPT record's TTL
    edns = draw(st.sampled_from(["plain", "none", "options", "glue"]))
    if edns == "none" and kind != "badvers":
        response.use_edns(-1)
    elif edns == "options":
        response.use_edns(0, 0, 1232, options=[dns.edns.GenericOption(65001, b"x")])
    elif edns == "glue":
        response.additional.append(dns.rrset.from_text("ns.test.", 60, "IN", "A", "192.0.2.53"))
    return response.to_wire(), query


@given(replies())
def test_reply_parse_is_dnspythons(reply):
    wire, query = reply
    parsed = same_parse(wire, query)
    assert parsed is not None


@given(replies(), st.data())
def test_damaged_replies_parse_or_fail_as_dnspython_has_them(reply, data):
    wire, query = reply
    damaged = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(damaged) - 1))
        damaged[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(damaged)))
    same_parse(bytes(damaged), query)
    same_parse(bytes(damaged[:cut]), query)
    same_parse(bytes(damaged) + b"\x00" * data.draw(st.integers(0, 12)), query)


def test_the_plain_opt_record_is_what_is_left_out():
    query = make_query(dns.name.from_text("app.test."), A)
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text("app.test.", 60, "IN", "A", "192.0.2.1"))
    assert response.opt is not None
    parsed = same_parse(response.to_wire(), query)
    assert parsed is not None and parsed.opt is None  # the shortcut was taken
    response.set_rcode(dns.rcode.BADVERS)
    parsed = same_parse(response.to_wire(), query)
    assert parsed is not None and parsed.opt is not None and parsed.rcode() == dns.rcode.BADVERS


def test_the_fuzz_corpus_replies_parse_as_dnspython_has_them():
    corpus = Path(__file__).resolve().parents[3] / "fuzz" / "corpus" / "dns_answer"
    query = make_query(dns.name.from_text("app.corp.example."), A)
    seen = 0
    for path in sorted(corpus.iterdir()):
        for _tag, body in records(path.read_bytes()[1:], limit=12):
            same_parse(body, query)
            seen += 1
    assert seen > 0


def test_bytes_that_only_look_like_an_opt_record_are_kept():
    """The last additional record is a TXT whose text ends like a plain OPT record."""
    query = make_query(dns.name.from_text("app.test."), A)
    response = dns.message.make_response(query)
    response.use_edns(-1)
    tail = "".join(f"\\{byte:03d}" for byte in b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00")
    response.additional.append(dns.rrset.from_text("x.test.", 60, "IN", "TXT", f'"{tail}"'))
    wire = response.to_wire()
    assert wire.endswith(b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00")
    parsed = same_parse(wire, query)
    assert parsed is not None and len(parsed.additional) == 1
