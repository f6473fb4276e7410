"""Phoenix channel protocol core, sans-I/O: text frames and time in, frames and events out.

One `PhoenixChannel` follows one logical connection to the portal across reconnects. The
I/O layer tells it when a socket opened or closed, feeds it every received text frame and
calls `tick()` periodically; it answers with frames to send and events to act on.
Refs are integers from one counter shared by joins, pushes and heartbeats, never reset.

Liveness: a heartbeat is due after an interval without sending. When one is due and the
last `MISSED_HEARTBEATS` heartbeats of this connection are all unanswered, the core asks
for a reconnect instead of sending another (upstream 1.5.1), so a portal that stops
answering but keeps the TCP connection open is left within about 4 intervals. Only a reply
to a heartbeat ref counts (any status): it proves the round trip. Other inbound frames do
not, because a path that still delivers pushes to us may be losing what we send.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any

HEARTBEAT_INTERVAL = 30.0
JOIN_TIMEOUT = 5.0
MAX_QUEUED = 32
MAX_FRAME_BYTES = 1024 * 1024
# Heartbeats sent and not answered after which the connection is given up (upstream 1.5.1).
MISSED_HEARTBEATS = 3
PHOENIX_TOPIC = "phoenix"


class MalformedFrame(ValueError):
    """A frame that is not a Phoenix message: not JSON, wrong types, or too large."""


@dataclass(frozen=True, slots=True)
class Frame:
    topic: str
    event: str
    payload: Any
    ref: int | None


# --- events the I/O layer acts on -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Joined:
    topic: str


@dataclass(frozen=True, slots=True)
class Push:
    """A server push (or broadcast) on our topic: the application message."""

    event: str
    payload: Any


@dataclass(frozen=True, slots=True)
class Reply:
    """The portal's reply to one of our pushes."""

    ref: int
    status: str
    response: Any


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Transient failure: close the socket and reconnect with backoff.

    `unresponsive` says the portal stopped answering (join timeout, missed heartbeats):
    waiting for it to complete a closing handshake would only delay the reconnect.
    """

    reason: str
    unresponsive: bool = False


@dataclass(frozen=True, slots=True)
class Fatal:
    """The portal refused us for good (login failed, token expired)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A frame that was dropped; logged by the I/O layer, never fatal."""

    reason: str


Event = Joined | Push | Reply | Reconnect | Fatal | Skipped


def decode_frame(text: str | bytes) -> Frame:
    """Parse one frame. Raises `MalformedFrame` and nothing else, whatever the input."""
    if len(text) > MAX_FRAME_BYTES:
        raise MalformedFrame(f"frame of {len(text)} bytes exceeds {MAX_FRAME_BYTES}")
    if isinstance(text, bytes):
        # A binary frame is read as UTF-8 JSON, as upstream's `into_text()` does.
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedFrame(f"binary frame of {len(text)} bytes is not UTF-8 text") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedFrame(f"not JSON ({exc.msg} at char {exc.pos})") from None
    except (ValueError, RecursionError) as exc:
        raise MalformedFrame(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise MalformedFrame("frame is not a JSON object")
    topic, event, ref = doc.get("topic"), doc.get("event"), doc.get("ref")
    if not isinstance(topic, str) or not isinstance(event, str):
        raise MalformedFrame("topic and event must be strings")
    if isinstance(ref, str) and ref.isdigit() and len(ref) < 20:
        ref = int(ref)  # tolerate servers that stringify our integer refs
    if ref is not None and (not isinstance(ref, int) or isinstance(ref, bool) or ref < 0):
        raise MalformedFrame("ref must be a non-negative integer or null")
    return Frame(topic, event, doc.get("payload"), ref)


def encode_frame(frame: Frame) -> str:
    return json.dumps(
        {"topic": frame.topic, "event": frame.event, "payload": frame.payload, "ref": frame.ref},
        separators=(",", ":"),
    )


class PhoenixChannel:
    """State of the channel on one topic across connections."""

    def __init__(self, topic: str, *, join_timeout: float = JOIN_TIMEOUT,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL) -> None:
        self.topic = topic
        self._join_timeout = join_timeout
        self._heartbeat_interval = heartbeat_interval
        self._next_ref = 0
        self._connected = False
        self._joined = False
        self._join_ref: int | None = None
        self._join_deadline: float | None = None
        self._last_sent = 0.0
        # Refs of this connection's heartbeats not answered yet, oldest first.
        self._unanswered_heartbeats: list[int] = []
        self._queue: deque[tuple[str, Any]] = deque()
        self.dropped_from_queue = 0

    @property
    def joined(self) -> bool:
        return self._joined

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def unanswered_heartbeats(self) -> int:
        return len(self._unanswered_heartbeats)

    def _frame(self, topic: str, event: str, payload: Any, now: float) -> tuple[int, str]:
        ref = self._next_ref
        self._next_ref += 1
        self._last_sent = now
        return ref, encode_frame(Frame(topic, event, payload, ref))

    def connection_opened(self, now: float) -> list[str]:
        """A socket is open: join our topic with a null payload (as upstream's `()`)."""
        self._connected = True
        self._joined = False
        self._unanswered_heartbeats.clear()
        ref, text = self._frame(self.topic, "phx_join", None, now)
        self._join_ref = ref
        self._join_deadline = now + self._join_timeout
        return [text]

    def connection_closed(self) -> None:
        self._connected = False
        self._joined = False
        self._join_ref = None
        self._join_deadline = None
        self._unanswered_heartbeats.clear()

    def push(self, event: str, payload: Any, now: float) -> tuple[int | None, list[str]]:
        """Send an application message now if joined, else queue it (at most 32)."""
        if self._joined:
            ref, text = self._frame(self.topic, event, payload, now)
            return ref, [text]
        if len(self._queue) >= MAX_QUEUED:
            # Upstream clears the buffer rather than growing without bound while offline.
            self.dropped_from_queue += len(self._queue)
            self._queue.clear()
        self._queue.append((event, payload))
        return None, []

    def receive(self, text: str | bytes, now: float) -> tuple[list[str], list[Event]]:
        """Handle one inbound frame. Never raises: bad frames become `Skipped`."""
        try:
            frame = decode_frame(text)
        except MalformedFrame as exc:
            return [], [Skipped(f"malformed frame: {exc}")]
        if frame.event == "phx_reply":
            return self._on_reply(frame, now)
        if frame.topic == self.topic:
            if frame.event == "phx_close":
                return [], [Reconnect("portal closed the channel")]
            if frame.event == "phx_error":
                return [], [Skipped("phx_error from portal")]
            if frame.event == "disconnect":
                reason = frame.payload.get("reason") if isinstance(frame.payload, dict) else None
                if reason == "token_expired":
                    return [], [Fatal("the portal says the token expired")]
                return [], [Reconnect(f"portal asked to disconnect: {reason}")]
            return [], [Push(frame.event, frame.payload)]
        return [], [Skipped(f"frame for unknown topic {frame.topic!r}")]

    def _on_reply(self, frame: Frame, now: float) -> tuple[list[str], list[Event]]:
        if frame.ref is None:
            return [], [Skipped("reply without ref")]
        if frame.ref >= self._next_ref:
            # Refs come from our one counter: this one was never sent, so nothing waits for it.
            return [], [Skipped(f"reply to ref {frame.ref}, which the gateway never sent")]
        if frame.topic == PHOENIX_TOPIC and frame.ref in self._unanswered_heartbeats:
            # Any answer to one of our heartbeats, whatever its status, shows the portal is
            # there; replies come in order, so the older unanswered ones are moot too.
            self._unanswered_heartbeats.clear()
            return [], []
        payload = frame.payload if isinstance(frame.payload, dict) else {}
        status = payload.get("status")
        response = payload.get("response")
        if not isinstance(status, str):
            return [], [Skipped("reply without status")]
        if frame.ref == self._join_ref and frame.topic == self.topic:
            self._join_ref = None
            self._join_deadline = None
            if status != "ok":
                reason = response.get("reason") if isinstance(response, dict) else response
                return [], [Fatal(f"joining the {self.topic} channel failed: {reason}")]
            self._joined = True
            frames: list[str] = []
            while self._queue:
                event, queued_payload = self._queue.popleft()
                frames.append(self._frame(self.topic, event, queued_payload, now)[1])
            return frames, [Joined(self.topic)]
        if frame.topic == PHOENIX_TOPIC:
            return [], []  # a late heartbeat acknowledgement (already counted, or another connection's)
        if status != "ok" and isinstance(response, dict) and response.get("reason") == "unmatched topic":
            # The server forgot our join (e.g. a channel crash): join again on this socket.
            self._joined = False
            ref, text = self._frame(self.topic, "phx_join", None, now)
            self._join_ref = ref
            self._join_deadline = now + self._join_timeout
            return [text], [Reply(frame.ref, status, response)]
        return [], [Reply(frame.ref, status, response)]

    def tick(self, now: float) -> tuple[list[str], list[Event]]:
        """Heartbeat when idle for the interval; a join unanswered in time, or a heartbeat
        due while `MISSED_HEARTBEATS` are unanswered, means reconnect."""
        if not self._connected:
            return [], []
        if self._join_deadline is not None and now >= self._join_deadline:
            self._join_deadline = None
            return [], [Reconnect(f"join not acknowledged within {self._join_timeout:g} s", unresponsive=True)]
        if now - self._last_sent >= self._heartbeat_interval:
            if len(self._unanswered_heartbeats) >= MISSED_HEARTBEATS:
                return [], [Reconnect(f"portal missed {MISSED_HEARTBEATS} heartbeats", unresponsive=True)]
            ref, text = self._frame(PHOENIX_TOPIC, "heartbeat", {}, now)
            self._unanswered_heartbeats.append(ref)
            return [text], []
        return [], []

    def next_deadline(self) -> float:
        """When `tick` next has something to do (for the I/O layer's sleep)."""
        deadline = self._last_sent + self._heartbeat_interval
        if self._join_deadline is not None:
            deadline = min(deadline, self._join_deadline)
        return deadline
