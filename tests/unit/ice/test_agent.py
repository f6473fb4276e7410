"""The controlled ICE agent against a hand-driven controlling side built with the STUN codec."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_pkg.ice import stun
from gateway_pkg.ice.agent import (
    DROP_REASONS,
    MAX_PAIRS,
    Credentials,
    Disconnected,
    IceAgent,
    IceEvent,
    IceTimings,
    LocalCandidate,
    LocalCandidateInvalidated,
    PairState,
    Selected,
    Transmit,
    pair_priority,
)
from gateway_pkg.ice.candidate import Candidate, CandidateType, foundation, priority
from gateway_pkg.ice.stun import Address, Attr, Class, Method

GATEWAY = Credentials("gwuf", "gatewaypassword0123456")
CLIENT = Credentials("clnt", "clientpassword01234567")
DIRECT = "direct-v4"
DIRECT6 = "direct-v6"
RELAY = "relay-a"
GW_IP, CLIENT_IP, RELAY_IP = "192.0.2.1", "198.51.100.2", "203.0.113.9"
T0 = 1000.0


def cand(kind: CandidateType, ip: str, port: int, local_preference: int = 65535) -> Candidate:
    return Candidate(foundation(kind, ip), 1, "udp", priority(kind, local_preference), ip, port, kind)


GW_HOST = cand(CandidateType.HOST, GW_IP, 52625)
GW_RELAY = cand(CandidateType.RELAY, RELAY_IP, 50000)
CL_HOST = cand(CandidateType.HOST, CLIENT_IP, 40000)
CL_SRFLX = cand(CandidateType.SRFLX, "198.51.100.200", 41000)
CL_RELAY = cand(CandidateType.RELAY, "203.0.113.50", 42000)


def seeded(seed: int = 1) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


def new_agent(timings: IceTimings | None = None, *locals_: tuple[Candidate, object]) -> IceAgent:
    agent = IceAgent(GATEWAY, CLIENT, now=T0, timings=timings or IceTimings(), random_bytes=seeded())
    for candidate, via in locals_ or ((GW_HOST, DIRECT),):
        agent.add_local_candidate(candidate, via)
    agent.drain()
    return agent


def feed(agent: IceAgent, raw: bytes, source: Address, via: object, now: float) -> bool:
    return agent.handle(stun.decode(raw), raw, source, via, now)


@dataclass
class Client:
    """The controlling side: builds checks to the gateway and answers the gateway's checks."""

    rng: random.Random = field(default_factory=lambda: random.Random(7))
    tie_breaker: int = 0x1122334455667788

    def check(
        self,
        *,
        use_candidate: bool = False,
        prio: int | None = None,
        extra: tuple[tuple[int, bytes], ...] = (),
        username: str | None = None,
        key: str = GATEWAY.pwd,
        controlled: bool = False,
        fingerprint: bool = True,
    ) -> bytes:
        attrs: list[tuple[int, bytes]] = [
            (Attr.USERNAME, (username or f"{GATEWAY.ufrag}:{CLIENT.ufrag}").encode()),
            (Attr.PRIORITY, stun.encode_u32(prio if prio is not None else priority(CandidateType.PRFLX))),
            (Attr.ICE_CONTROLLED if controlled else Attr.ICE_CONTROLLING, stun.encode_u64(self.tie_breaker)),
        ]
        if use_candidate:
            attrs.append((Attr.USE_CANDIDATE, b""))
        attrs.extend(extra)
        message = stun.request(Method.BINDING, self.rng.randbytes(12), *attrs)
        return stun.encode(message, key=stun.short_term_key(key), fingerprint=fingerprint)

    def answer(
        self, transmit: Transmit, *, mapped: Address = (GW_IP, 52625), key: str = CLIENT.pwd, error: int | None = None
    ) -> bytes:
        request = stun.decode(transmit.data)
        assert request.cls == Class.REQUEST and request.method == Method.BINDING
        assert stun.verify_integrity(transmit.data, stun.short_term_key(CLIENT.pwd))
        if error is not None:
            response = stun.error_response(request, error, "nope")
        else:
            response = stun.success_response(
                request, (Attr.XOR_MAPPED_ADDRESS, stun.encode_xor_address(mapped, request.transaction_id))
            )
        return stun.encode(response, key=stun.short_term_key(key))


def requests(transmits: list[Transmit]) -> list[Transmit]:
    return [t for t in transmits if stun.decode(t.data).cls == Class.REQUEST]


def only(items: list[Transmit]) -> Transmit:
    assert len(items) == 1, items
    return items[0]


def connect(
    agent: IceAgent, client: Client, source: Address = CL_HOST.addr, via: object = DIRECT, now: float = T0
) -> Selected:
    """A nominating check from `source`, and the client's answer to the triggered check."""
    assert feed(agent, client.check(use_candidate=True), source, via, now)
    transmits, _ = agent.drain()
    check = only([t for t in requests(transmits) if t.destination == source and t.via == via])
    assert feed(agent, client.answer(check), source, via, now + 0.01)
    _, events = agent.drain()
    selected = [e for e in events if isinstance(e, Selected)]
    assert selected, events
    return selected[-1]


def run_until(
    agent: IceAgent, until: float, answer: Callable[[float, Transmit], None] | None = None
) -> tuple[list[tuple[float, Transmit]], list[IceEvent]]:
    """Drive tick() at each poll_timeout() up to `until`; `answer(now, transmit)` may reply."""
    sent: list[tuple[float, Transmit]] = []
    events: list[IceEvent] = []
    now = T0
    while True:
        deadline = agent.poll_timeout()
        if deadline is None or deadline > until:
            break
        now = max(now, deadline)
        agent.tick(now)
        transmits, new_events = agent.drain()
        events += new_events
        for transmit in transmits:
            sent.append((now, transmit))
            if answer is not None:
                answer(now, transmit)
                more, more_events = agent.drain()
                events += more_events
                sent += [(now, t) for t in more]
    return sent, events


# --- answering checks -----------------------------------------------------------------


def test_local_candidates_are_announced() -> None:
    agent = IceAgent(GATEWAY, CLIENT, now=T0, random_bytes=seeded())
    agent.add_local_candidate(GW_HOST, DIRECT)
    agent.add_local_candidate(GW_HOST, DIRECT)  # a repeat is ignored
    assert agent.drain() == ([], [LocalCandidate(GW_HOST)])
    assert agent.local_credentials == GATEWAY and agent.remote_credentials == CLIENT
    assert "pwd" not in repr(GATEWAY) and GATEWAY.pwd not in repr(GATEWAY)
    with pytest.raises(ValueError):
        agent.add_local_candidate(cand(CandidateType.PRFLX, GW_IP, 1), DIRECT)


def test_check_answered_prflx_learned_triggered_check_nominates() -> None:
    agent, client = new_agent(), Client()
    raw = client.check(use_candidate=True, prio=12345)
    assert feed(agent, raw, CL_HOST.addr, DIRECT, T0)
    transmits, events = agent.drain()
    assert events == []
    response, check = transmits
    # The Binding success: XOR-MAPPED-ADDRESS is the source, signed with our password, fingerprinted.
    assert (response.destination, response.via) == (CL_HOST.addr, DIRECT)
    message = stun.decode(response.data)
    assert message.cls == Class.SUCCESS and message.transaction_id == stun.decode(raw).transaction_id
    assert message.xor_address() == CL_HOST.addr
    assert stun.verify_integrity(response.data, stun.short_term_key(GATEWAY.pwd))
    assert stun.verify_fingerprint(response.data) is True
    # The peer-reflexive remote candidate takes the PRIORITY of the request.
    [(local, via, remote, state, nominated)] = agent.pairs()
    assert (local, via, remote.type, remote.priority, remote.addr) == (
        GW_HOST,
        DIRECT,
        CandidateType.PRFLX,
        12345,
        CL_HOST.addr,
    )
    assert state == PairState.IN_PROGRESS and not nominated
    # The triggered check: our USERNAME order, PRIORITY, ICE-CONTROLLED, integrity with their password.
    request = stun.decode(check.data)
    assert (check.destination, check.via) == (CL_HOST.addr, DIRECT)
    assert request.username() == f"{CLIENT.ufrag}:{GATEWAY.ufrag}"
    assert request.priority() == priority(CandidateType.PRFLX)
    assert request.ice_controlled() == agent.tie_breaker and request.ice_controlling() is None
    assert not request.use_candidate()
    assert stun.verify_integrity(check.data, stun.short_term_key(CLIENT.pwd))
    assert stun.verify_fingerprint(check.data) is True
    assert agent.owns(request.transaction_id) and agent.state == "checking" and agent.selected is None
    assert feed(agent, client.answer(check), CL_HOST.addr, DIRECT, T0 + 0.02)
    _, events = agent.drain()
    [selected] = events
    assert isinstance(selected, Selected)
    assert (selected.remote, selected.via, selected.local) == (CL_HOST.addr, DIRECT, GW_HOST)
    assert selected.remote_candidate.type == CandidateType.PRFLX
    assert agent.selected == selected and agent.state == "connected"
    assert not agent.owns(request.transaction_id)


def test_prflx_pairs_only_with_the_base_it_arrived_on() -> None:
    agent, client = new_agent(None, (GW_HOST, DIRECT), (GW_RELAY, RELAY)), Client()
    assert feed(agent, client.check(), CL_HOST.addr, DIRECT, T0)
    assert [(local, via) for local, via, _, _, _ in agent.pairs()] == [(GW_HOST, DIRECT)]
    agent.add_local_candidate(cand(CandidateType.HOST, "192.0.2.77", 52625), "other")
    assert len(agent.pairs()) == 1
    agent.add_remote_candidate(CL_HOST)  # signalled now: paired with every base
    assert {via for _, via, _, _, _ in agent.pairs()} == {DIRECT, RELAY, "other"}


def test_use_candidate_on_a_valid_pair_selects_at_once() -> None:
    agent, client = new_agent(), Client()
    agent.add_remote_candidate(CL_HOST)
    agent.tick(T0)
    check = only(agent.drain()[0])
    assert feed(agent, client.answer(check), CL_HOST.addr, DIRECT, T0 + 0.01)
    assert agent.drain() == ([], [])  # valid, not nominated: nothing selected
    assert agent.pairs()[0][3] == PairState.SUCCEEDED
    assert feed(agent, client.check(use_candidate=True), CL_HOST.addr, DIRECT, T0 + 0.1)
    transmits, events = agent.drain()
    assert [stun.decode(t.data).cls for t in transmits] == [Class.SUCCESS]  # no new check needed
    assert events == [Selected(CL_HOST.addr, DIRECT, GW_HOST, CL_HOST)]


def test_nomination_while_in_progress_completes_on_success() -> None:
    """The request cancels our in-progress check and triggers a new one; either answer nominates."""
    agent, client = new_agent(), Client()
    agent.add_remote_candidate(CL_HOST)
    agent.tick(T0)
    first = only(agent.drain()[0])
    assert feed(agent, client.check(use_candidate=True), CL_HOST.addr, DIRECT, T0 + 0.1)
    transmits, events = agent.drain()
    assert events == []
    second = only(requests(transmits))
    assert stun.decode(second.data).transaction_id != stun.decode(first.data).transaction_id
    # The first (cancelled) check is no longer retransmitted, but its late answer still counts.
    sent, _ = run_until(agent, T0 + 0.2)
    assert all(t.data != first.data for _, t in sent)
    assert feed(agent, client.answer(first), CL_HOST.addr, DIRECT, T0 + 0.3)
    assert agent.drain()[1] == [Selected(CL_HOST.addr, DIRECT, GW_HOST, CL_HOST)]


def test_signalled_candidate_replaces_learned_prflx() -> None:
    agent, client = new_agent(), Client()
    first = connect(agent, client)
    assert first.remote_candidate.type == CandidateType.PRFLX
    agent.add_remote_candidate(CL_HOST)
    assert agent.drain()[1] == [Selected(CL_HOST.addr, DIRECT, GW_HOST, CL_HOST)]
    [(_, _, remote, state, nominated)] = agent.pairs()
    assert remote == CL_HOST and state == PairState.SUCCEEDED and nominated
    agent.add_remote_candidate(CL_HOST)  # the same address again: ignored
    assert agent.drain() == ([], []) and len(agent.pairs()) == 1


def test_nomination_moves_to_a_higher_priority_pair_only() -> None:
    agent, client = new_agent(None, (GW_HOST, DIRECT), (GW_RELAY, RELAY)), Client()
    relay_peer = ("203.0.113.50", 42000)
    low = connect(agent, client, relay_peer, RELAY, T0)
    assert low.via == RELAY and low.local == GW_RELAY
    high = connect(agent, client, CL_HOST.addr, DIRECT, T0 + 1)
    assert high.via == DIRECT and high.local == GW_HOST and agent.selected == high
    # A later nomination of a lower-priority pair does not move the selection.
    assert feed(agent, client.check(use_candidate=True), relay_peer, RELAY, T0 + 2)
    assert agent.drain()[1] == [] and agent.selected == high


# --- ordinary checks and timers -------------------------------------------------------


def test_ordinary_checks_are_paced_in_priority_order() -> None:
    agent = new_agent()
    for remote in (CL_RELAY, CL_HOST, CL_SRFLX):
        agent.add_remote_candidate(remote)
    priorities = [pair_priority(r.priority, GW_HOST.priority) for _, _, r, _, _ in agent.pairs()]
    assert priorities == sorted(priorities, reverse=True)
    assert agent.poll_timeout() == T0
    order = []
    for now in (T0, T0 + 0.01, T0 + 0.05, T0 + 0.07, T0 + 0.10):
        agent.tick(now)
        order += [(now, t.destination) for t in requests(agent.drain()[0])]
    assert order == [(T0, CL_HOST.addr), (T0 + 0.05, CL_SRFLX.addr), (T0 + 0.10, CL_RELAY.addr)]


def test_timings_are_checked() -> None:
    with pytest.raises(ValueError):
        IceTimings(pacing=0)
    with pytest.raises(ValueError):
        IceTimings(initial_rto=2.0)
    with pytest.raises(ValueError):
        IceTimings(idle_retransmits=-1)


def test_pair_priority_formula() -> None:
    # RFC 8445 §6.1.2.3: 2^32*MIN(G,D) + 2*MAX(G,D) + (G>D?1:0), G the controlling side's.
    assert pair_priority(10, 20) == (10 << 32) + 40
    assert pair_priority(20, 10) == (10 << 32) + 41


def test_retransmits_follow_the_rto_schedule_then_the_pair_fails() -> None:
    agent = new_agent()
    agent.add_remote_candidate(CL_HOST)
    sent, events = run_until(agent, T0 + 60)
    times = [round(now - T0, 3) for now, _ in sent]
    expected, t, rto = [0.0], 0.0, 0.25
    for _ in range(12):
        t += rto
        expected.append(round(t, 3))
        rto = min(rto * 2, 1.5)
    assert times == expected
    assert len({t.data for _, t in sent}) == 1  # retransmits repeat the same transaction
    assert agent.pairs()[0][3] == PairState.FAILED
    assert events == [Disconnected("no candidate pair nominated within 20 s")]
    assert agent.state == "disconnected" and agent.poll_timeout() is None


def test_candidate_timeout_without_any_remote_candidate() -> None:
    agent = new_agent()
    assert agent.poll_timeout() == T0 + 10
    agent.tick(T0 + 9.9)
    assert agent.drain() == ([], [])
    agent.tick(T0 + 10)
    assert agent.drain()[1] == [Disconnected("no remote candidate within 10 s")]


def test_after_disconnect_nothing_is_sent() -> None:
    agent, client = new_agent(), Client()
    agent.tick(T0 + 10)
    agent.drain()
    assert feed(agent, client.check(use_candidate=True), CL_HOST.addr, DIRECT, T0 + 11)  # consumed
    agent.add_remote_candidate(CL_HOST)
    agent.add_local_candidate(GW_RELAY, RELAY)
    agent.tick(T0 + 12)
    assert agent.drain() == ([], []) and agent.poll_timeout() is None


def test_consent_checks_keep_the_pair() -> None:
    agent, client = new_agent(), Client()
    connect(agent, client)

    def answer(now: float, transmit: Transmit) -> None:
        assert not stun.decode(transmit.data).use_candidate()
        assert stun.decode(transmit.data).ice_controlled() == agent.tie_breaker
        assert feed(agent, client.answer(transmit), transmit.destination, transmit.via, now + 0.02)

    sent, events = run_until(agent, T0 + 200, answer)
    consent_times = [round(now - T0, 2) for now, _ in sent]
    assert consent_times == [25.01, 50.01, 75.01, 100.01, 125.01, 150.01, 175.01]
    assert events == [] and agent.state == "connected"


def test_consent_loss_then_disconnected_after_the_grace_period() -> None:
    agent, client = new_agent(), Client()
    connect(agent, client)
    sent, events = run_until(agent, T0 + 100)
    times = [round(now - T0, 2) for now, _ in sent]
    assert times == [25.01, 25.26, 25.76, 26.76, 28.26]  # idle_retransmits = 4
    assert events == [Disconnected("consent lost and no other nominated pair")]
    assert agent.selected is None and agent.state == "disconnected"


def test_consent_expires_30_s_after_the_last_response() -> None:
    timings = IceTimings(idle_interval=28.0, idle_retransmits=10)
    agent, client = new_agent(timings), Client()
    connect(agent, client)  # last response at T0 + 0.01
    agent.tick(T0 + 30.0)
    assert agent.selected is not None
    agent.tick(T0 + 30.01)
    assert agent.selected is None and agent.state == "checking"
    agent.tick(T0 + 32.01)
    assert agent.drain()[1] == [Disconnected("consent lost and no other nominated pair")]


def test_consent_loss_moves_to_another_nominated_pair() -> None:
    agent, client = new_agent(None, (GW_HOST, DIRECT), (GW_RELAY, RELAY)), Client()
    relay_peer = ("203.0.113.50", 42000)
    connect(agent, client, relay_peer, RELAY, T0)
    connect(agent, client, CL_HOST.addr, DIRECT, T0 + 0.1)

    def answer_relay_only(now: float, transmit: Transmit) -> None:
        if transmit.via == RELAY:
            assert feed(agent, client.answer(transmit), transmit.destination, RELAY, now)

    _, events = run_until(agent, T0 + 100, answer_relay_only)
    assert len(events) == 1 and isinstance(events[0], Selected)
    assert events[0] == Selected(relay_peer, RELAY, GW_RELAY, events[0].remote_candidate)
    assert agent.state == "connected"


def test_renomination_within_the_grace_period_keeps_the_connection() -> None:
    agent, client = new_agent(None, (GW_HOST, DIRECT), (GW_RELAY, RELAY)), Client()
    connect(agent, client, ("203.0.113.50", 42000), RELAY, T0)
    agent.remove_local_candidates(RELAY)
    assert agent.drain()[1] == [LocalCandidateInvalidated(GW_RELAY)]
    assert agent.selected is None and agent.state == "checking"
    assert all(via == DIRECT for _, via, _, _, _ in agent.pairs())
    selected = connect(agent, client, CL_HOST.addr, DIRECT, T0 + 1)
    assert selected.via == DIRECT
    run_until(agent, T0 + 5)
    assert agent.state == "connected"


def test_relay_removal_fails_its_pairs_and_disconnects() -> None:
    agent, client = new_agent(None, (GW_RELAY, RELAY)), Client()
    connect(agent, client, ("203.0.113.50", 42000), RELAY, T0)
    agent.remove_local_candidates(RELAY)
    agent.remove_local_candidates(RELAY)  # twice: nothing more
    assert agent.drain()[1] == [LocalCandidateInvalidated(GW_RELAY)]
    assert agent.pairs() == []
    agent.tick(T0 + 2.0)  # the grace period counts from the last time seen (T0 + 0.01)
    assert agent.drain() == ([], []) and agent.poll_timeout() == T0 + 2.01
    agent.tick(T0 + 2.01)
    assert agent.drain()[1] == [Disconnected("consent lost and no other nominated pair")]


def test_remote_candidate_removal_drops_its_pairs() -> None:
    agent = new_agent()
    agent.add_remote_candidate(CL_HOST)
    agent.add_remote_candidate(CL_SRFLX)
    agent.tick(T0)
    tid = stun.decode(only(agent.drain()[0]).data).transaction_id
    agent.remove_remote_candidate(CL_HOST)
    assert [r for _, _, r, _, _ in agent.pairs()] == [CL_SRFLX]
    assert not agent.owns(tid)
    agent.remove_remote_candidate(CL_HOST)  # unknown: ignored


def test_srflx_pairs_use_their_base() -> None:
    srflx = Candidate(
        foundation(CandidateType.SRFLX, GW_IP, "relay"),
        1,
        "udp",
        priority(CandidateType.SRFLX),
        "192.0.2.200",
        60000,
        CandidateType.SRFLX,
        GW_IP,
        52625,
    )
    agent = IceAgent(GATEWAY, CLIENT, now=T0, random_bytes=seeded())
    agent.add_local_candidate(GW_HOST, DIRECT)
    agent.add_local_candidate(srflx, DIRECT)
    assert agent.drain()[1] == [LocalCandidate(GW_HOST), LocalCandidate(srflx)]
    agent.add_remote_candidate(CL_HOST)
    assert [(local, via) for local, via, _, _, _ in agent.pairs()] == [(GW_HOST, DIRECT)]
    # A srflx alone on its via pairs as a host candidate at its related address.
    lonely = IceAgent(GATEWAY, CLIENT, now=T0, random_bytes=seeded())
    lonely.add_local_candidate(srflx, DIRECT)
    lonely.add_remote_candidate(CL_HOST)
    [(local, via, _, _, _)] = lonely.pairs()
    assert (local.type, local.addr, via) == (CandidateType.HOST, (GW_IP, 52625), DIRECT)


def test_pairs_only_within_one_address_family() -> None:
    gw6 = cand(CandidateType.HOST, "2001:db8::1", 52625)
    agent = new_agent(None, (GW_HOST, DIRECT), (gw6, DIRECT6))
    agent.add_remote_candidate(cand(CandidateType.HOST, "2001:db8::2", 4000))
    agent.add_remote_candidate(cand(CandidateType.HOST, "0.0.0.0", 4000))  # unspecified: ignored
    assert [(via, r.address) for _, via, r, _, _ in agent.pairs()] == [(DIRECT6, "2001:db8::2")]


def test_pair_and_remote_candidate_limits() -> None:
    agent = new_agent()
    for index in range(150):
        agent.add_remote_candidate(cand(CandidateType.HOST, f"198.51.100.{index % 250}", 1000 + index))
    assert len(agent.pairs()) == MAX_PAIRS


def test_frozen_pairs_of_one_foundation() -> None:
    agent = new_agent()
    agent.add_remote_candidate(CL_HOST)
    twin = Candidate(CL_HOST.foundation, 1, "udp", CL_HOST.priority - 1, CLIENT_IP, 40001, CandidateType.HOST)
    agent.add_remote_candidate(twin)
    assert [s for _, _, _, s, _ in agent.pairs()] == [PairState.WAITING, PairState.FROZEN]
    agent.tick(T0)
    check = only(agent.drain()[0])
    assert feed(agent, Client().answer(check), CL_HOST.addr, DIRECT, T0 + 0.01)
    assert [s for _, _, _, s, _ in agent.pairs()] == [PairState.SUCCEEDED, PairState.WAITING]


# --- roles, errors and bad messages ---------------------------------------------------


def test_ice_controlled_request_gets_487_and_we_stay_controlled() -> None:
    agent, client = new_agent(), Client()
    raw = client.check(controlled=True, use_candidate=True)
    assert feed(agent, raw, CL_HOST.addr, DIRECT, T0)
    transmits, events = agent.drain()
    reply = stun.decode(only(transmits).data)
    assert reply.cls == Class.ERROR and reply.error() == (stun.ROLE_CONFLICT, "Role Conflict")
    assert stun.verify_integrity(only(transmits).data, stun.short_term_key(GATEWAY.pwd))
    assert events == [] and agent.pairs() == []
    # Our checks still say ICE-CONTROLLED.
    agent.add_remote_candidate(CL_HOST)
    agent.tick(T0)
    assert stun.decode(only(agent.drain()[0]).data).ice_controlled() == agent.tie_breaker


def test_487_to_our_check_retries_as_controlled() -> None:
    agent, client = new_agent(), Client()
    agent.add_remote_candidate(CL_HOST)
    agent.tick(T0)
    check = only(agent.drain()[0])
    assert feed(agent, client.answer(check, error=stun.ROLE_CONFLICT), CL_HOST.addr, DIRECT, T0 + 0.01)
    retry = only(agent.drain()[0])
    assert stun.decode(retry.data).transaction_id != stun.decode(check.data).transaction_id
    assert stun.decode(retry.data).ice_controlled() == agent.tie_breaker
    assert agent.pairs()[0][3] == PairState.IN_PROGRESS
    # Other errors fail the pair.
    assert feed(agent, client.answer(retry, error=stun.BAD_REQUEST), CL_HOST.addr, DIRECT, T0 + 0.02)
    assert agent.pairs()[0][3] == PairState.FAILED


def test_endless_487s_fail_the_pair() -> None:
    agent, client = new_agent(), Client()
    agent.add_remote_candidate(CL_HOST)
    agent.tick(T0)
    check = only(agent.drain()[0])
    for index in range(10):
        feed(agent, client.answer(check, error=stun.ROLE_CONFLICT), CL_HOST.addr, DIRECT, T0 + index)
        transmits = agent.drain()[0]
        if not transmits:
            break
        check = only(transmits)
    assert agent.pairs()[0][3] == PairState.FAILED


def test_unknown_comprehension_required_attribute_gets_420() -> None:
    agent, client = new_agent(), Client()
    raw = client.check(extra=((0x0777, b"abcd"), (0x8777, b"ok")))
    assert feed(agent, raw, CL_HOST.addr, DIRECT, T0)
    reply = stun.decode(only(agent.drain()[0]).data)
    assert reply.error() == (stun.UNKNOWN_ATTRIBUTE, "Unknown Attribute")
    assert reply.unknown_attributes() == [0x0777]


def test_request_without_priority_gets_400() -> None:
    agent = new_agent()
    message = stun.request(Method.BINDING, bytes(12), (Attr.USERNAME, f"{GATEWAY.ufrag}:{CLIENT.ufrag}".encode()))
    raw = stun.encode(message, key=stun.short_term_key(GATEWAY.pwd))
    assert feed(agent, raw, CL_HOST.addr, DIRECT, T0)
    assert stun.decode(only(agent.drain()[0]).data).error() == (stun.BAD_REQUEST, "PRIORITY missing")
    assert agent.pairs() == []


def test_bad_requests_are_dropped_and_counted() -> None:
    agent, client = new_agent(), Client()
    good = client.check()
    bad_fingerprint = good[:-1] + bytes([good[-1] ^ 1])
    bad_integrity = client.check(key="wrongpassword000000000")
    no_integrity = stun.encode(stun.decode(good))
    wrong_peer = client.check(username=f"{GATEWAY.ufrag}:someone")
    cases = [
        (bad_fingerprint, "bad_fingerprint"),
        (bad_integrity, "bad_integrity"),
        (no_integrity, "missing_integrity"),
        (wrong_peer, "unknown_username"),
    ]
    for raw, reason in cases:
        assert feed(agent, raw, CL_HOST.addr, DIRECT, T0), reason
        assert agent.dropped[reason] == 1, reason
    # A PRIORITY of the wrong length is malformed.
    short = stun.request(
        Method.BINDING,
        bytes(12),
        (Attr.USERNAME, f"{GATEWAY.ufrag}:{CLIENT.ufrag}".encode()),
        (Attr.PRIORITY, b"\x01"),
        (Attr.ICE_CONTROLLING, stun.encode_u64(1)),
    )
    assert feed(agent, stun.encode(short, key=stun.short_term_key(GATEWAY.pwd)), CL_HOST.addr, DIRECT, T0)
    assert agent.dropped["malformed"] == 1
    assert set(agent.dropped) <= set(DROP_REASONS)
    assert agent.drain() == ([], [])  # none of them answered
    # Someone else's ufrag, indications and other methods are not ours: not counted.
    other = client.check(username="other:clnt")
    assert not feed(agent, other, CL_HOST.addr, DIRECT, T0)
    indication = stun.encode(stun.indication(Method.BINDING, bytes(12)))
    assert not feed(agent, indication, CL_HOST.addr, DIRECT, T0)
    allocate = stun.encode(stun.request(Method.ALLOCATE, bytes(12)))
    assert not feed(agent, allocate, CL_HOST.addr, DIRECT, T0)
    assert sum(agent.dropped.values()) == 5


def test_bad_responses_are_dropped_and_the_transaction_kept() -> None:
    agent, client = new_agent(), Client()
    agent.add_remote_candidate(CL_HOST)
    agent.tick(T0)
    check = only(agent.drain()[0])
    tid = stun.decode(check.data).transaction_id
    forged = client.answer(check, key=GATEWAY.pwd)  # signed with the wrong password
    assert feed(agent, forged, CL_HOST.addr, DIRECT, T0 + 0.01)
    unsigned = stun.encode(stun.error_response(stun.decode(check.data), stun.UNAUTHORIZED, "no"))
    assert feed(agent, unsigned, CL_HOST.addr, DIRECT, T0 + 0.01)
    genuine = client.answer(check)
    assert feed(agent, genuine, ("198.51.100.99", 40000), DIRECT, T0 + 0.02)  # wrong source
    assert feed(agent, genuine, CL_HOST.addr, RELAY, T0 + 0.02)  # wrong via
    assert feed(agent, genuine[:-1] + bytes([genuine[-1] ^ 1]), CL_HOST.addr, DIRECT, T0 + 0.02)
    assert dict(agent.dropped) == {
        "bad_integrity": 1,
        "missing_integrity": 1,
        "unexpected_source": 2,
        "bad_fingerprint": 1,
    }
    assert agent.owns(tid) and agent.pairs()[0][3] == PairState.IN_PROGRESS
    assert feed(agent, genuine, CL_HOST.addr, DIRECT, T0 + 0.03)
    assert agent.pairs()[0][3] == PairState.SUCCEEDED
    # A response to no transaction of ours is not ours.
    assert not feed(agent, genuine, CL_HOST.addr, DIRECT, T0 + 0.04)


# --- nothing a network sends makes it raise --------------------------------------------

SOURCES = st.sampled_from([CL_HOST.addr, ("198.51.100.7", 1), ("2001:db8::9", 5), (RELAY_IP, 3478)])
VIAS = st.sampled_from([DIRECT, DIRECT6, RELAY, "unknown"])
ATTRIBUTE = st.tuples(
    st.sampled_from([int(a) for a in Attr] + [0x0777, 0x8777]),
    st.binary(max_size=24),
)


@st.composite
def stunish(draw: st.DrawFn) -> bytes:
    """Random bytes, random messages, and messages with our username and valid integrity."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.binary(max_size=120))
    attrs = draw(st.lists(ATTRIBUTE, max_size=6))
    cls = draw(st.sampled_from(Class))
    method = draw(st.sampled_from([Method.BINDING, Method.BINDING, Method.ALLOCATE, 0xFFF]))
    tid = draw(st.binary(min_size=12, max_size=12))
    if kind == 2:
        username = draw(st.sampled_from([f"{GATEWAY.ufrag}:{CLIENT.ufrag}", f"{GATEWAY.ufrag}:x", "x:y", ""]))
        attrs = [(Attr.USERNAME, username.encode()), *attrs]
    key = draw(st.sampled_from([None, GATEWAY.pwd, CLIENT.pwd]))
    try:
        return stun.encode(
            stun.Message(cls, method, tid, tuple(attrs)),
            key=None if key is None else stun.short_term_key(key),
            fingerprint=draw(st.booleans()),
        )
    except stun.StunError:
        return b""


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.tuples(stunish(), SOURCES, VIAS, st.floats(0, 60)), max_size=12))
def test_random_stun_never_raises(datagrams: list[tuple[bytes, Address, object, float]]) -> None:
    agent = new_agent(None, (GW_HOST, DIRECT), (GW_RELAY, RELAY))
    agent.add_remote_candidate(CL_HOST)
    agent.tick(T0)
    now = T0
    for data, source, via, delta in datagrams:
        now = max(now, T0 + delta)
        if stun.is_stun(data):
            try:
                message = stun.decode(data)
            except stun.StunError:
                continue
            agent.handle(message, data, source, via, now)
        # Also echo our own requests back as answers, to reach the response paths.
        for transmit in agent.drain()[0]:
            reply = stun.decode(transmit.data)
            if reply.cls == Class.REQUEST:
                answer = stun.encode(stun.success_response(reply), key=stun.short_term_key(CLIENT.pwd))
                agent.handle(stun.decode(answer), answer, transmit.destination, transmit.via, now)
        agent.tick(now)
        deadline = agent.poll_timeout()
        assert deadline is None or deadline >= T0
    assert set(agent.dropped) <= set(DROP_REASONS)
