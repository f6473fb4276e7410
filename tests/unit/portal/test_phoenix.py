import json

import pytest

from gateway_pkg.portal.phoenix import (
    MAX_QUEUED,
    MISSED_HEARTBEATS,
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
    assert channel.tick(5.0) == ([], [Reconnect("join not acknowledged within 5 s", unresponsive=True)])


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


# --- heartbeat loss (upstream 1.5.1): the clock is the `now` the tests pass in ----------

INTERVAL = 1.0
MISSED = Reconnect("portal missed 3 heartbeats", unresponsive=True)


def joined_at(t, channel=None):
    channel = channel or PhoenixChannel("gateway", heartbeat_interval=INTERVAL)
    [join] = frames(channel.connection_opened(t))
    channel.receive(reply(join["ref"]), t)
    return channel


def beat(channel, now):
    """Tick when a heartbeat is due; return the heartbeat's ref (None if none) and the events."""
    out, events = channel.tick(now)
    sent = frames(out)
    assert all(f["topic"] == "phoenix" and f["event"] == "heartbeat" for f in sent)
    return (sent[0]["ref"] if sent else None), events


def test_the_limit_is_upstreams_three():
    assert MISSED_HEARTBEATS == 3


def test_two_missed_heartbeats_do_not_reconnect():
    channel = joined_at(0.0)
    refs = [beat(channel, t) for t in (1.0, 2.0)]
    assert all(ref is not None and events == [] for ref, events in refs)
    assert channel.unanswered_heartbeats == 2
    assert channel.tick(2.9) == ([], [])  # nothing due between heartbeats
    ref, events = beat(channel, 3.0)  # due with two unanswered: a third heartbeat, no reconnect
    assert ref is not None and events == []


def test_three_missed_heartbeats_reconnect_when_the_fourth_is_due():
    channel = joined_at(0.0)
    for t in (1.0, 2.0, 3.0):
        assert beat(channel, t)[1] == []
    assert channel.unanswered_heartbeats == 3
    assert channel.tick(3.9) == ([], [])
    assert channel.tick(4.0) == ([], [MISSED])  # no fourth heartbeat is sent


def test_any_reply_to_a_heartbeat_resets_the_count():
    channel = joined_at(0.0)
    refs = [beat(channel, t)[0] for t in (1.0, 2.0, 3.0)]
    # An error reply is still an answer; a reply to an older heartbeat clears the newer too,
    # since replies come in order.
    assert channel.receive(reply(refs[1], "error", {"reason": "x"}, topic="phoenix"), 3.5) == ([], [])
    assert channel.unanswered_heartbeats == 0
    assert channel.receive(reply(refs[2], topic="phoenix"), 3.6) == ([], [])  # late, harmless
    for t in (4.0, 5.0, 6.0):
        ref, events = beat(channel, t)
        assert ref is not None and events == []
    assert channel.tick(7.0) == ([], [MISSED])


def test_other_inbound_frames_are_not_liveness():
    channel = joined_at(0.0)
    refs = [beat(channel, t)[0] for t in (1.0, 2.0, 3.0)]
    push = json.dumps({"topic": "gateway", "event": "init", "payload": {}, "ref": None})
    assert channel.receive(push, 3.5)[1] == [Push("init", {})]
    # A reply on our topic carrying a heartbeat's ref is not a heartbeat reply.
    channel.receive(reply(refs[0], topic="gateway"), 3.6)
    assert channel.tick(4.0) == ([], [MISSED])


def test_counts_reset_after_reconnect():
    channel = joined_at(0.0)
    stale = [beat(channel, t)[0] for t in (1.0, 2.0, 3.0)]
    assert channel.tick(4.0) == ([], [MISSED])
    channel.connection_closed()
    assert channel.unanswered_heartbeats == 0
    joined_at(4.5, channel)
    for t in (5.5, 6.5):
        ref, events = beat(channel, t)
        assert ref is not None and events == []
    assert beat(channel, 7.5)[1] == []  # two unanswered on this connection, not five
    # A reply to the old connection's heartbeat arriving now proves nothing about this one.
    channel.receive(reply(stale[2], topic="phoenix"), 7.6)
    assert channel.unanswered_heartbeats == 3
    assert channel.tick(8.5) == ([], [MISSED])


def test_sending_postpones_the_heartbeat_and_so_the_verdict():
    channel = joined_at(0.0)
    for t in (1.0, 2.0, 3.0):
        beat(channel, t)
    channel.push("flow_authorized", {"ref": "r"}, 3.5)  # the interval restarts on any send
    assert channel.tick(4.0) == ([], [])
    assert channel.tick(4.5) == ([], [MISSED])


# --- frames a faulty portal sends (tests/integration/test_portal_faults.py end to end) ----


def test_a_binary_frame_is_read_as_utf8_json_like_upstream():
    text = '{"topic":"gateway","event":"init","payload":{},"ref":null}'
    assert decode_frame(text.encode()) == decode_frame(text)
    channel = joined_channel()
    assert channel.receive(text.encode(), 1.0) == ([], [Push("init", {})])


def test_a_binary_frame_that_is_not_utf8_is_skipped_naming_it():
    with pytest.raises(MalformedFrame, match="binary frame of 4 bytes is not UTF-8 text"):
        decode_frame(b"\xff\xfe\x00\x80")


def test_not_json_says_where():
    with pytest.raises(MalformedFrame, match=r"not JSON \(Expecting value at char 0\)"):
        decode_frame("garbage {")


def test_a_reply_to_a_ref_never_sent_is_skipped():
    channel = joined_channel()  # sent ref 0 (the join)
    for topic in ("gateway", "phoenix"):
        out, events = channel.receive(reply(987654321, topic=topic), 1.0)
        assert out == [] and events == [Skipped("reply to ref 987654321, which the gateway never sent")]
    # An unmatched-topic error for a ref never sent does not make the gateway rejoin.
    out, events = channel.receive(reply(1, "error", {"reason": "unmatched topic"}), 1.0)
    assert out == [] and isinstance(events[0], Skipped) and channel.joined


def test_a_reply_to_a_ref_sent_earlier_is_still_a_reply():
    channel = joined_channel()
    ref, _ = channel.push("flow_authorized", {"ref": "r"}, 1.0)
    assert channel.receive(reply(ref), 1.0) == ([], [Reply(ref, "ok", {})])
    assert channel.receive(reply(ref), 1.0) == ([], [Reply(ref, "ok", {})])  # a duplicate is harmless
    # An error naming the join ref (answered long ago) that says the portal forgot us: rejoin.
    out, events = channel.receive(reply(0, "error", {"reason": "unmatched topic"}), 2.0)
    assert frames(out)[0]["event"] == "phx_join" and not channel.joined
    assert events == [Reply(0, "error", {"reason": "unmatched topic"})]
