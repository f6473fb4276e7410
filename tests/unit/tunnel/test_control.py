"""Client control without sockets: portal messages and p2p events in, effects out.

Each rule of `gateway_pkg.tunnel.control` has a test here, asserting what the portal, the
client or a packet would see; a state machine then runs random message sequences and checks
that the client table, its indexes and the WireGuard peers stay consistent.
"""

from __future__ import annotations

import ipaddress
import itertools

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gateway_pkg.portal import messages
from gateway_pkg.resources import CidrResource, DnsResource, Filter
from gateway_pkg.tunnel import p2p_control
from gateway_pkg.tunnel.control import (
    AddPeer,
    ClientControl,
    ConnectIce,
    CountDrop,
    DisconnectIce,
    RemoteCandidates,
    RemovePeer,
    ReplyToPortal,
    Resolve,
    SendToPeer,
    SetTunAddresses,
    UpdateRelays,
)
from gateway_pkg.tunnel.policy import Action
from tests.packets import build_udp

NOW = 1_700_000_000.0
KEYS = [bytes([n]) * 32 for n in range(1, 6)]
PSK = b"\x09" * 32
CIDR = CidrResource("res-cidr", ipaddress.ip_network("10.9.0.0/24"), "cidr")
CIDR_UDP_53 = CidrResource("res-cidr", ipaddress.ip_network("10.9.0.0/24"), "cidr", (Filter("udp", 53, 53),))
DNS = DnsResource("res-dns", "*.corp.test", "dns")
OTHER = CidrResource("res-other", ipaddress.ip_network("10.8.0.0/24"), "other")
PROXY = (ipaddress.ip_address("100.96.0.1"),)
REAL = [ipaddress.ip_address("10.9.0.7")]
GOODBYE = p2p_control.encode_goodbye()


def client_info(client_id: str = "c1", key: bytes = KEYS[0], n: int = 2, psk: bytes = PSK) -> messages.FlowClient:
    return messages.FlowClient(client_id, key, psk, ipaddress.IPv4Address(f"100.64.0.{n}"),
                               ipaddress.IPv6Address(f"fd00:2021:1111::{n}"))


def authorize(resource=CIDR, client=None, ref: str = "r1", expires_at=None) -> messages.AuthorizeFlow:
    return messages.AuthorizeFlow(ref, resource, client or client_info(), None, None, expires_at)


def request_connection(resource=CIDR, client=None, domain: str | None = None, ref: str = "r1"):
    payload = messages.DomainPayload(domain, PROXY) if domain else None
    return messages.RequestConnection(ref, resource, client or client_info(), None, payload, None, None)


def allow_access(resource=DNS, client_id: str = "c1", domain: str | None = "app.corp.test"):
    payload = messages.DomainPayload(domain, PROXY) if domain else None
    return messages.AllowAccess("r2", client_id, resource, None, payload, None, None)


def init(*authorizations: tuple[str, str, int | None]) -> messages.Init:
    interface = messages.Interface(ipaddress.IPv4Address("100.64.0.1"), ipaddress.IPv6Address("fd00:2021:1111::1"))
    auths = tuple(messages.Authorization(c, r, e) for c, r, e in authorizations)
    return messages.Init(interface, None, (), auths)


def to(address: str, port: int = 53, client: int = 2) -> bytes:
    """A UDP packet from the client to `address`, as it leaves the client's tunnel."""
    return build_udp(f"100.64.0.{client}", address, 40000, port, b"q")


def reaches(control: ClientControl, client_id: str, packet: bytes) -> bool:
    client = control.clients.get(client_id)
    return client is not None and client.policy.check_outbound(packet, NOW).action == Action.FORWARD


def of(effects, kind):
    return [e for e in effects if isinstance(e, kind)]


def fixed_random(n: int) -> bytes:
    return bytes(range(n))


ICE_EFFECTS = (ConnectIce, DisconnectIce, RemoteCandidates, UpdateRelays)


def peer_effects(effects):
    """What the WireGuard device and the client see, without the ICE bookkeeping."""
    return [e for e in effects if not isinstance(e, ICE_EFFECTS)]


# --- authorize_flow (1.4) ------------------------------------------------------------------


def test_authorize_flow_adds_the_peer_answers_and_lets_packets_through():
    control = ClientControl()
    effects = control.handle(authorize(), NOW)
    assert effects == [AddPeer(KEYS[0], PSK), ReplyToPortal("flow_authorized", {"ref": "r1"})]
    assert reaches(control, "c1", to("10.9.0.7"))
    assert not reaches(control, "c1", to("10.8.0.7"))
    assert control.by_key[KEYS[0]] is control.clients["c1"]
    assert control.by_address[ipaddress.ip_address("100.64.0.2").packed] is control.clients["c1"]


def test_unchanged_authorize_flow_keeps_the_connection():
    control = ClientControl()
    control.handle(authorize(), NOW)
    first = control.clients["c1"]
    effects = control.handle(authorize(OTHER, ref="r2"), NOW)
    assert of(effects, RemovePeer) == [] and control.clients["c1"] is first
    assert reaches(control, "c1", to("10.9.0.7")) and reaches(control, "c1", to("10.8.0.7"))


def test_a_key_change_drops_the_old_client_without_goodbye():
    control = ClientControl()
    control.handle(authorize(CIDR), NOW)
    effects = control.handle(authorize(OTHER, client=client_info(key=KEYS[1])), NOW)
    # The old session goes first, silently (the client already holds the new keys).
    assert peer_effects(effects)[:2] == [RemovePeer(KEYS[0]), AddPeer(KEYS[1], PSK)]
    assert of(effects, SendToPeer) == []
    assert KEYS[0] not in control.by_key and control.by_key[KEYS[1]] is control.clients["c1"]
    # ... and its policy with it: the new connection reaches only what it was authorized for.
    assert not reaches(control, "c1", to("10.9.0.7")) and reaches(control, "c1", to("10.8.0.7"))


def test_a_new_preshared_key_is_a_new_connection_too():
    control = ClientControl()
    control.handle(authorize(CIDR), NOW)
    effects = control.handle(authorize(OTHER, client=client_info(psk=b"\x07" * 32)), NOW)
    assert peer_effects(effects)[:2] == [RemovePeer(KEYS[0]), AddPeer(KEYS[0], b"\x07" * 32)]
    assert not reaches(control, "c1", to("10.9.0.7"))


def test_a_key_taken_over_by_another_client_id_leaves_one_peer():
    control = ClientControl()
    control.handle(authorize(CIDR, client=client_info("c1", KEYS[0], 2)), NOW)
    effects = control.handle(authorize(OTHER, client=client_info("c2", KEYS[0], 3)), NOW)
    assert peer_effects(effects)[:2] == [RemovePeer(KEYS[0]), AddPeer(KEYS[0], PSK)]
    assert list(control.clients) == ["c2"] and control.by_key[KEYS[0]] is control.clients["c2"]


# --- init --------------------------------------------------------------------------------


def test_init_sets_the_tun_addresses():
    effects = ClientControl().handle(init(), NOW)
    assert effects == [SetTunAddresses(ipaddress.IPv4Address("100.64.0.1"),
                                       ipaddress.IPv6Address("fd00:2021:1111::1"))]


def test_init_reconciles_authorizations():
    control = ClientControl()
    control.handle(authorize(CIDR, client=client_info("c1", KEYS[0], 2)), NOW)
    control.handle(authorize(OTHER, client=client_info("c1", KEYS[0], 2)), NOW)
    control.handle(authorize(CIDR, client=client_info("c2", KEYS[1], 3)), NOW)
    effects = control.handle(init(("c1", "res-cidr", int(NOW) + 5)), NOW)
    # c1 keeps what init lists, with init's expiry; the rest of its resources go.
    assert reaches(control, "c1", to("10.9.0.7")) and not reaches(control, "c1", to("10.8.0.7"))
    assert peer_effects(control.expire(NOW + 6)) == [SendToPeer(KEYS[0], GOODBYE), RemovePeer(KEYS[0])]
    # c2 is listed nowhere: told goodbye, then removed.
    assert peer_effects(effects)[1:] == [SendToPeer(KEYS[1], GOODBYE), RemovePeer(KEYS[1])]
    assert "c2" not in control.clients and KEYS[1] not in control.by_key


# --- request_connection (1.3) -------------------------------------------------------------


def test_request_connection_without_a_domain_answers_at_once():
    control = ClientControl(random_bytes=fixed_random)
    effects = control.handle(request_connection(CIDR), NOW)
    assert effects[0] == AddPeer(KEYS[0], PSK)
    (reply,) = of(effects, ReplyToPortal)
    assert reply.event == "connection_ready" and reply.payload["ref"] == "r1"
    ice = reply.payload["gateway_payload"]["ConnectionAccepted"]["ice_parameters"]
    assert ice == {"username": fixed_random(4).hex(), "password": fixed_random(11).hex()}
    assert reaches(control, "c1", to("10.9.0.7"))


def test_request_connection_for_a_name_resolves_first_then_installs_the_nat():
    control = ClientControl()
    effects = control.handle(request_connection(DNS, domain="app.corp.test"), NOW)
    assert effects == [Resolve("app.corp.test", effects[0].request)]
    assert control.clients == {} and control.pending_resolutions == 1
    done = control.resolved(effects[0].request, REAL, NOW)
    assert done[0] == AddPeer(KEYS[0], PSK) and of(done, ReplyToPortal)[0].event == "connection_ready"
    # The proxy IP now leads to the resolved address.
    verdict = control.clients["c1"].policy.check_outbound(to("100.96.0.1"), NOW)
    assert verdict.action == Action.FORWARD and verdict.packet is not None
    assert bytes(verdict.packet[16:20]) == REAL[0].packed


def test_request_connection_whose_name_does_not_resolve_gets_no_reply():
    control = ClientControl()
    (resolve,) = control.handle(request_connection(DNS, domain="gone.corp.test"), NOW)
    assert control.resolved(resolve.request, None, NOW) == []
    assert control.clients == {} and control.by_key == {} and control.pending_resolutions == 0


def test_resolution_results_are_used_once():
    control = ClientControl()
    (resolve,) = control.handle(request_connection(DNS, domain="app.corp.test"), NOW)
    assert control.resolved(resolve.request, REAL, NOW)
    assert control.resolved(resolve.request, REAL, NOW) == []


def test_too_many_resolutions_at_once_fail_the_newest():
    control = ClientControl(max_pending_resolutions=2)
    for n in range(2):
        control.handle(request_connection(DNS, client=client_info(f"c{n}", KEYS[n], n + 2), domain="a.corp.test"), NOW)
    effects = control.handle(request_connection(DNS, client=client_info("c9", KEYS[4], 9), domain="a.corp.test"), NOW)
    assert effects == [CountDrop("dns_overload")]  # and, as a failed resolution, no reply
    assert control.pending_resolutions == 2


# --- allow_access (1.3) -------------------------------------------------------------------


def test_allow_access_for_a_name_adds_the_resource_after_resolution():
    control = ClientControl()
    control.handle(request_connection(CIDR), NOW)
    (resolve,) = control.handle(allow_access(DNS), NOW)
    assert not control.clients["c1"].policy.has_resource("res-dns")
    assert control.resolved(resolve.request, REAL, NOW) == []  # allow_access has no reply
    assert reaches(control, "c1", to("100.96.0.1"))


def test_allow_access_carries_on_without_addresses_when_resolution_fails():
    control = ClientControl()
    control.handle(request_connection(CIDR), NOW)
    (resolve,) = control.handle(allow_access(DNS), NOW)
    control.resolved(resolve.request, None, NOW)
    assert control.clients["c1"].policy.has_resource("res-dns")
    assert not reaches(control, "c1", to("100.96.0.1"))


def test_allow_access_racing_the_clients_removal_changes_nothing():
    control = ClientControl()
    control.handle(request_connection(CIDR), NOW)
    (resolve,) = control.handle(allow_access(DNS), NOW)
    control.handle(messages.RejectAccess("c1", "res-cidr"), NOW)  # last resource: removed
    assert control.resolved(resolve.request, REAL, NOW) == []
    assert control.clients == {} and control.by_key == {} and control.by_address == {}


def test_allow_access_racing_a_reconnection_does_not_leak_into_the_new_connection():
    control = ClientControl()
    control.handle(request_connection(CIDR), NOW)
    (resolve,) = control.handle(allow_access(DNS), NOW)
    control.handle(request_connection(OTHER, client=client_info(key=KEYS[1])), NOW)
    control.resolved(resolve.request, REAL, NOW)
    assert not control.clients["c1"].policy.has_resource("res-dns")


def test_allow_access_for_an_unknown_client_is_ignored():
    control = ClientControl()
    assert control.handle(allow_access(CIDR, domain=None), NOW) == []
    assert control.clients == {}


# --- reject_access, resource_updated, expiry -----------------------------------------------


def test_rejecting_one_of_two_resources_keeps_the_client():
    control = ClientControl()
    control.handle(authorize(CIDR), NOW)
    control.handle(authorize(OTHER), NOW)
    assert control.handle(messages.RejectAccess("c1", "res-other"), NOW) == []
    assert reaches(control, "c1", to("10.9.0.7")) and not reaches(control, "c1", to("10.8.0.7"))


def test_removing_the_last_resource_says_goodbye_before_removing_the_peer():
    control = ClientControl()
    control.handle(authorize(CIDR), NOW)
    effects = control.handle(messages.RejectAccess("c1", "res-cidr"), NOW)
    assert peer_effects(effects) == [SendToPeer(KEYS[0], GOODBYE), RemovePeer(KEYS[0])]
    assert p2p_control.decode(effects[0].packet) == p2p_control.Goodbye()
    assert control.clients == {} and control.by_key == {} and control.by_address == {}


def test_resource_updated_changes_the_filters_of_every_holder():
    control = ClientControl()
    control.handle(authorize(CIDR, client=client_info("c1", KEYS[0], 2)), NOW)
    control.handle(authorize(CIDR, client=client_info("c2", KEYS[1], 3)), NOW)
    assert reaches(control, "c1", to("10.9.0.7", port=80))
    control.handle(messages.ResourceUpdated(CIDR_UDP_53), NOW)
    for client_id, n in (("c1", 2), ("c2", 3)):
        assert not reaches(control, client_id, to("10.9.0.7", port=80, client=n))
        assert reaches(control, client_id, to("10.9.0.7", port=53, client=n))


def test_authorizations_expire_and_the_expiry_can_be_moved():
    control = ClientControl()
    control.handle(authorize(CIDR, expires_at=int(NOW) + 10), NOW)
    control.handle(messages.AccessAuthorizationExpiryUpdated("c1", "res-cidr", int(NOW) + 100), NOW)
    assert control.expire(NOW + 50) == [] and reaches(control, "c1", to("10.9.0.7"))
    assert peer_effects(control.expire(NOW + 100)) == [SendToPeer(KEYS[0], GOODBYE), RemovePeer(KEYS[0])]


def test_shutdown_says_goodbye_to_everyone():
    control = ClientControl()
    control.handle(authorize(CIDR, client=client_info("c1", KEYS[0], 2)), NOW)
    control.handle(authorize(CIDR, client=client_info("c2", KEYS[1], 3)), NOW)
    assert peer_effects(control.goodbye_all()) == [SendToPeer(KEYS[0], GOODBYE), RemovePeer(KEYS[0]),
                                      SendToPeer(KEYS[1], GOODBYE), RemovePeer(KEYS[1])]
    assert control.clients == {}


def test_ice_messages_are_ignored_until_nat_traversal_exists():
    control = ClientControl()
    assert control.handle(messages.IceCandidates("c1", ("candidate:1 1 udp 1 192.0.2.1 1 typ host",)), NOW) == []


# --- p2p control (1.4 AssignedIps) ---------------------------------------------------------


def assigned(resource: str = "res-dns", domain: str = "app.corp.test") -> bytes:
    return p2p_control.encode_assigned_ips(resource, domain, list(PROXY))


def test_assigned_ips_resolve_then_answer_active_in_band():
    control = ClientControl()
    control.handle(authorize(DNS), NOW)
    client = control.clients["c1"]
    (resolve,) = control.p2p_control(client, assigned(), NOW)
    (answer,) = control.resolved(resolve.request, REAL, NOW)
    assert answer.public_key == KEYS[0]
    assert p2p_control.decode(answer.packet) == p2p_control.DomainStatus("res-dns", "app.corp.test", True)
    assert reaches(control, "c1", to("100.96.0.1"))


def test_assigned_ips_for_an_unauthorized_resource_answer_inactive_at_once():
    control = ClientControl()
    control.handle(authorize(CIDR), NOW)
    (answer,) = control.p2p_control(control.clients["c1"], assigned(), NOW)
    assert p2p_control.decode(answer.packet) == p2p_control.DomainStatus("res-dns", "app.corp.test", False)


def test_assigned_ips_whose_name_does_not_resolve_answer_inactive():
    control = ClientControl()
    control.handle(authorize(DNS), NOW)
    (resolve,) = control.p2p_control(control.clients["c1"], assigned(), NOW)
    (answer,) = control.resolved(resolve.request, None, NOW)
    assert p2p_control.decode(answer.packet).active is False


def test_assigned_ips_racing_the_clients_removal_send_nothing():
    control = ClientControl()
    control.handle(authorize(DNS), NOW)
    (resolve,) = control.p2p_control(control.clients["c1"], assigned(), NOW)
    control.handle(messages.RejectAccess("c1", "res-dns"), NOW)
    assert control.resolved(resolve.request, REAL, NOW) == []


def test_malformed_control_packets_are_counted():
    control = ClientControl()
    control.handle(authorize(DNS), NOW)
    packet = p2p_control.encode(p2p_control.ASSIGNED_IPS, b"{not json")
    assert control.p2p_control(control.clients["c1"], packet, NOW) == [CountDrop("p2p_malformed")]
    assert control.p2p_control(control.clients["c1"], GOODBYE, NOW) == []


# --- random message sequences --------------------------------------------------------------

CLIENT_IDS = ["c1", "c2", "c3"]
RESOURCES = [CIDR, CIDR_UDP_53, DNS, OTHER]


class ControlMachine(RuleBasedStateMachine):
    """Random portal traffic; the peers the effects create must match the client table."""

    def __init__(self) -> None:
        super().__init__()
        self.control = ClientControl()
        self.peers: set[bytes] = set()
        self.pending: list[int] = []
        self.now = NOW
        self.refs = itertools.count()

    def run(self, effects) -> None:
        for effect in effects:
            if isinstance(effect, AddPeer):
                self.peers.add(effect.public_key)
            elif isinstance(effect, RemovePeer):
                assert effect.public_key in self.peers, "removed a peer that does not exist"
                self.peers.discard(effect.public_key)
            elif isinstance(effect, SendToPeer):
                assert effect.public_key in self.peers, "sent to a peer that does not exist"
            elif isinstance(effect, Resolve):
                self.pending.append(effect.request)

    def client(self, client_id: str, key: int) -> messages.FlowClient:
        return client_info(client_id, KEYS[key], 2 + CLIENT_IDS.index(client_id))

    @rule(client_id=st.sampled_from(CLIENT_IDS), key=st.integers(0, 3), resource=st.sampled_from(RESOURCES),
          expires=st.none() | st.integers(-5, 30))
    def authorize_flow(self, client_id, key, resource, expires):
        expires_at = None if expires is None else int(self.now) + expires
        self.run(self.control.handle(authorize(resource, self.client(client_id, key), f"r{next(self.refs)}",
                                               expires_at), self.now))

    @rule(client_id=st.sampled_from(CLIENT_IDS), key=st.integers(0, 3), resource=st.sampled_from(RESOURCES),
          named=st.booleans())
    def request_connection(self, client_id, key, resource, named):
        domain = "app.corp.test" if named else None
        self.run(self.control.handle(request_connection(resource, self.client(client_id, key), domain), self.now))

    @rule(client_id=st.sampled_from(CLIENT_IDS), resource=st.sampled_from(RESOURCES), named=st.booleans())
    def allow_access(self, client_id, resource, named):
        self.run(self.control.handle(allow_access(resource, client_id, "x.corp.test" if named else None), self.now))

    @rule(client_id=st.sampled_from(CLIENT_IDS), resource=st.sampled_from(RESOURCES))
    def reject_access(self, client_id, resource):
        self.run(self.control.handle(messages.RejectAccess(client_id, resource.id), self.now))

    @rule(resource=st.sampled_from(RESOURCES))
    def resource_updated(self, resource):
        self.run(self.control.handle(messages.ResourceUpdated(resource), self.now))

    @rule(client_id=st.sampled_from(CLIENT_IDS), resource=st.sampled_from(RESOURCES), delta=st.integers(-5, 30))
    def expiry_updated(self, client_id, resource, delta):
        message = messages.AccessAuthorizationExpiryUpdated(client_id, resource.id, int(self.now) + delta)
        self.run(self.control.handle(message, self.now))

    @rule(listed=st.lists(st.tuples(st.sampled_from(CLIENT_IDS), st.sampled_from(RESOURCES)), max_size=4))
    def init(self, listed):
        self.run(self.control.handle(init(*[(c, r.id, None) for c, r in listed]), self.now))

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data(), ok=st.booleans())
    def finish_resolution(self, data, ok):
        request = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        self.run(self.control.resolved(request, REAL if ok else None, self.now))

    @precondition(lambda self: bool(self.control.clients))
    @rule(data=st.data(), valid=st.booleans())
    def assigned_ips(self, data, valid):
        client = self.control.clients[data.draw(st.sampled_from(sorted(self.control.clients)))]
        packet = assigned() if valid else p2p_control.encode(p2p_control.ASSIGNED_IPS, b"[]")
        self.run(self.control.p2p_control(client, packet, self.now))

    @rule(seconds=st.integers(0, 20))
    def time_passes(self, seconds):
        self.now += seconds
        self.run(self.control.expire(self.now))

    @invariant()
    def peers_match_the_client_table(self):
        clients = self.control.clients
        assert self.peers == {c.public_key for c in clients.values()}
        assert all(self.control.by_key[c.public_key] is c for c in clients.values())
        assert len(self.control.by_key) == len(clients)

    @invariant()
    def addresses_index_known_clients_only(self):
        clients = list(self.control.clients.values())
        for packed, holder in self.control.by_address.items():
            assert any(holder is c for c in clients) and packed in holder.addresses

    @invariant()
    def every_client_holds_a_resource(self):
        assert all(not c.policy.is_empty() for c in self.control.clients.values())

    @invariant()
    def pending_resolutions_are_counted(self):
        assert self.control.pending_resolutions == len(self.pending)

    def teardown(self) -> None:
        self.run(self.control.goodbye_all())
        assert self.peers == set() and self.control.by_address == {}


TestControlSequences = ControlMachine.TestCase
TestControlSequences.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


# --- ICE sessions and relays -----------------------------------------------------------------

GATEWAY_ICE = messages.IceCredentials("gwuf", "gateway-password-000000")
CLIENT_ICE = messages.IceCredentials("cluf", "client-password-0000000")
RELAY = messages.Relay("relay-1", "turn", "198.18.100.10:3478", "1700000000:salt", "secret", None)


def test_a_flow_with_ice_credentials_starts_the_clients_ice_session_before_answering():
    control = ClientControl()
    flow = messages.AuthorizeFlow("r1", CIDR, client_info(), GATEWAY_ICE, CLIENT_ICE, None)
    effects = control.handle(flow, NOW)
    assert effects == [AddPeer(KEYS[0], PSK), ConnectIce("c1", GATEWAY_ICE, CLIENT_ICE),
                       ReplyToPortal("flow_authorized", {"ref": "r1"})]


def test_a_flow_without_ice_credentials_is_served_directly():
    control = ClientControl()
    assert of(control.handle(authorize(), NOW), ConnectIce) == []


def test_a_1_3_connection_answers_with_the_credentials_its_ice_session_uses():
    control = ClientControl(random_bytes=fixed_random)
    message = messages.RequestConnection("r1", CIDR, client_info(), CLIENT_ICE, None, None, None)
    effects = control.handle(message, NOW)
    [connect] = of(effects, ConnectIce)
    [reply] = of(effects, ReplyToPortal)
    answered = reply.payload["gateway_payload"]["ConnectionAccepted"]["ice_parameters"]  # type: ignore[index]
    assert (connect.local.username, connect.local.password) == (answered["username"], answered["password"])
    assert connect.remote == CLIENT_ICE
    assert effects.index(connect) < effects.index(reply)


def test_removing_a_client_ends_its_ice_session():
    control = ClientControl()
    control.handle(messages.AuthorizeFlow("r1", CIDR, client_info(), GATEWAY_ICE, CLIENT_ICE, None), NOW)
    effects = control.handle(messages.RejectAccess("c1", CIDR.id), NOW)
    assert DisconnectIce("c1") in effects


def test_candidates_reach_a_known_clients_session_only():
    control = ClientControl()
    control.handle(authorize(), NOW)
    cands = ("candidate:1 1 udp 2130706431 198.18.1.2 5000 typ host",)
    assert control.handle(messages.IceCandidates("c1", cands), NOW) == [RemoteCandidates("c1", cands, False)]
    assert control.handle(messages.InvalidateIceCandidates("c1", cands), NOW) == [RemoteCandidates("c1", cands, True)]
    assert control.handle(messages.IceCandidates("nobody", cands), NOW) == []


def test_relays_come_from_init_and_presence():
    control = ClientControl()
    interface = messages.Interface(ipaddress.IPv4Address("100.64.0.1"), ipaddress.IPv6Address("fd00:2021:1111::1"))
    effects = control.handle(messages.Init(interface, None, (RELAY,), ()), NOW)
    assert UpdateRelays((RELAY,), ()) in effects
    assert control.handle(messages.RelaysPresence(("relay-1",), ()), NOW) == [UpdateRelays((), ("relay-1",))]


def test_relay_passwords_and_ice_passwords_stay_out_of_reprs():
    assert "secret" not in repr(RELAY)
    assert "gateway-password" not in repr(GATEWAY_ICE)
