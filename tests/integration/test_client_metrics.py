"""Per-client and per-resource metrics, flow logs and the Grafana dashboard, with a stock
wireguard-go client through the gateway and real resource servers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.netlab import NetLab
from tests.procs import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
BODY = "x" * 200_000
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset"}


def samples(lab: Any) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(lab.metrics()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(scrape: dict[str, list[tuple[dict[str, str], float]]], metric: str, /, **labels: str) -> float:
    return sum(v for found, v in scrape.get(metric, []) if all(found.get(k) == w for k, w in labels.items()))


def dashboard_metrics(dashboard: dict[str, Any]) -> set[str]:
    """The metric names the dashboard's queries use: identifiers outside label matchers and
    grouping clauses that are neither PromQL functions nor keywords."""
    names: set[str] = set()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    for expr in exprs:
        text = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
        text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
        text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
        text = re.sub(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,[^)]*\)", r"\1", text)
        for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
            word = match.group(0)
            if word in PROMQL_WORDS or text[match.end():].lstrip().startswith("("):
                continue  # a keyword or a function
            names.add(word)
    return names


def flow_lines(lab: Any) -> list[dict[str, Any]]:
    """The flow-log lines of the gateway's JSON output."""
    lines = []
    for line in lab.gateway.output().splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("target") == "gateway_pkg.flows":
                lines.append(doc)
    return lines


def flow(lab: Any, message: str, **fields: Any) -> dict[str, Any] | None:
    return next((d for d in flow_lines(lab) if d["message"] == message
                 and all(d.get(k) == v for k, v in fields.items())), None)


def test_metrics_flow_logs_and_dashboard_with_a_real_client(lab):
    # Flow logs are written at INFO even when the log level is warn; JSON keeps numbers numbers.
    lab.start_gateway({"FIREZONE_METRICS_PER_CLIENT": "true", "FIREZONE_FLOW_LOGS": "true",
                       "FIREZONE_LOG_FORMAT": "json", "RUST_LOG": "warn"})
    lab.serve_http(NetLab.RESOURCE, 80, BODY)
    granted = lab.authorize({"type": "cidr", "address": f"{NetLab.RESOURCE}/32", "name": "web"})
    resource_id = granted["resource_id"]
    lab.connect_client(granted, ["198.18.2.0/24"])
    client_id = granted["client_id"]

    code, out = lab.curl(f"http://{NetLab.RESOURCE}:80/", timeout=10)
    assert code == 0 and len(out) == len(BODY)
    # The TCP connection: one start line, one end line after both FINs, with its bytes.
    ended = wait_for(lambda: flow(lab, "Flow ended", protocol="tcp", dport=80), 15, "the TCP flow's end line")
    assert ended["reason"] == "tcp_fin" and ended["client"] == client_id and ended["resource"] == resource_id
    assert ended["src"] == lab.client.ipv4 and ended["dst"] == NetLab.RESOURCE
    assert ended["bytes_to_client"] > len(BODY) and ended["bytes_from_client"] > 0
    assert isinstance(ended["sport"], int) and ended["duration_s"] >= 0
    started = [d for d in flow_lines(lab) if d["message"] == "Flow started" and d.get("sport") == ended["sport"]]
    assert len(started) == 1 and started[0]["protocol"] == "tcp"

    assert lab.client_sh("ping", "-c", "3", "-i", "0.2", "-W", "2", NetLab.RESOURCE)[0] == 0
    # Not authorized (only the /32 is): dropped, and counted for nobody.
    assert lab.client_sh("ping", "-c", "1", "-W", "1", NetLab.RESOURCE_EXTRA[0])[0] != 0

    scrape = samples(lab)
    assert value(scrape, "firezone_gateway_connected_clients") == 1
    assert value(scrape, "firezone_gateway_resource_flows", resource_id=resource_id) == 1
    assert value(scrape, "firezone_gateway_resource_info", resource_id=resource_id, name="web", type="cidr") == 1
    assert value(scrape, "firezone_gateway_client_handshakes_total", client_id=client_id) >= 1
    for direction in ("in", "out"):
        per_client = value(scrape, "firezone_gateway_client_bytes_total", client_id=client_id, direction=direction)
        per_resource = value(scrape, "firezone_gateway_resource_bytes_total", resource_id=resource_id,
                             direction=direction)
        # One client, one resource: the same packets, counted twice.
        assert per_client == per_resource == value(scrape, "firezone_gateway_bytes_total", direction=direction)
    assert value(scrape, "firezone_gateway_resource_bytes_total", resource_id=resource_id, direction="out") > len(BODY)
    assert value(scrape, "firezone_gateway_client_packets_total", client_id=client_id, direction="in") >= 3 + 3

    # A client whose preshared key the gateway does not share: it never confirms a session.
    lab.portal.api("DELETE", f"/v1/flows/{granted['flow_id']}")
    ping_flow = wait_for(lambda: flow(lab, "Flow ended", protocol="icmp"), 10, "the ping flow to end")
    assert ping_flow["reason"] == "client_removed" and ping_flow["packets_from_client"] == 3
    # The two flows hold every packet and byte the resource's counters hold (the body's TCP
    # segments come from the TUN as TSO reads, counted in the flow one read at a time).
    for direction, side in (("out", "to_client"), ("in", "from_client")):
        for unit in ("bytes", "packets"):
            total = value(scrape, f"firezone_gateway_resource_{unit}_total", resource_id=resource_id,
                          direction=direction)
            assert ended[f"{unit}_{side}"] + ping_flow[f"{unit}_{side}"] == total, (unit, direction)
    wrong = lab.client.flow_client() | {"preshared_key": "A" * 43 + "="}
    lab.logs.allow(r"ICE connection failed")  # no session, no ICE: the gateway rightly warns
    status, regranted = lab.portal.api("POST", "/v1/flows", {
        "gateway": lab.gateway_record()["id"], "protocol": "1.4", "client": wrong,
        "resource": {"type": "cidr", "address": f"{NetLab.RESOURCE}/32", "name": "web"}})
    assert status == 201, regranted
    lab.client_sh("ping", "-c", "1", "-W", "1", NetLab.RESOURCE)  # starts a handshake that cannot finish
    wait_for(lambda: value(samples(lab), "firezone_gateway_client_handshake_failures_total",
                           client_id=client_id, reason="unconfirmed") >= 1, 20, "an unconfirmed handshake")
    scrape = samples(lab)
    assert value(scrape, "firezone_gateway_wireguard_handshake_failures_total", reason="unconfirmed") >= 1
    assert value(scrape, "firezone_gateway_dropped_packets_total", reason="not_authorized") >= 1

    # Every metric the dashboard draws is in a real scrape of this gateway.
    names = dashboard_metrics(json.loads(DASHBOARD.read_text()))
    assert len(names) >= 10
    assert names - set(scrape) == set()
    assert lab.gateway.running()
    assert "Traceback" not in lab.gateway.output()


def test_no_client_label_by_default_and_human_flow_lines(lab):
    lab.start_gateway({"FIREZONE_FLOW_LOGS": "true"})
    granted = lab.authorize({"type": "cidr", "address": "198.18.2.0/24"})
    lab.connect_client(granted, ["198.18.2.0/24"])
    assert wait_for(lambda: lab.client_sh("ping", "-c", "1", "-W", "1", NetLab.RESOURCE)[0] == 0, 10, "a ping")
    scrape = samples(lab)
    assert value(scrape, "firezone_gateway_resource_packets_total", resource_id=granted["resource_id"],
                 direction="in") >= 1
    labelled = [name for name, rows in scrape.items() for labels, _ in rows if "client_id" in labels]
    assert labelled == []
    assert lab.client.ipv4 not in lab.metrics()
    lab.portal.api("DELETE", f"/v1/flows/{granted['flow_id']}")
    line = wait_for(lambda: next((text for text in lab.gateway.output().splitlines()
                                  if "gateway_pkg.flows: Flow ended" in text), None), 10, "the flow's end line")
    assert "protocol=icmp" in line and "reason=client_removed" in line and f"src={lab.client.ipv4}" in line
