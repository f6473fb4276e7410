"""A packet capture for the tests: every frame on one interface, read with an AF_PACKET socket.

    sniff.py IFNAME count MARKER...   print a marker each time it passes, in any frame arriving
    sniff.py IFNAME udp PORT          print (hex) the payload of each UDP/IPv4 datagram to PORT

Prints "ready" once the socket is bound; runs until stopped. Only the standard library, so it
runs with any Python in any namespace.
"""

from __future__ import annotations

import socket
import struct
import sys

ETH_P_ALL = 0x0003


def main(argv: list[str]) -> int:
    ifname, mode, *args = argv
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    markers = [a.encode() for a in args] if mode == "count" else []
    port = int(args[0]) if mode == "udp" else 0
    print("ready", flush=True)
    while True:
        frame, address = sock.recvfrom(65535)
        if address[2] == socket.PACKET_OUTGOING and mode == "count":
            continue  # count what arrives at the interface, once
        if mode == "count":
            for marker in markers:  # a GRO super-packet carries several datagrams in one frame
                for _ in range(frame.count(marker)):
                    print(marker.decode(), flush=True)
        elif len(frame) >= 14 + 28 and frame[12:14] == b"\x08\x00" and frame[23] == 17:
            ihl = (frame[14] & 0x0F) * 4
            udp = 14 + ihl
            if struct.unpack("!H", frame[udp + 2:udp + 4])[0] == port and address[2] == socket.PACKET_OUTGOING:
                print(frame[udp + 8:].hex(), flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
