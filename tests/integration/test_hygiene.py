"""Upstream's idle gate: an idle gateway, joined and with a connected client, uses at most
0.05 s of CPU in 10 s (no busy loop, no needless timers). The log gate and the UDP error gate
run with the other tests (tests/integration/conftest.py, test_bulk_transfer.py)."""

from __future__ import annotations

import pytest

from tests.hygiene import IDLE_CPU_LIMIT, IDLE_SECONDS, idle_cpu
from tests.netlab import NetLab
from tests.procs import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.netns]


def test_an_idle_gateway_with_a_client_spends_almost_no_cpu(lab):
    gateway = lab.start_gateway({"RUST_LOG": "info"})
    flow = lab.authorize({"type": "cidr", "address": "198.18.2.0/24"})
    lab.connect_client(flow, ["198.18.2.0/24"])
    assert wait_for(lambda: lab.client_sh("ping", "-c", "1", "-W", "1", NetLab.RESOURCE)[0] == 0, 10, "a ping")
    spent = idle_cpu(gateway.pid, IDLE_SECONDS)
    print(f"idle gateway: {spent:.3f} CPU s in {IDLE_SECONDS:.0f} s")
    assert spent <= IDLE_CPU_LIMIT, f"{spent:.3f} CPU s in {IDLE_SECONDS:.0f} idle seconds (limit {IDLE_CPU_LIMIT})"
