import json

import pytest

from gateway_pkg.portal.phoenix import (
    MAX_QUEUED,
    Fatal,
    Joined,
    MalformedFrame,
    PhoenixChannel,
    Push,
    Reconnect,
    Reply,
    Skipped,
    decode_frame,
)


def frames(texts):
    return [json.loads(t) for t in texts]


def reply(ref, status="ok", response=None, topic="gateway"):
    return json.dumps({"topic": topic, "event": "phx_reply", "ref": ref,
                       "payload": {"status": status, "response": response or {}}})


def joined_channel():
    channel = PhoenixChannel("gateway")
    join = frames(channel.connection_opened(0.0))[0]
    channel.receive(reply(join["ref"]), 0.1)
    return channel


def test_join_frame_has_null_payload_and_integer_ref():
    channel = PhoenixChannel("gateway")
    [join] = frames(channel.connection_opened(0.0))
    assert join == {"topic": "gateway", "event": "phx_join", "payload": None, "ref": 0}


def test_refs_increase_across_reconnects():
    channel = joined_channel()
    channel.connection_closed()
    [join] = frames(channel.connection_opened(1.0))
    assert join["ref"] == 1


def test_messages_are_queued_until_joined_then_flushed_in_order():
    channel = PhoenixChannel("gateway")
    [join] = frames(channel.connection_opened(0.0))
    for i in range(3):
        ref, out = channel.push("flow_authorized", {"ref": str(i)}, 0.0)
        assert ref is None and out == []
    out, events = channel.receive(reply(join["ref"]), 0.2)
    assert events == [Joined("gateway")]
    assert [f["payload"]["ref"] for f in frames(out)] == ["0", "1", "2"]


def test_queue_is_cleared_beyond_32_like_upstream():
    channel = PhoenixChannel("gateway")
    for i in range(MAX_QUEUED + 1):
        channel.push("x", i, 0.0)
    [join] = frames(channel.connection_opened(0.0))
    out, _ = channel.receive(reply(join["ref"]), 0.0)
    assert [f["payload"] for f in frames(out)] == [MAX_QUEUED]
    assert channel.dropped_from_queue == MAX_QUEUED


def test_join_timeout_asks_for_reconnect():
    channel = PhoenixChannel("gateway", join_timeout=5.0)
    channel.connection_opened(0.0)
    assert channel.tick(4.9) == ([], [])
    assert channel.tick(5.0) == ([], [Reconnect("join not acknowledged within 5 s")])


def test_join_error_is_fatal():
    channel = PhoenixChannel("gateway")
    [join] = frames(channel.connection_opened(0.0))
    _, events = channel.receive(reply(join["ref"], "error", {"reason": "invalid_version"}), 0.0)
    assert isinstance(events[0], Fatal) and "invalid_version" in events[0].reason


def test_heartbeat_every_30s_of_silence_on_phoenix_topic():
    channel = joined_channel()
    assert channel.tick(29.0) == ([], [])
    out, _ = channel.tick(30.1)
    [beat] = frames(out)
    assert beat["topic"] == "phoenix" and beat["event"] == "heartbeat" and beat["payload"] == {}
    assert channel.tick(31.0) == ([], [])  # the interval restarts after any send
    channel.push("x", {}, 50.0)
    assert channel.tick(79.0) == ([], [])
    assert channel.tick(80.0)[0]


def test_push_and_unknown_event_are_delivered_as_push():
    channel = joined_channel()
    _, events = channel.receive(json.dumps({"topic": "gateway", "event": "brand_new", "payload": {}, "ref": None}), 1)
    assert events == [Push("brand_new", {})]


def test_control_events():
    channel = joined_channel()
    close = json.dumps({"topic": "gateway", "event": "phx_close", "payload": {}, "ref": None})
    assert isinstance(channel.receive(close, 1)[1][0], Reconnect)
    expired = json.dumps({"topic": "gateway", "event": "disconnect", "payload": {"reason": "token_expired"}})
    assert isinstance(channel.receive(expired, 1)[1][0], Fatal)
    error = json.dumps({"topic": "gateway", "event": "phx_error", "payload": {}, "ref": None})
    assert isinstance(channel.receive(error, 1)[1][0], Skipped)


def test_unmatched_topic_reply_rejoins():
    channel = joined_channel()
    ref, _ = channel.push("flow_authorized", {"ref": "r"}, 1.0)
    out, events = channel.receive(reply(ref, "error", {"reason": "unmatched topic"}), 1.0)
    assert frames(out)[0]["event"] == "phx_join"
    assert isinstance(events[0], Reply) and not channel.joined


@pytest.mark.parametrize("text", ["", "nope", "[]", "{}", '{"topic": 1, "event": "x"}',
                                  '{"topic": "a", "event": "b", "ref": -1}', '{"topic":"a","event":"b","ref":1.5}',
                                  "x" * (1024 * 1024 + 1)])
def test_malformed_frames_are_skipped(text):
    with pytest.raises(MalformedFrame):
        decode_frame(text)
    channel = joined_channel()
    out, events = channel.receive(text, 1.0)
    assert out == [] and isinstance(events[0], Skipped)


def test_string_refs_are_tolerated():
    assert decode_frame('{"topic":"a","event":"b","ref":"7"}').ref == 7
