"""Fixtures for the namespace lab (see tests/lab.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_pkg.settings import env_flag
from tests import netlab
from tests.hygiene import LogGate, new_gate
from tests.lab import LAB_TOKEN, Lab, LabDns
from tests.procs import STARTED_GATEWAYS, DevPortalProc

__all__ = ["LAB_TOKEN", "Lab", "LabDns", "lab", "log_gate"]
# HYGIENE_REPORT=FILE: the log gate appends what it finds to FILE instead of failing the test
# (to survey a whole run).
REPORT = os.environ.get("HYGIENE_REPORT", "")


@pytest.fixture(autouse=True)
def log_gate(request: pytest.FixtureRequest) -> Iterator[LogGate]:
    """Fails a test whose gateways wrote a WARN or ERROR line it did not announce with
    `log_gate.allow(pattern)` (or `lab.logs.allow(...)`), or a traceback."""
    gate = new_gate()
    STARTED_GATEWAYS.clear()
    yield gate
    if any(env_flag(proc.env.get("FIREZONE_NO_DATAPLANE")) for proc in STARTED_GATEWAYS):
        gate.allow(r"Running without a data plane \(FIREZONE_NO_DATAPLANE\)")  # asked for
    found = [line for proc in STARTED_GATEWAYS if proc.log_path.exists()
             for line in gate.unexpected(proc.output())]
    STARTED_GATEWAYS.clear()
    if not found:
        return
    if REPORT:
        with open(REPORT, "a") as report:
            report.writelines(f"{request.node.nodeid}\t{line}\n" for line in found)
        return
    pytest.fail("the gateway logged what this test did not provoke:\n" + "\n".join(found[:20]), pytrace=False)


@pytest.fixture
def lab(tmp_path: Path, log_gate: LogGate) -> Iterator[Lab]:
    reason = netlab.available()
    if reason:
        pytest.skip(reason)
    net = netlab.NetLab(tmp_path).up()
    portal = None
    the_lab: Lab | None = None
    try:
        portal = DevPortalProc(tmp_path, host=net.MGMT_ROOT, gateway_token=LAB_TOKEN)
        the_lab = Lab(net, portal)
        assert the_lab.logs is log_gate
        the_lab.client = net.new_client()
        the_lab.client.start()
        yield the_lab
    finally:
        # The gateway before the portal: a gateway left running without its portal logs what
        # the test did not provoke (a refused flag fetch, say), and the log gate would judge it.
        if the_lab is not None and the_lab.gateway is not None:
            try:
                the_lab.gateway.stop()
            except Exception:  # net.down() below ends whatever is left
                pass
        if portal is not None:
            portal.stop()
        net.down()
        if the_lab is not None and the_lab.dns is not None:
            the_lab.dns.close()
        # Captured output is shown by pytest only when the test failed: the logs tell why.
        for log in sorted(tmp_path.glob("*.log")):
            print(f"===== {log.name} (last 40 lines)")
            print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))
