"""Portal faults with the real gateway and the real dev portal: an outage, and bad frames.

One lab for the module (dev portal in the root namespace, the gateway in its namespace, a
stock wireguard-go client with a tunnel to a resource), since every case ends where it
started: joined, ready, and the tunnel carrying traffic.

1. The portal dies for 60 s. In the gateway's namespace, TCP to the portal's port is
   answered with a reset (iptables REJECT --reject-with tcp-reset on OUTPUT): the open
   socket is reset at the gateway's next frame, and every reconnect is refused at once, as
   when the portal's process has died. The dev portal itself keeps running, so it keeps its
   state (a restarted dev portal would remember nothing, and its `init` would rightly
   remove every authorization). During the outage the tunnel carries pings (every 0.2 s)
   and a new TCP transfer, and /readyz is 503 with its reason; afterwards the gateway
   rejoins, the portal lists the one gateway, and a new flow works.
2. The portal sends garbage, oversized, out-of-order and duplicate frames, through the dev
   portal's fault-injection endpoint (POST /v1/gateways/{id}/inject, docs/devportal.md).
   After each: the process lives, the tunnel carries traffic, the log has exactly the
   expected warning (or none) and no traceback, /readyz is 200; where the gateway rightly
   gives the connection (or the channel) up, it has rejoined.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway_pkg.portal.client import MAX_WS_MESSAGE
from gateway_pkg.portal.phoenix import MAX_FRAME_BYTES
from tests import netlab
from tests.lab import LAB_TOKEN, Lab
from tests.netlab import NetLab
from tests.procs import DevPortalProc, base_env, http, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]

# Short, so the reset socket is noticed (at the next heartbeat) early in the outage.
HEARTBEAT = 2.0
OUTAGE_PINGS = 300  # one every 0.2 s: the 60 s outage
PING_INTERVAL = 0.2
HTTP_BODY = "portal-faults-resource\n" + "x" * 256 * 1024
JOINED = "Joined gateway room on portal"
SENTINEL = '{"topic":"gateway","event":"relays_presence","payload":{"connected":[],"disconnected_ids":[]},"ref":null}'
SENTINEL_SEEN = "Received relays_presence from portal"
WARNING = re.compile(r"^\S+\s+(?:WARN|ERROR) ")
# Warnings the lab itself causes, whatever the portal does: its client speaks plain WireGuard
# (no ICE) and it runs no DNS server for the TUN DNS probe.
LAB_NOISE = ("ICE connection failed", "TUN DNS server: no nameserver answered")


@dataclass
class FaultLab:
    lab: Lab
    flow: dict[str, Any]
    extra_flows: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def log(self) -> str:
        assert self.lab.gateway is not None
        return self.lab.gateway.output()

    @property
    def gateway_id(self) -> str:
        return str(self.flow["gateway_id"])

    def inject(self, body: dict[str, Any]) -> dict[str, Any]:
        status, answer = self.lab.portal.api("POST", f"/v1/gateways/{self.gateway_id}/inject", body)
        assert status == 202, answer
        return answer


def ping(lab: Lab, address: str = NetLab.RESOURCE, wait: float = 1.0) -> bool:
    return lab.client_sh("ping", "-c", "1", "-W", str(wait), address)[0] == 0


def metric(lab: Lab, name: str) -> float:
    for line in lab.metrics().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def readyz(lab: Lab) -> tuple[int | None, str]:
    try:
        status, body = http("GET", lab.health + "/readyz", timeout=2)
    except OSError:
        return None, ""
    return status, str(body)


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultLab]:
    reason = netlab.available()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("portal-faults")
    net = netlab.NetLab(tmp).up()
    portal = None
    try:
        portal = DevPortalProc(tmp, host=net.MGMT_ROOT, gateway_token=LAB_TOKEN)
        lab = Lab(net, portal)
        lab.client = net.new_client()
        lab.client.start()
        lab.start_gateway({"FIREZONE_HEARTBEAT_INTERVAL": str(HEARTBEAT)})
        lab.serve_http(NetLab.RESOURCE, 80, HTTP_BODY)
        flow = lab.authorize({"type": "cidr", "address": f"{NetLab.RESOURCE}/32"})
        assert flow["status"] == "authorized", flow
        lab.connect_client(flow, ["198.18.2.0/24"])
        wait_for(lambda: ping(lab), 10, "the first ping through the tunnel")
        yield FaultLab(lab, flow)
    finally:
        if portal is not None:
            portal.stop()
        net.down()
        for log in sorted(tmp.glob("*.log")):  # shown by pytest when the module's last test failed
            print(f"===== {log.name} (last 40 lines)")
            print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))


def warnings_in(log: str) -> list[str]:
    """The WARN and ERROR lines of a piece of the gateway's log, but the lab's own."""
    return [line for line in log.splitlines()
            if WARNING.match(line) and not any(noise in line for noise in LAB_NOISE)]


def assert_healthy(faults: FaultLab, since: int) -> str:
    """Alive, ready, the tunnel carries traffic, no traceback since `since`; the new log."""
    lab = faults.lab
    assert lab.gateway is not None and lab.gateway.running(), faults.log[since:]
    wait_for(lambda: readyz(lab)[0] == 200, 10, "/readyz 200")
    assert wait_for(lambda: ping(lab), 5, "a ping through the existing tunnel")
    new = faults.log[since:]
    assert "Traceback" not in new, new
    assert LAB_TOKEN not in faults.log
    return new


# --- 1. the portal dies for 60 s ---------------------------------------------------------


def test_portal_outage_keeps_tunnels_and_the_gateway_rejoins_once(faults: FaultLab) -> None:
    lab = faults.lab
    ns = lab.net.ns["gateway"]
    rule = ["OUTPUT", "-p", "tcp", "-d", lab.net.MGMT_ROOT, "--dport", str(lab.portal.port),
            "-j", "REJECT", "--reject-with", "tcp-reset"]
    since = len(faults.log)
    joins = faults.log.count(JOINED)
    connects = lab.portal.gateways()[0]["connects"]
    assert readyz(lab)[0] == 200

    netlab.sh("iptables", "-I", *rule, ns=ns)
    try:
        started = time.monotonic()
        # The ping's own run (300 × 0.2 s) is the outage; nothing else waits for the clock.
        pinger = lab.net.spawn("client", ["ping", "-n", "-q", "-c", str(OUTAGE_PINGS), "-i", str(PING_INTERVAL),
                                          "-W", "1", NetLab.RESOURCE], base_env(), "outage-ping")
        _, body = wait_for(lambda: (r := readyz(lab))[0] == 503 and r, 4 * HEARTBEAT + 5,
                                "/readyz 503 once the portal is gone")
        not_ready_after = time.monotonic() - started
        assert "not joined to the portal" in body, body
        assert "Hiccup in portal connection" in faults.log[since:]

        # A new TCP transfer through the existing tunnel, while the portal is away.
        code, out = lab.curl(f"http://{NetLab.RESOURCE}:80/", timeout=10)
        assert code == 0 and out == HTTP_BODY, out[:200]
        assert readyz(lab)[0] == 503  # still out: the reconnects are refused
        pinger.popen.wait(OUTAGE_PINGS * PING_INTERVAL + 30)
        outage = time.monotonic() - started
    except BaseException:
        netlab.sh("iptables", "-D", *rule, ns=ns, check=False)
        raise
    netlab.sh("iptables", "-D", *rule, ns=ns)
    assert f"--dport {lab.portal.port}" not in netlab.sh("iptables", "-S", "OUTPUT", ns=ns)
    summary = pinger.output()
    match = re.search(r"(\d+) packets transmitted, (\d+) received", summary)
    assert match is not None, summary
    sent, received = int(match[1]), int(match[2])
    assert sent == OUTAGE_PINGS and received == sent, summary  # zero loss during the outage
    assert lab.gateway is not None and lab.gateway.running()

    back = time.monotonic()
    # The reconnect waits out the backoff reached during the outage (capped at 60 s).
    wait_for(lambda: readyz(lab)[0] == 200, 65, "/readyz 200 after the portal is back")
    rejoin = time.monotonic() - back
    wait_for(lambda: faults.log.count(JOINED) > joins, 5, "the join logged")
    records = [g for g in lab.portal.gateways() if g["external_id"] == "b" * 64]
    assert len(lab.portal.gateways()) == 1 and len(records) == 1, records  # the same gateway, not a second one
    [record] = records
    assert record["joined"] and record["connected"] and record["connects"] > connects, record

    # The existing flow survived the rejoin's init; a new one is authorized and carries traffic.
    extra = NetLab.RESOURCE_EXTRA[0]
    assert not ping(lab, extra)  # not authorized yet
    flow = lab.authorize({"type": "cidr", "address": f"{extra}/32"})
    assert flow["status"] == "authorized", flow
    faults.extra_flows[extra] = flow
    assert wait_for(lambda: ping(lab, extra), 5, "a ping to the newly authorized resource")
    new = assert_healthy(faults, since)
    assert warnings_in(new) == [], warnings_in(new)
    print(f"outage {outage:.1f} s: {received}/{sent} pings answered; /readyz 503 after {not_ready_after:.1f} s; "
          f"rejoined {rejoin:.1f} s after the portal was back; {new.count('Hiccup in portal connection')} hiccups")


# --- 2. garbage, oversized, out-of-order and duplicate frames ---------------------------


@dataclass(frozen=True)
class Case:
    bodies: list[dict[str, Any]]
    warning: str | None  # the one WARN line expected, or None for none
    resets: bool = False  # the gateway rightly gives the connection or channel up and rejoins


def _text(frame: str) -> dict[str, Any]:
    return {"text": frame}


CASES = {
    "not-json": Case([_text("this is not json {")], "Skipped a portal frame: malformed frame: not JSON"),
    "binary-not-utf8": Case([{"binary": base64.b64encode(b"\xff\xfe\x00garbage\x80").decode()}],
                            "binary frame of 11 bytes is not UTF-8 text"),
    "json-array": Case([_text("[1, 2, 3]")], "malformed frame: frame is not a JSON object"),
    "json-not-phoenix": Case([_text('{"hello": "world"}')], "malformed frame: topic and event must be strings"),
    "unknown-topic": Case([_text('{"topic":"room:lobby","event":"new_msg","payload":{},"ref":null}')],
                          "frame for unknown topic 'room:lobby'"),
    "unknown-event": Case([_text('{"topic":"gateway","event":"surprise","payload":{},"ref":null}')],
                          "unknown event 'surprise'"),
    "bad-payload": Case([_text('{"topic":"gateway","event":"authorize_flow","payload":{"ref":1},"ref":null}')],
                        "Failed to deserialize message 'authorize_flow'"),
    "over-frame-limit": Case([{"oversized": 2 * MAX_FRAME_BYTES}],
                             f"frame of {2 * MAX_FRAME_BYTES} bytes exceeds {MAX_FRAME_BYTES}"),
    "over-transport-limit": Case([{"oversized": MAX_WS_MESSAGE + 1024}],
                                 f"Portal sent a frame over {MAX_WS_MESSAGE} bytes", resets=True),
    "reply-unknown-ref": Case(
        [_text('{"topic":"gateway","event":"phx_reply","ref":987654321,"payload":{"status":"ok","response":{}}}')],
        "reply to ref 987654321, which the gateway never sent"),
    "phx-error": Case([_text('{"topic":"gateway","event":"phx_error","payload":{},"ref":null}')],
                      "phx_error from portal"),
    # Ref 0 is the gateway's first join: the portal says it forgot the channel, so the
    # gateway joins again on the same socket.
    "unmatched-topic": Case(
        [_text('{"topic":"gateway","event":"phx_reply","ref":0,'
               '"payload":{"status":"error","response":{"reason":"unmatched topic"}}}')],
        "Portal answered ref 0 with error", resets=True),
    "phx-close": Case([_text('{"topic":"gateway","event":"phx_close","payload":{},"ref":null}')], None, resets=True),
    "duplicate-init": Case([{"replay": "init", "count": 2}], None),
    "duplicate-authorize-flow": Case([{"replay": "flow", "count": 2}], None),
    "init-after-authorize-flow": Case([{"replay": "init"}], None),
}


# "duplicate-init": two `init`s back to back once raced in the tunnel layer (each deleted the
# TUN addresses and added them again, WARN "File exists" or ERROR with /readyz 503); the data
# plane now applies addresses one at a time and keeps those already in place.
@pytest.mark.parametrize("name", CASES)
def test_bad_frames_never_kill_the_gateway(faults: FaultLab, name: str) -> None:
    case = CASES[name]
    lab = faults.lab
    wait_for(lambda: readyz(lab)[0] == 200, 10, "/readyz 200 before the case")
    since = len(faults.log)
    joins = faults.log.count(JOINED)
    inits = faults.log.count("Received init from portal")
    authorized = faults.log.count("Authorized flow")
    connects = lab.portal.gateways()[0]["connects"]
    extra = None
    if name == "init-after-authorize-flow":
        # A flow the portal authorizes, then an `init` (its current state) after it.
        extra = NetLab.RESOURCE_EXTRA[1]
        flow = lab.authorize({"type": "cidr", "address": f"{extra}/32"})
        assert flow["status"] == "authorized", flow
    sent = 0
    for body in case.bodies:
        if body.get("replay") == "flow":
            body = body | {"flow": faults.flow["flow_id"]}
        answer = faults.inject(body)
        sent += answer["count"]
    assert sent >= 1

    if case.resets:
        wait_for(lambda: faults.log.count(JOINED) > joins, 15, "the gateway to join again")
    else:
        # Frames are handled in order: once this one is logged, the injected ones were handled.
        seen = faults.log.count(SENTINEL_SEEN)
        faults.inject(_text(SENTINEL))
        wait_for(lambda: faults.log.count(SENTINEL_SEEN) > seen, 10, "the sentinel frame handled")
    new = assert_healthy(faults, since)
    warnings = warnings_in(new)
    if case.warning is None:
        assert warnings == [], warnings
    else:
        assert len(warnings) == 1 and case.warning in warnings[0], warnings

    records = lab.portal.gateways()
    assert len(records) == 1 and records[0]["joined"] and records[0]["connected"], records
    if name in ("over-transport-limit", "phx-close"):
        assert records[0]["connects"] == connects + 1, records  # a new socket, once
    elif name == "unmatched-topic":
        assert records[0]["connects"] == connects, records  # rejoined on the same socket
        wait_for(lambda: faults.log.count("Received init from portal") > inits, 5, "the rejoin's init")
    else:
        assert records[0]["connects"] == connects, records  # the connection was kept
        assert faults.log.count(JOINED) == joins
    if name == "duplicate-init":
        assert faults.log.count("Received init from portal") == inits + 2
    if name == "duplicate-authorize-flow":
        assert faults.log.count("Authorized flow") == authorized + 2
        assert metric(lab, "firezone_gateway_active_peers") == 1  # one peer, not two
        assert "Removed client" not in new
    if extra is not None:
        assert faults.log.count("Received init from portal") == inits + 1
        assert wait_for(lambda: ping(lab, extra), 5, "the flow authorized before the init still works")
        assert "Access rejected" not in new and "Removed client" not in new
