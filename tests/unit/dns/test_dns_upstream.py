"""The user-space path's own query building and UDP transport (dns/upstream.py) against what
they stand in for: dnspython's make_query/to_wire, and its udp_with_fallback's checks, on
loopback sockets this test answers from."""

from __future__ import annotations

import asyncio
import socket
import struct

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_pkg.dns.upstream import EDNS_PAYLOAD, make_query, query_wire, send_udp_with_tcp_fallback

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
