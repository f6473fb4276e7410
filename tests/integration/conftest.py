"""Fixtures for the namespace lab (see tests/lab.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netlab
from tests.lab import LAB_TOKEN, Lab, LabDns
from tests.procs import DevPortalProc

__all__ = ["LAB_TOKEN", "Lab", "LabDns", "lab"]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    reason = netlab.available()
    if reason:
        pytest.skip(reason)
    net = netlab.NetLab(tmp_path).up()
    portal = None
    the_lab: Lab | None = None
    try:
        portal = DevPortalProc(tmp_path, host=net.MGMT_ROOT, gateway_token=LAB_TOKEN)
        the_lab = Lab(net, portal)
        the_lab.client = net.new_client()
        the_lab.client.start()
        yield the_lab
    finally:
        if portal is not None:
            portal.stop()
        net.down()
        if the_lab is not None and the_lab.dns is not None:
            the_lab.dns.close()
        # Captured output is shown by pytest only when the test failed: the logs tell why.
        for log in sorted(tmp_path.glob("*.log")):
            print(f"===== {log.name} (last 40 lines)")
            print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))
