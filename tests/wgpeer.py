"""A WireGuard client built on our own sans-I/O core, for what wireguard-go cannot do:
sending p2p-control packets (the 1.4 AssignedIps path) and reading the gateway's replies."""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable

from pyroute2.netns import popns, pushns

from gateway_pkg.wireguard import keys
from gateway_pkg.wireguard.device import WireGuardDevice


class CorePeer:
    def __init__(self, netns: str, bind_address: str, ipv4: str = "100.64.0.9", ipv6: str = "fd00:2021:1111::9"):
        self.private_key = keys.generate_private_key()
        self.public_key = keys.public_key(self.private_key)
        self.preshared_key = os.urandom(32)
        self.ipv4, self.ipv6 = ipv4, ipv6
        self.device = WireGuardDevice(self.private_key)
        pushns(netns)
        try:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        finally:
            popns()
        self.sock.bind((bind_address, 0))
        self.gateway: bytes | None = None
        self.received: list[bytes] = []
        self.sent: list[bytes] = []  # every datagram, so tests can replay one

    def _sendto(self, data: bytes, endpoint: tuple[str, int]) -> None:
        self.sent.append(data)
        self.sock.sendto(data, endpoint)

    def flow_client(self) -> dict[str, str]:
        return {"public_key": keys.key_to_base64(self.public_key),
                "preshared_key": keys.key_to_base64(self.preshared_key), "ipv4": self.ipv4, "ipv6": self.ipv6}

    def connect(self, gateway_public_key: str, endpoint: tuple[str, int]) -> None:
        self.gateway = keys.key_from_base64(gateway_public_key)
        self.device.add_peer(self.gateway, self.preshared_key)
        self.device.set_peer_endpoint(self.gateway, endpoint)

    def send(self, packet: bytes) -> None:
        assert self.gateway is not None
        out = self.device.send_packet(self.gateway, packet, time.monotonic())
        for data, endpoint in out.datagrams:
            self._sendto(data, endpoint)

    def pump(self, until: Callable[[bytes], bool], timeout: float) -> bytes | None:
        """Drive the device until a decrypted packet satisfies `until`; None on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            now = time.monotonic()
            outputs = [self.device.tick(now)]
            if ready:
                data, source = self.sock.recvfrom(65535)
                outputs.append(self.device.receive_datagram(data, source, now))
            for out in outputs:
                for data, endpoint in out.datagrams:
                    self._sendto(data, endpoint)
                for _peer, packet in out.packets:
                    self.received.append(packet)
                    if until(packet):
                        return packet
        return None

    def close(self) -> None:
        self.sock.close()
