"""Fixtures that start a real unbound for the DNS integration tests and stop it by PID."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from unbound_server import Unbound, available

RECORDS = [
    "dual.test. 2 IN A 192.0.2.1",
    "dual.test. 2 IN AAAA 2001:db8::1",
    "v4.test. 2 IN A 192.0.2.4",
    "v6.test. 2 IN AAAA 2001:db8::6",
    "alias.test. 30 IN CNAME mid.test.",
    "mid.test. 2 IN CNAME target.test.",
    "target.test. 60 IN A 192.0.2.60",
    "short.test. 1 IN A 192.0.2.11",
    "busy.test. 60 IN A 192.0.2.20",
    "busy.test. 60 IN AAAA 2001:db8::20",
]


@pytest.fixture
def unbound() -> Iterator[Unbound]:
    if not available():
        pytest.skip("unbound is not installed")
    server = Unbound(RECORDS, soa_minimum=3)
    try:
        server.start()
        yield server
    finally:
        server.stop()


class OffsetClock:
    """Real monotonic time plus an offset the test can add, so TTL and stale ages can
    be crossed without waiting while the network and the 1.8 s timer stay real."""

    def __init__(self) -> None:
        import time

        self._monotonic = time.monotonic
        self.offset = 0.0

    def __call__(self) -> float:
        return self._monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> OffsetClock:
    return OffsetClock()
