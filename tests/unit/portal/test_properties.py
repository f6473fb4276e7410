"""Arbitrary input never raises anything but the documented errors."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_pkg.portal import messages as m
from gateway_pkg.portal.phoenix import MalformedFrame, PhoenixChannel, decode_frame

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_decode_frame_only_raises_malformed(data):
    try:
        decode_frame(data)
    except MalformedFrame:
        pass


@given(json_values)
def test_channel_receive_never_raises(value):
    channel = PhoenixChannel("gateway")
    channel.connection_opened(0.0)
    channel.receive(json.dumps(value), 0.0)


@settings(max_examples=300)
@given(st.sampled_from(sorted(m.INGRESS_EVENTS)), json_values)
def test_parse_ingress_only_raises_malformed(event, payload):
    try:
        m.parse_ingress(event, payload)
    except m.MalformedMessage:
        pass


@given(st.sampled_from(sorted(m.INGRESS_EVENTS)),
       st.dictionaries(st.sampled_from(["ref", "resource", "client", "interface", "config", "client_id",
                                        "resource_id", "expires_at", "payload", "candidates", "type", "id",
                                        "address", "filters", "relays", "authorizations"]), json_values))
def test_parse_ingress_with_plausible_keys(event, payload):
    try:
        m.parse_ingress(event, payload)
    except m.MalformedMessage:
        pass
