"""ICE candidates: SDP round trips, what the parser refuses, priorities and foundations."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_pkg.ice.candidate import (
    Candidate,
    CandidateType,
    foundation,
    parse_candidates,
    priority,
    sort_by_priority,
)

# The srflx candidate of upstream's `faulty_candidate_get_skipped` test.
UPSTREAM_SRFLX = (
    "candidate:fffeff6435be70ddbf995982 1 udp 1694498559 87.121.72.60 57114 typ srflx raddr 0.0.0.0 rport 0"
)


def test_parses_upstream_srflx() -> None:
    cand = Candidate.from_sdp(UPSTREAM_SRFLX)
    assert cand == Candidate(
        foundation="fffeff6435be70ddbf995982",
        component=1,
        transport="udp",
        priority=1694498559,
        address="87.121.72.60",
        port=57114,
        type=CandidateType.SRFLX,
        related_address="0.0.0.0",
        related_port=0,
    )
    assert cand.addr == ("87.121.72.60", 57114)
    assert cand.to_sdp() == UPSTREAM_SRFLX


@pytest.mark.parametrize(
    "text",
    [
        "candidate:1 1 udp 2130706431 192.0.2.1 52625 typ host",
        "a=candidate:1 1 UDP 2130706431 192.0.2.1 52625 typ host",
        "1 1 udp 2130706431 192.0.2.1 52625 typ host",
        "candidate:1 1 udp 2130706431 192.0.2.1 52625 typ host generation 0 network-id 1",
    ],
)
def test_prefixes_case_and_extensions(text: str) -> None:
    cand = Candidate.from_sdp(text)
    assert cand.to_sdp() == "candidate:1 1 udp 2130706431 192.0.2.1 52625 typ host"


def test_ipv6_is_canonical_and_relay_keeps_related() -> None:
    cand = Candidate.from_sdp("candidate:r 1 udp 16777215 2001:DB8:0:0::7 3478 typ relay raddr 2001:db8::1 rport 5")
    assert cand.address == "2001:db8::7"
    assert cand.type is CandidateType.RELAY
    assert (cand.related_address, cand.related_port) == ("2001:db8::1", 5)
    assert cand.version == 6


@pytest.mark.parametrize(
    "text",
    [
        "",
        "foo",
        "candidate:1 1 udp 2130706431 192.0.2.1 52625 typ",  # too few fields
        "candidate:1 1 udp 2130706431 192.0.2.1 52625 typ host raddr",  # odd extension
        "candidate:1 1 tcp 2130706431 192.0.2.1 9 typ host tcptype active",  # TCP is skipped
        "candidate:1 2 udp 2130706431 192.0.2.1 52625 typ host",  # component 2
        "candidate:1 1 udp high 192.0.2.1 52625 typ host",  # priority not an int
        "candidate:1 1 udp -5 192.0.2.1 52625 typ host",
        "candidate:1 1 udp 0 192.0.2.1 52625 typ host",
        "candidate:1 1 udp 2147483648 192.0.2.1 52625 typ host",
        "candidate:1 1 udp 2130706431 2e1f5b9c-1f.local 52625 typ host",  # mDNS name
        "candidate:1 1 udp 2130706431 example.com 52625 typ host",
        "candidate:1 1 udp 2130706431 192.0.2.300 52625 typ host",
        "candidate:1 1 udp 2130706431 fe80::1%eth0 52625 typ host",
        "candidate:1 1 udp 2130706431 192.0.2.1 0 typ host",  # bad port
        "candidate:1 1 udp 2130706431 192.0.2.1 65536 typ host",
        "candidate:1 1 udp 2130706431 192.0.2.1 5x typ host",
        "candidate:1 1 udp 2130706431 192.0.2.1 52625 typ magic",  # unknown typ
        "candidate:1 1 udp 2130706431 192.0.2.1 52625 type host",
        "candidate:1 1 udp 1694498559 192.0.2.1 52625 typ srflx raddr 10.0.0.1",  # raddr without rport
        "candidate:1 1 udp 1694498559 192.0.2.1 52625 typ srflx raddr 10.0.0.1 rport 70000",
        "candidate:1 1 udp 1694498559 192.0.2.1 52625 typ srflx raddr host.local rport 1",
        "candidate:b@d 1 udp 2130706431 192.0.2.1 52625 typ host",  # not ice-chars
        "candidate:1 1 udp ２ 192.0.2.1 52625 typ host",  # non-ASCII digits
    ],
)
def test_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        Candidate.from_sdp(text)


def test_faulty_candidates_get_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """Like upstream's `faulty_candidate_get_skipped`: of four inputs, three faulty, one kept."""
    texts = [
        "foo",
        "candidate:1 1 tcp 2130706431 192.0.2.1 9 typ host tcptype active",
        "candidate:2 1 udp 2130706431 4b1c6d.local 52625 typ host",
        UPSTREAM_SRFLX,
    ]
    with caplog.at_level(logging.DEBUG, logger="gateway_pkg.ice.candidate"):
        kept = parse_candidates(texts)
    assert [c.to_sdp() for c in kept] == [UPSTREAM_SRFLX]
    assert sum("skipping ICE candidate" in r.getMessage() for r in caplog.records) == 3


def test_parse_candidates_never_raises_on_non_strings() -> None:
    assert parse_candidates([None, 5, b"x"]) == []  # type: ignore[list-item]


def test_priority_formula() -> None:
    assert priority(CandidateType.HOST) == (126 << 24) + (65535 << 8) + 255 == 2130706431
    assert priority(CandidateType.PRFLX) == (110 << 24) + (65535 << 8) + 255
    assert priority(CandidateType.SRFLX) == 1694498815
    assert priority(CandidateType.RELAY, local_preference=0) == 255
    assert priority(CandidateType.HOST, 100, component=2) == (126 << 24) + (100 << 8) + 254
    with pytest.raises(ValueError):
        priority(CandidateType.HOST, 65536)
    with pytest.raises(ValueError):
        priority(CandidateType.HOST, component=0)
    assert Candidate.from_sdp(UPSTREAM_SRFLX).local_preference == (1694498559 >> 8) & 0xFFFF


def test_foundation_semantics() -> None:
    host = foundation(CandidateType.HOST, "192.0.2.1")
    assert host == foundation(CandidateType.HOST, "192.0.2.1")  # stable
    assert host != foundation(CandidateType.HOST, "192.0.2.2")  # base IP
    assert host != foundation(CandidateType.SRFLX, "192.0.2.1")  # type
    relay_a = foundation(CandidateType.RELAY, "192.0.2.1", "198.51.100.1:3478")
    assert relay_a != foundation(CandidateType.RELAY, "192.0.2.1", "198.51.100.2:3478")  # server
    assert Candidate.from_sdp(f"candidate:{relay_a} 1 udp 1 192.0.2.9 9 typ relay").foundation == relay_a


def test_sort_by_priority_highest_first() -> None:
    def cand(prio: int, port: int) -> Candidate:
        return Candidate("f", 1, "udp", prio, "192.0.2.1", port, CandidateType.HOST)

    cands = [cand(5, 1), cand(9, 2), cand(7, 3), cand(9, 4)]
    assert [c.port for c in sort_by_priority(cands)] == [2, 4, 3, 1]


ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
candidates = st.builds(
    Candidate,
    foundation=st.from_regex(r"[A-Za-z0-9+/]{1,32}", fullmatch=True),
    component=st.just(1),
    transport=st.just("udp"),
    priority=st.integers(1, (1 << 31) - 1),
    address=ips,
    port=st.integers(1, 65535),
    type=st.sampled_from(CandidateType),
    related_address=st.none(),
    related_port=st.none(),
)


@given(candidates, st.one_of(st.none(), st.tuples(ips, st.integers(0, 65535))))
def test_sdp_round_trip(cand: Candidate, related: tuple[str, int] | None) -> None:
    if related is not None:
        cand = dataclasses.replace(cand, related_address=related[0], related_port=related[1])
    assert Candidate.from_sdp(cand.to_sdp()) == cand


@given(st.text(max_size=120))
def test_parse_candidates_never_raises(text: str) -> None:
    assert len(parse_candidates([text])) <= 1
