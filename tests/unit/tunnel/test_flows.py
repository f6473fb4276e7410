"""The flow table behind the flow logs: what starts a flow, what each line counts, what ends it."""

from __future__ import annotations

import pytest

from gateway_pkg.tunnel.flows import (
    END_ACCESS_REMOVED,
    END_FIN,
    END_IDLE,
    END_RST,
    END_STOPPED,
    LINGER,
    OTHER_IDLE,
    TCP_IDLE,
    FlowTable,
)
from tests.packets import build_icmp_echo, build_tcp, build_udp

CLIENT, RESOURCE = "100.64.0.2", "10.0.0.5"
CLIENT6, RESOURCE6 = "fd00:2021:1111::2", "fd00:99::5"
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


def allowed(_client: str, _resource: str) -> str | None:
    return None


def test_a_udp_exchange_is_one_flow_counted_both_ways() -> None:
    table = FlowTable()
    query = build_udp(CLIENT, RESOURCE, 40000, 53, b"q" * 20)
    answer = build_udp(RESOURCE, CLIENT, 53, 40000, b"a" * 60)
    started = table.outbound("c1", "r1", query, 1.0, 1_700_000_000.0)
    assert started is not None
    assert started.fields() == {"client": "c1", "resource": "r1", "protocol": "udp", "src": CLIENT,
                                "sport": 40000, "dst": RESOURCE, "dport": 53}
    assert table.inbound("c1", "r1", answer, 1.1, 0) is None  # the same flow, not a new one
    assert table.outbound("c1", "r1", query, 1.2, 0) is None
    assert len(table) == 1
    [ended] = table.end_all()
    fields = ended.end_fields()
    assert fields["reason"] == END_STOPPED
    assert (fields["packets_from_client"], fields["bytes_from_client"]) == (2, 2 * len(query))
    assert (fields["packets_to_client"], fields["bytes_to_client"]) == (1, len(answer))
    assert fields["duration_s"] == pytest.approx(0.2)


def test_other_ports_other_flows_and_the_answer_alone_starts_one_too() -> None:
    table = FlowTable()
    assert table.outbound("c1", "r1", build_udp(CLIENT, RESOURCE, 40000, 53), 0, 0)
    assert table.outbound("c1", "r1", build_udp(CLIENT, RESOURCE, 40001, 53), 0, 0)
    # A resource that speaks first (allowed by the filters): the flow is still named from the client's side.
    first = table.inbound("c1", "r1", build_udp(RESOURCE, CLIENT, 5000, 41000), 0, 0)
    assert first is not None and (first.client_port, first.resource_port) == (41000, 5000)
    assert first.client_address == CLIENT
    assert len(table) == 3


def test_pings_are_told_apart_by_identifier_and_ipv6_works() -> None:
    table = FlowTable()
    assert table.outbound("c1", "r1", build_icmp_echo(CLIENT6, RESOURCE6, 7, 1), 0, 0)
    assert table.inbound("c1", "r1", build_icmp_echo(RESOURCE6, CLIENT6, 7, 1, reply=True), 0, 0) is None
    other = table.outbound("c1", "r1", build_icmp_echo(CLIENT6, RESOURCE6, 8, 1), 0, 0)
    assert other is not None and other.fields()["protocol"] == "icmpv6" and "sport" not in other.fields()
    assert len(table) == 2


def test_tcp_ends_after_both_fins_once_the_linger_is_over() -> None:
    table = FlowTable()
    table.outbound("c1", "r1", build_tcp(CLIENT, RESOURCE, 40000, 80, flags=SYN), 0, 0)
    table.inbound("c1", "r1", build_tcp(RESOURCE, CLIENT, 80, 40000, flags=SYN | ACK), 0.1, 0)
    table.outbound("c1", "r1", build_tcp(CLIENT, RESOURCE, 40000, 80, flags=FIN | ACK), 1.0, 0)
    assert table.sweep(1.0 + LINGER + 1, allowed) == []  # one side closed: still open
    table.inbound("c1", "r1", build_tcp(RESOURCE, CLIENT, 80, 40000, flags=FIN | ACK), 5.0, 0)
    last_ack = build_tcp(CLIENT, RESOURCE, 40000, 80, flags=ACK)
    assert table.outbound("c1", "r1", last_ack, 5.1, 0) is None  # counted, not a new flow
    assert table.sweep(5.0 + LINGER / 2, allowed) == []
    [ended] = table.sweep(5.0 + LINGER, allowed)
    assert ended.ended == END_FIN and ended.packets_in == 3 and ended.packets_out == 2
    assert len(table) == 0


def test_a_reset_ends_the_flow() -> None:
    table = FlowTable()
    table.outbound("c1", "r1", build_tcp(CLIENT, RESOURCE, 40000, 81, flags=SYN), 0, 0)
    table.inbound("c1", "r1", build_tcp(RESOURCE, CLIENT, 81, 40000, flags=RST | ACK), 0.01, 0)
    [ended] = table.sweep(LINGER + 0.01, allowed)
    assert ended.ended == END_RST


def test_idle_flows_end_and_a_later_packet_starts_a_new_one() -> None:
    table = FlowTable()
    table.outbound("c1", "r1", build_udp(CLIENT, RESOURCE, 40000, 53), 0, 0)
    table.outbound("c1", "r1", build_tcp(CLIENT, RESOURCE, 40000, 22, flags=SYN), 0, 0)
    [udp] = table.sweep(OTHER_IDLE, allowed)  # TCP waits longer
    assert udp.ended == END_IDLE and udp.protocol == 17
    [tcp] = table.sweep(TCP_IDLE, allowed)
    assert tcp.ended == END_IDLE
    assert table.outbound("c1", "r1", build_udp(CLIENT, RESOURCE, 40000, 53), TCP_IDLE + 1, 0) is not None


def test_flows_end_when_the_access_goes() -> None:
    table = FlowTable()
    table.outbound("c1", "r1", build_udp(CLIENT, RESOURCE, 40000, 53), 0, 0)
    table.outbound("c1", "r2", build_udp(CLIENT, "10.0.1.1", 40000, 53), 0, 0)
    [ended] = table.sweep(1, lambda _c, resource: END_ACCESS_REMOVED if resource == "r1" else None)
    assert (ended.resource_id, ended.ended) == ("r1", END_ACCESS_REMOVED)
    assert len(table) == 1


def test_a_full_table_tracks_no_more_flows_and_counts_them() -> None:
    table = FlowTable(max_flows=2)
    for port in (1, 2, 3):
        table.outbound("c1", "r1", build_udp(CLIENT, RESOURCE, 40000, port), 0, 0)
    assert len(table) == 2 and table.untracked == 1


def test_what_is_not_ip_or_a_later_fragment_does_not_break_the_table() -> None:
    table = FlowTable()
    assert table.outbound("c1", "r1", b"\x00" * 40, 0, 0) is None
    fragment = bytearray(build_udp(CLIENT, RESOURCE, 40000, 53, b"x" * 8))
    fragment[6:8] = b"\x00\x10"  # fragment offset 16: no UDP header in it
    flow = table.outbound("c1", "r1", bytes(fragment), 0, 0)
    assert flow is not None and flow.client_port is None


def test_a_flow_whose_packets_sometimes_carry_ip_options_stays_one_flow() -> None:
    table = FlowTable()
    plain = build_udp(CLIENT, RESOURCE, 40000, 53, b"q")
    with_options = bytearray(plain[:20] + b"\x01\x01\x01\x00" + plain[20:])  # 4 bytes of NOP options
    with_options[0] = 0x46
    assert table.outbound("c1", "r1", bytes(with_options), 0, 0) is not None
    assert table.outbound("c1", "r1", plain, 0, 0) is None
    assert table.outbound("c1", "r1", bytes(with_options), 0, 0) is None
    assert len(table) == 1


def test_the_segments_of_one_tso_read_count_at_once_and_the_last_ones_fin_ends_it() -> None:
    # The data plane counts the segments one TSO read became in one call: n packets, their
    # bytes, and the last segment (a FIN is only ever on the last one).
    table = FlowTable()
    table.outbound("c1", "r1", build_tcp(CLIENT, RESOURCE, 40000, 80, flags=SYN), 0, 0)
    segment = build_tcp(RESOURCE, CLIENT, 80, 40000, flags=ACK, payload=b"x" * 1200)
    last = build_tcp(RESOURCE, CLIENT, 80, 40000, flags=FIN | ACK, payload=b"x" * 300)
    assert table.count("c1", "r1", segment, 0.1, 0, False, 44, 44 * len(segment)) is None
    assert table.count("c1", "r1", last, 0.2, 0, False, 3, 2 * len(segment) + len(last)) is None
    table.outbound("c1", "r1", build_tcp(CLIENT, RESOURCE, 40000, 80, flags=FIN | ACK), 0.3, 0)
    [ended] = table.sweep(0.3 + LINGER, allowed)
    fields = ended.end_fields()
    assert ended.ended == END_FIN
    assert (fields["packets_to_client"], fields["bytes_to_client"]) == (47, 46 * len(segment) + len(last))
    assert fields["packets_from_client"] == 2
