"""The kernel's UDP offloads as the data plane uses them, on loopback: one GSO send arrives as
one GRO receive that `gro_segment_size` splits back into the datagrams sent."""

from __future__ import annotations

import select
import socket
import sys

import pytest

from gateway_pkg.tunnel.udp import GRO_CMSG_SPACE, SOL_UDP, UDP_SEGMENT, enable_gro, gro_segment_size, gso_supported

pytestmark = pytest.mark.integration


def test_gso_send_arrives_as_one_gro_run_split_back_into_the_datagrams():
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        assert enable_gro(receiver) and gso_supported(sender)
        datagrams = [bytes([i]) * 1000 for i in range(10)] + [b"end" * 100]
        sender.sendmsg([b"".join(datagrams)], [(SOL_UDP, UDP_SEGMENT, (1000).to_bytes(2, sys.byteorder))], 0,
                       receiver.getsockname())
        buffer = bytearray(65535)
        received: list[bytes] = []
        calls = 0
        while len(received) < len(datagrams) and select.select([receiver], [], [], 5)[0]:
            size, ancdata, _flags, _source = receiver.recvmsg_into([buffer], GRO_CMSG_SPACE)
            calls += 1
            segment = gro_segment_size(ancdata, size)
            received += [bytes(buffer[i:min(i + segment, size)]) for i in range(0, size, segment)]
        assert received == datagrams
        assert calls < len(datagrams)  # coalesced: fewer receives than datagrams
    finally:
        receiver.close()
        sender.close()
