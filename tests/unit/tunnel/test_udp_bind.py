"""`bind_pair`'s fallback when the WireGuard port is taken, against a fake kernel port table.

What a user sees: one warning naming the asked and the bound port, and both families on one
port whenever that is possible (the gateway has one port to tell).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterator

import pytest

from gateway_pkg.errors import RuntimeFailure
from gateway_pkg.tunnel import udp

V4, V6 = socket.AF_INET, socket.AF_INET6


class FakeSocket:
    def __init__(self, kernel: FakeKernel, family: int, port: int) -> None:
        self.kernel, self.family, self.port, self.closed = kernel, family, port, False

    def getsockname(self) -> tuple[str, int]:
        return ("::" if self.family == V6 else "0.0.0.0", self.port)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.kernel.bound.discard((self.family, self.port))


class FakeKernel:
    """Ports in use per family; port 0 hands out the next of `ephemeral`."""

    def __init__(self, taken: set[tuple[int, int]] = frozenset(), ephemeral: Iterator[int] | None = None,
                 no_ipv6: bool = False, refuse: int | None = None) -> None:
        self.bound: set[tuple[int, int]] = set(taken)
        self.ephemeral = ephemeral or iter(range(40000, 41000))
        self.no_ipv6, self.refuse = no_ipv6, refuse
        self.calls: list[tuple[int, int]] = []

    def bind(self, family: int, port: int) -> FakeSocket:
        self.calls.append((family, port))
        if family == V6 and self.no_ipv6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        if self.refuse is not None:
            raise OSError(self.refuse, "Permission denied")
        if port == 0:
            port = next(p for p in self.ephemeral if (family, p) not in self.bound)
        if (family, port) in self.bound:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        self.bound.add((family, port))
        return FakeSocket(self, family, port)


def ports(sockets: dict[int, socket.socket]) -> dict[int, int]:
    return {family: sock.getsockname()[1] for family, sock in sockets.items()}


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway_pkg.tunnel.udp")


def test_free_port_is_used_in_both_families_without_a_warning(caplog):
    kernel = FakeKernel()
    assert ports(udp.bind_pair(52625, kernel.bind)) == {V4: 52625, V6: 52625}
    assert warnings(caplog) == []


@pytest.mark.parametrize("taken", [{V4}, {V6}, {V4, V6}], ids=["ipv4", "ipv6", "both"])
def test_taken_port_moves_both_families_to_one_ephemeral_port_with_one_warning(caplog, taken):
    kernel = FakeKernel({(family, 52625) for family in taken})
    bound = ports(udp.bind_pair(52625, kernel.bind))
    assert bound == {V4: 40000, V6: 40000}
    # The socket bound on 52625 in the free family was given back: nothing of ours holds it.
    assert {(f, 52625) for f in {V4, V6} - taken}.isdisjoint(kernel.bound)
    [warning] = warnings(caplog)
    assert "52625" in warning and "40000" in warning and "IPv4 and IPv6" in warning
    if taken != {V4, V6}:
        assert f"taken for {udp.FAMILY_NAMES[next(iter(taken))]}" in warning


def test_ephemeral_port_taken_in_the_other_family_is_skipped(caplog):
    # The kernel's first ephemeral IPv4 port is in use for IPv6: the next one is free in both.
    kernel = FakeKernel({(V4, 52625), (V6, 52625), (V6, 40000)})
    assert ports(udp.bind_pair(52625, kernel.bind)) == {V4: 40001, V6: 40001}
    assert (V4, 40000) not in kernel.bound  # the first try was closed
    assert len(warnings(caplog)) == 1


def test_no_shared_port_found_gives_each_family_its_own_and_says_so(caplog):
    taken = {(V4, 52625), (V6, 52625)} | {(V6, p) for p in range(40000, 40000 + udp.SHARED_PORT_ATTEMPTS)}
    kernel = FakeKernel(taken)
    bound = ports(udp.bind_pair(52625, kernel.bind))
    assert bound[V4] != bound[V6]
    [warning] = warnings(caplog)
    assert f"{bound[V4]} (IPv4)" in warning and f"{bound[V6]} (IPv6)" in warning and "52625" in warning


def test_port_zero_asks_for_one_shared_ephemeral_port_without_a_warning(caplog):
    kernel = FakeKernel()
    assert ports(udp.bind_pair(0, kernel.bind)) == {V4: 40000, V6: 40000}
    assert warnings(caplog) == []


def test_no_ipv6_listens_on_ipv4_only(caplog):
    kernel = FakeKernel(no_ipv6=True)
    assert ports(udp.bind_pair(52625, kernel.bind)) == {V4: 52625}
    assert warnings(caplog) == ["IPv6 unavailable: listening on IPv4 only"]


def test_no_ipv6_and_the_port_taken_gives_two_warnings_one_per_fault(caplog):
    kernel = FakeKernel({(V4, 52625)}, no_ipv6=True)
    assert ports(udp.bind_pair(52625, kernel.bind)) == {V4: 40000}
    assert warnings(caplog)[0] == "IPv6 unavailable: listening on IPv4 only"
    assert "UDP port 52625 is taken: listening on UDP port 40000 (IPv4) instead" in warnings(caplog)[1]


def test_other_bind_errors_are_a_runtime_failure_and_leave_nothing_bound():
    kernel = FakeKernel(refuse=errno.EACCES)
    with pytest.raises(RuntimeFailure, match="cannot bind UDP port 52625: Permission denied"):
        udp.bind_pair(52625, kernel.bind)
    assert kernel.bound == set()


@pytest.mark.parametrize(("taken", "bound", "expected"), [
    ({V4, V6}, {V4: 41000, V6: 41000}, "UDP port 52625 is taken: listening on UDP port 41000 (IPv4 and IPv6)"),
    ({V6}, {V4: 41000, V6: 41000}, "UDP port 52625 is taken for IPv6: listening on UDP port 41000 (IPv4 and IPv6)"),
    ({V4, V6}, {V4: 41000, V6: 41001}, "listening on UDP ports 41000 (IPv4) and 41001 (IPv6) instead"),
])
def test_fallback_message_names_the_asked_and_the_bound_ports(taken, bound, expected):
    assert expected in udp.fallback_message(52625, taken, bound)
