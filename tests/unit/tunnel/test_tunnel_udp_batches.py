"""How the UDP path groups datagrams for one GSO send, and reads the GRO segment size."""

import socket
import struct
import sys

from hypothesis import given
from hypothesis import strategies as st

from gateway_pkg.tunnel.udp import GSO_MAX_BYTES, GSO_MAX_SEGMENTS, SOL_UDP, UDP_GRO, gro_segment_size, gso_runs

A = ("192.0.2.1", 5000)
B = ("192.0.2.2", 5000)


def test_a_run_is_one_endpoint_and_one_size_with_a_shorter_last():
    batch = [(b"x" * 100, A), (b"y" * 100, A), (b"z" * 40, A), (b"w" * 100, A)]
    assert gso_runs(batch) == [(A, 100, [b"x" * 100, b"y" * 100, b"z" * 40]), (A, 100, [b"w" * 100])]


def test_another_endpoint_or_a_larger_datagram_starts_a_new_run():
    batch = [(b"1" * 50, A), (b"2" * 50, B), (b"3" * 60, B), (b"4" * 60, B)]
    assert gso_runs(batch) == [(A, 50, [b"1" * 50]), (B, 50, [b"2" * 50]), (B, 60, [b"3" * 60, b"4" * 60])]


def test_runs_stop_at_the_kernel_limits():
    many = [(b"a" * 100, A)] * (GSO_MAX_SEGMENTS + 1)
    runs = gso_runs(many)
    assert [len(r[2]) for r in runs] == [GSO_MAX_SEGMENTS, 1]
    big = [(b"b" * 1400, A)] * 60
    assert all(sum(map(len, r[2])) <= GSO_MAX_BYTES for r in gso_runs(big))


@given(st.lists(st.tuples(st.integers(1, 1500), st.sampled_from([A, B])), max_size=200))
def test_runs_keep_every_datagram_in_order(items):
    batch = [(bytes([i % 256]) * size, endpoint) for i, (size, endpoint) in enumerate(items)]
    runs = gso_runs(batch)
    assert [(d, endpoint) for endpoint, _, datagrams in runs for d in datagrams] == batch
    for _endpoint, segment, datagrams in runs:
        assert all(len(d) == segment for d in datagrams[:-1]) and len(datagrams[-1]) <= segment


def test_gro_segment_size_from_the_control_message_else_the_whole_buffer():
    cmsg = [(SOL_UDP, UDP_GRO, (1332).to_bytes(4, sys.byteorder))]
    assert gro_segment_size(cmsg, 5000) == 1332
    assert gro_segment_size([], 5000) == 5000
    assert gro_segment_size([(socket.SOL_SOCKET, 1, struct.pack("i", 7))], 900) == 900
